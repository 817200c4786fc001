"""The demand autoscaler (pure): policy (demand.py) and arrival record (arrivals.py); the reads
are in kube/demand.py."""
