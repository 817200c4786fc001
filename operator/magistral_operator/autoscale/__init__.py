"""The queue-depth autoscaler's policy (pure); the scraping is in kube/metrics.py."""
