"""Rendering (pure): from an endpoint, its plan and the operator config to Kubernetes objects."""

from .endpoint import RenderedEndpoint, render_endpoint

__all__ = ["RenderedEndpoint", "render_endpoint"]
