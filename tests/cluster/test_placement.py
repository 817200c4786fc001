"""Placement across GPU pools on a real control plane: overflow and consolidation.

A blocker Deployment (another tenant) fills the reserved-h100 pool; the endpoint's replicas stay
Unschedulable there, overflow to ondemand-h100 after the pool's overflow delay (5 s in this
test's operator config), and move back one surge probe at a time once the blocker is gone,
never with fewer Ready replicas than desired. The operator runs with its least-privilege RBAC:
it learns about capacity only from its own pods' PodScheduled conditions.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.operator_process import OperatorProcess

from .conftest import apply_manifest, endpoint_manifest, get_endpoint, ready_pods_by, wait_for

RESERVED, ONDEMAND = "reserved-h100", "ondemand-h100"
NAME = "placed"


def ready_pods_by_pool(api: client.ApiClient, namespace: str) -> dict[str, int]:
    return ready_pods_by(api, namespace, endpoint=NAME, label="magistral.dev/pool")


@pytest.fixture
def blocker(api: client.ApiClient) -> Iterator[str]:
    """A namespace whose Deployment takes every GPU of the reserved-h100 pool."""
    ns = f"blocker-{uuid.uuid4().hex[:6]}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    labels = {"app": "blocker"}
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "blocker"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"magistral.dev/pool": RESERVED},
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "containers": [
                            {
                                "name": "train",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {
                                    "requests": {"nvidia.com/gpu": "8"},
                                    "limits": {"nvidia.com/gpu": "8"},
                                },
                            }
                        ],
                    },
                },
            },
        },
    )
    yield ns
    core.delete_namespace(ns)


def pool_replicas(obj: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p.get("replicas", 0) for p in (obj.get("status") or {}).get("pools") or []}


def events(api: client.ApiClient, namespace: str, reason: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME},reason={reason}"
    )
    return list(listed.items)


def test_overflow_to_on_demand_and_consolidate_back(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    fast_overflow_operator: OperatorProcess,
    blocker: str,
    namespace: str,
) -> None:
    apps = client.AppsV1Api(api)
    wait_for(
        "the blocker to take the reserved pool",
        lambda: (
            (apps.read_namespaced_deployment("blocker", blocker).status.ready_replicas or 0) == 2
        ),
        timeout=90,
    )
    manifest = endpoint_manifest(
        NAME,
        namespace,
        gpu={"pools": [RESERVED, ONDEMAND], "tensorParallelSize": "auto"},
        scaling={"minReplicas": 2, "maxReplicas": 2},
    )
    apply_manifest(admin_kubeconfig, manifest)

    wait_for(
        "both replicas Ready on ondemand-h100",
        lambda: ready_pods_by_pool(api, namespace).get(ONDEMAND) == 2,
        timeout=180,
    )
    obj = wait_for(
        "the endpoint Ready with its split in status",
        lambda: (
            (o := get_endpoint(api, namespace, NAME)).get("status", {}).get("readyReplicas") == 2
            and pool_replicas(o) == {RESERVED: 0, ONDEMAND: 2}
            and o
        ),
        timeout=60,
    )
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    overflow = wait_for("an Overflow event", lambda: events(api, namespace, "Overflow"))
    assert overflow[0].type == "Warning"
    assert RESERVED in overflow[0].message
    assert ONDEMAND in overflow[0].message
    assert "Insufficient nvidia.com/gpu" in overflow[0].message

    # Free the reserved pool and watch the move back; ready replicas never drop below 2.
    lowest: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest.append(sum(ready_pods_by_pool(api, namespace).values()))
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        apps.delete_namespaced_deployment("blocker", blocker)
        wait_for(
            "both replicas back on reserved-h100",
            lambda: (
                ready_pods_by_pool(api, namespace) == {RESERVED: 2}
                and pool_replicas(get_endpoint(api, namespace, NAME)) == {RESERVED: 2, ONDEMAND: 0}
            ),
            timeout=300,
        )
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert lowest
    assert min(lowest) >= 2, f"ready replicas dropped to {min(lowest)} during consolidation"
    consolidated = wait_for(
        "Consolidated events", lambda: events(api, namespace, "Consolidated"), timeout=30
    )
    assert consolidated[0].type == "Normal"
    state = get_endpoint(api, namespace, NAME)["status"]["placement"]
    assert state.get("probePool") is None
