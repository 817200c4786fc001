"""The thin I/O layer: requests to the Kubernetes API, nothing decided here."""
