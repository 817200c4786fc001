"""Kubernetes Events about an endpoint (core/v1, as `kubectl describe` shows them)."""

from __future__ import annotations

import logging
from typing import Any

from ..api import API_VERSION, KIND
from ..api.labels import MANAGER
from .client import Kube, KubeError

log = logging.getLogger(__name__)

ALREADY_EXISTS = 409


def post_event(
    kube: Kube,
    *,
    endpoint: dict[str, Any],
    name: str,
    type_: str,
    reason: str,
    message: str,
    now: str,
) -> bool:
    """Create the Event `name` on the endpoint; whether it exists now.

    An Event of that name already there (AlreadyExists) is this one, posted before: done. Any
    other refusal is logged and answers False (the caller keeps it owed); failing to record
    an Event never fails a reconcile.
    """
    meta = endpoint["metadata"]
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
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
    try:
        kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body=event)
    except KubeError as exc:
        if exc.status == ALREADY_EXISTS:
            return True
        log.warning("%s/%s: Event %s not recorded: %s", meta["namespace"], meta["name"], name, exc)
        return False
    return True
