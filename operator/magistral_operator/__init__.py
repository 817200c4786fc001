"""Kubernetes operator serving Magistral Small as a dedicated vLLM endpoint."""

__version__ = "0.1.0"
