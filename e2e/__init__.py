"""End-to-end harness: a local control plane, simulated GPU nodes, scenarios."""
