"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

from typing import Any

from ..api import API_VERSION, KIND
from ..api.endpoint import Endpoint
from ..api.labels import (
    ARGS_ANNOTATION,
    ENDPOINT_LABEL,
    MANAGER,
    POOL_LABEL,
    REVISION_LABEL,
    TP_ANNOTATION,
)

__all__ = ["ARGS_ANNOTATION", "POOL_LABEL", "REVISION_LABEL", "TP_ANNOTATION"]

COMPONENT = "inference"
COMPONENT_LABEL = "app.kubernetes.io/component"


def standard_labels(endpoint: Endpoint, *, component: str = COMPONENT) -> dict[str, str]:
    """The app.kubernetes.io/* labels plus the endpoint's own label."""
    return {
        "app.kubernetes.io/name": "magistral-endpoint",
        "app.kubernetes.io/instance": endpoint.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "magistral",
        "app.kubernetes.io/managed-by": MANAGER,
        ENDPOINT_LABEL: endpoint.name,
    }


def selector_labels(endpoint: Endpoint) -> dict[str, str]:
    """Labels that select every serving pod of the endpoint (Service, PDB, NetworkPolicy)."""
    return {ENDPOINT_LABEL: endpoint.name, "app.kubernetes.io/component": COMPONENT}


def is_engine_deployment(obj: dict[str, Any]) -> bool:
    """A Deployment of engine (GPU) pods, not the router's."""
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(obj.get("kind") == "Deployment" and labels.get(COMPONENT_LABEL) == COMPONENT)


def owner_reference(endpoint: Endpoint) -> dict[str, Any]:
    """The controller ownerReference that makes the API server garbage-collect children."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": endpoint.name,
        "uid": endpoint.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    endpoint: Endpoint,
    *,
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """metadata for a child: name, namespace, labels, annotations, owner."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": endpoint.namespace,
        "labels": {**standard_labels(endpoint), **(labels or {})},
    }
    if endpoint.uid:  # offline renders (no cluster) have no uid to own children with
        meta["ownerReferences"] = [owner_reference(endpoint)]
    if annotations:
        meta["annotations"] = annotations
    return meta


def deployment_name(endpoint: Endpoint, pool: str) -> str:
    """One Deployment per pool (capacity tier)."""
    return f"{endpoint.name}-{pool}"


CONFIG_MAP_REVISION_CHARS = 10


def config_map_name(endpoint: Endpoint, revision: str) -> str:
    """The immutable ConfigMap of one revision: the runtime config of every pool (and a custom
    prompt). Named by the revision, so a pod template restored from a ReplicaSet mounts the
    config its revision started with (docs/rollout.md)."""
    return f"{endpoint.name}-runtime-{revision[:CONFIG_MAP_REVISION_CHARS]}"
