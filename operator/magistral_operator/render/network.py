"""Service, PodDisruptionBudget and NetworkPolicy of an endpoint (pure)."""

from __future__ import annotations

from typing import Any

from magistral_runtime.config import DEFAULT_PORT

from ..api.endpoint import Endpoint
from ..api.spec import ServiceType
from .metadata import object_meta, selector_labels


def service_url(endpoint: Endpoint, *, cluster_domain: str) -> str:
    """In-cluster base URL of the OpenAI-compatible API."""
    port = endpoint.spec.exposure.port
    host = f"{endpoint.name}.{endpoint.namespace}.svc.{cluster_domain}"
    return f"http://{host}{'' if port == 80 else f':{port}'}/v1"


def render_service(endpoint: Endpoint) -> dict[str, Any]:
    """The Service in front of every ready replica of every pool."""
    exposure = endpoint.spec.exposure
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, name=endpoint.name),
        "spec": {
            "type": str(exposure.service_type),
            "selector": selector_labels(endpoint),
            "ports": [
                {"name": "http", "port": exposure.port, "targetPort": "http", "protocol": "TCP"}
            ],
            **(
                {"externalTrafficPolicy": "Local"}
                if exposure.service_type == ServiceType.LOAD_BALANCER
                else {}
            ),
        },
    }


def render_pdb(endpoint: Endpoint) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take at most one replica at a time.

    maxUnavailable rather than minAvailable, so a single-replica endpoint never blocks a drain;
    unready pods may always be evicted.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(endpoint, name=endpoint.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(endpoint)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def render_network_policy(endpoint: Endpoint) -> dict[str, Any]:
    """Only the API port is reachable on serving pods; everything else is refused."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(endpoint, name=endpoint.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(endpoint)},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": DEFAULT_PORT, "protocol": "TCP"}]}],
        },
    }
