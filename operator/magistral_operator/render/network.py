"""Service, PodDisruptionBudget and NetworkPolicy of an endpoint (pure)."""

from __future__ import annotations

from typing import Any

from magistral_runtime.config import DEFAULT_PORT

from ..api.endpoint import Endpoint
from ..api.spec import ServiceType
from .metadata import object_meta, selector_labels
from .router import (
    DEMAND_PORT,
    ROUTER_COMPONENT,
    engines_service_name,
    router_name,
    router_selector,
)


def service_url(endpoint: Endpoint, *, cluster_domain: str) -> str:
    """In-cluster base URL of the OpenAI-compatible API."""
    port = endpoint.spec.exposure.port
    host = f"{endpoint.name}.{endpoint.namespace}.svc.{cluster_domain}"
    return f"http://{host}{'' if port == 80 else f':{port}'}/v1"


def render_service(endpoint: Endpoint) -> dict[str, Any]:
    """The endpoint's Service: in front of its router pods (which route to the replicas)."""
    exposure = endpoint.spec.exposure
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, name=endpoint.name),
        "spec": {
            "type": str(exposure.service_type),
            "selector": router_selector(endpoint),
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


def render_engines_service(endpoint: Endpoint) -> dict[str, Any]:
    """A headless Service over the engine pods: per-pod DNS, never a load-balanced address.

    Clients go through the router; this names the replicas for debugging and for tools that
    want them (`<pod-ip-dashed>.<name>-engines.<ns>.svc`). Unready pods are left out.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(endpoint, name=engines_service_name(endpoint)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(endpoint),
            "ports": [
                {"name": "http", "port": DEFAULT_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
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


def render_network_policies(endpoint: Endpoint) -> list[dict[str, Any]]:
    """Only the API port is reachable on engine pods; the API and demand ports on routers."""
    return [_engine_network_policy(endpoint), _router_network_policy(endpoint)]


def _router_network_policy(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(
            endpoint,
            name=router_name(endpoint),
            labels={"app.kubernetes.io/component": ROUTER_COMPONENT},
        ),
        "spec": {
            "podSelector": {"matchLabels": router_selector(endpoint)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"port": DEFAULT_PORT, "protocol": "TCP"},
                        {"port": DEMAND_PORT, "protocol": "TCP"},
                    ]
                }
            ],
        },
    }


def _engine_network_policy(endpoint: Endpoint) -> dict[str, Any]:
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
