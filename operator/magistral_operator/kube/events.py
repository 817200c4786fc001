"""Kubernetes Events about an endpoint (core/v1, as `kubectl describe` shows them)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from ..api import API_VERSION, KIND
from ..api.labels import MANAGER
from .client import Kube, KubeError


def post_event(
    kube: Kube,
    *,
    endpoint: dict[str, Any],
    type_: str,
    reason: str,
    message: str,
    now: str,
) -> None:
    """Record an Event on the endpoint; failing to record one never fails a reconcile."""
    meta = endpoint["metadata"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": MANAGER},
        "reportingComponent": MANAGER,
        "reportingInstance": MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    with contextlib.suppress(KubeError):
        kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
