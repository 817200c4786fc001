"""Status (pure): observations of children, conditions and the status the operator writes."""
