"""No rollout deadlocks on GPU capacity, on a real control plane (docs/rollout.md, "Capacity").

Filler pods in the test namespace take every GPU the endpoint's pods leave free on a pool's
nodes (a nodeSelector per node, the GPU toleration), so the scheduler finds the pool full. The
operator runs with its least-privilege RBAC: it learns about capacity only from its own pods'
`PodScheduled` conditions. Its pools' overflow delay is 5 s here (a pool counts as full once a
pod waited that long).

(a) revision B rolls out on a full reserved pool by surging one replica on ondemand-h100, then
    replacing the reserved replicas in place one at a time; the extra replica is removed at the
    end, and the endpoint never has fewer Ready replicas than desired.
(b) with both pools full and maxUnavailable 0 the rollout waits, reported as
    `Progressing=True, WaitingForCapacity` quoting the scheduler, not Degraded and never
    Failed or RolledBack; once a filler goes, it proceeds and B becomes healthy.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from e2e.operator_process import OperatorProcess

from .conftest import (
    GROUP,
    PLURAL,
    VERSION,
    apply_manifest,
    condition,
    endpoint_manifest,
    get_endpoint,
    healthy_rollout,
    wait_for,
)

RESERVED, ONDEMAND = "reserved-h100", "ondemand-h100"
NAME = "cap"
REPLICAS = 2
GPUS_PER_NODE = 8
ROLLOUT = {
    "maxSurge": 1,
    "maxUnavailable": 0,
    "healthySeconds": 2,
    "autoRollback": True,
    "canary": {"enabled": False},  # the rolling update past a full pool; no canary replica
}


def manifest(namespace: str, stage: str) -> dict[str, Any]:
    return endpoint_manifest(
        NAME,
        namespace,
        runtime={"maxModelLen": 40960, "env": [{"name": "STAGE", "value": stage}]},
        gpu={"pools": [RESERVED, ONDEMAND], "tensorParallelSize": "auto"},
        scaling={"minReplicas": REPLICAS, "maxReplicas": REPLICAS},
        rollout=ROLLOUT,
    )


class Fillers:
    """Pods that take the free GPUs of a pool's nodes (deleted with `free` or at the end)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.names: dict[str, str] = {}  # node -> filler pod

    def _used(self, node: str) -> int:
        """GPUs this test's own pods hold on `node`. Pods of other namespaces are not counted:
        a previous test's pods may still be going away, and counting them would leave room
        once they are gone; a filler that does not fit yet waits for them (`fill` waits until
        every filler is scheduled)."""
        pods = self.core.list_namespaced_pod(self.namespace, field_selector=f"spec.nodeName={node}")
        used = 0
        for pod in pods.items:
            if pod.metadata.deletion_timestamp or pod.status.phase in ("Succeeded", "Failed"):
                continue
            for c in pod.spec.containers:
                requests = (c.resources.requests if c.resources else None) or {}
                used += int(requests.get("nvidia.com/gpu", 0))
        return used

    def fill(self, pool: str) -> None:
        nodes = self.core.list_node(label_selector=f"magistral.dev/pool={pool}").items
        for node in nodes:
            name = node.metadata.name
            free = GPUS_PER_NODE - self._used(name)
            if free <= 0:
                continue
            pod_name = f"filler-{name}"
            self.core.create_namespaced_pod(
                self.namespace,
                {
                    "metadata": {"name": pod_name, "labels": {"app": "filler"}},
                    "spec": {
                        "nodeSelector": {
                            "magistral.dev/pool": pool,
                            "kubernetes.io/hostname": name,
                        },
                        "tolerations": [
                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                        ],
                        "terminationGracePeriodSeconds": 0,
                        "containers": [
                            {
                                "name": "fill",
                                "image": "registry.k8s.io/pause:3.10",
                                "resources": {
                                    "requests": {"nvidia.com/gpu": str(free)},
                                    "limits": {"nvidia.com/gpu": str(free)},
                                },
                            }
                        ],
                    },
                },
            )
            self.names[name] = pod_name
        wait_for(f"the fillers of {pool} to be scheduled", self._all_scheduled, timeout=180)

    def _all_scheduled(self) -> bool:
        for pod_name in self.names.values():
            pod = self.core.read_namespaced_pod(pod_name, self.namespace)
            if not pod.spec.node_name:
                return False
        return True

    def free(self, node: str) -> None:
        self.core.delete_namespaced_pod(
            self.names.pop(node), self.namespace, grace_period_seconds=0
        )

    def free_all(self) -> None:
        for node in list(self.names):
            with contextlib.suppress(client.ApiException):
                self.free(node)


@pytest.fixture
def fillers(api: client.ApiClient, namespace: str) -> Iterator[Fillers]:
    f = Fillers(api, namespace)
    yield f
    f.free_all()


class Watch:
    """Ready engine pods (all revisions), sampled every 0.2 s; and every version of the
    endpoint's rollout phase and its Progressing and Degraded conditions, from a Kubernetes
    watch: a transient condition is seen even when this process stalls (the API server sends
    each change; a 0.2 s sampler could miss one shown for less than a stall)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.core = client.CoreV1Api(api)
        self.ready: list[int] = []
        self.phases: set[str] = set()
        self.progressing: list[tuple[str, str, str]] = []
        self.degraded: list[tuple[str, str, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.errors: list[BaseException] = []

    def __enter__(self) -> Watch:
        # The first version is read before the watch starts from it, before the test acts.
        self._record(get_endpoint(self.api, self.namespace, NAME))
        self.thread.start()
        self.watcher.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.watcher.join(timeout=10)
        assert not self.errors, self.errors

    def _run(self) -> None:
        selector = f"magistral.dev/endpoint={NAME},app.kubernetes.io/component=inference"
        while not self.stop.is_set():
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
            self.ready.append(
                sum(
                    1
                    for p in pods
                    if not p.metadata.deletion_timestamp
                    and any(
                        c.type == "Ready" and c.status == "True"
                        for c in (p.status.conditions or [])
                    )
                )
            )
            self.stop.wait(0.2)

    def _watch(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        version = self._version
        try:
            while not self.stop.is_set():
                stream = watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    field_selector=f"metadata.name={NAME}",
                    resource_version=version,
                    timeout_seconds=2,  # to look at self.stop
                )
                for event in stream:
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    self._record(obj)
        except BaseException as exc:  # shown by __exit__: the test must not pass without it
            self.errors.append(exc)

    def _record(self, obj: dict[str, Any]) -> None:
        self._version = obj["metadata"]["resourceVersion"]
        self.phases.add(((obj.get("status") or {}).get("rollout") or {}).get("phase", ""))
        for type_, seen in (("Progressing", self.progressing), ("Degraded", self.degraded)):
            cond = condition(obj, type_)
            if cond:
                entry = (cond["status"], cond["reason"], cond.get("message", ""))
                if not seen or seen[-1] != entry:
                    seen.append(entry)


def pods_by(api: client.ApiClient, namespace: str) -> dict[tuple[str, str], int]:
    """Ready, not terminating engine pods by (pool, revision)."""
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace,
        label_selector=f"magistral.dev/endpoint={NAME},app.kubernetes.io/component=inference",
    )
    counts: dict[tuple[str, str], int] = {}
    for pod in pods.items:
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        if pod.metadata.deletion_timestamp or not ready:
            continue
        labels = pod.metadata.labels or {}
        key = (labels["magistral.dev/pool"], labels["magistral.dev/revision"])
        counts[key] = counts.get(key, 0) + 1
    return counts


def reasons(api: client.ApiClient, namespace: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME}"
    )
    return [e.reason for e in events.items]


def start_healthy(api: client.ApiClient, kubeconfig: Path, namespace: str) -> str:
    apply_manifest(kubeconfig, manifest(namespace, "a"))
    a = wait_for("revision A to be healthy", healthy_rollout(api, namespace, NAME), timeout=120)
    revision = str(a["currentRevision"])
    wait_for(
        f"{REPLICAS} Ready pods of A on {RESERVED}",
        lambda: pods_by(api, namespace) == {(RESERVED, revision): REPLICAS},
        timeout=60,
    )
    return revision


def test_a_rollout_on_a_full_pool_surges_on_the_next_pool(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    fast_overflow_operator: OperatorProcess,
    namespace: str,
    fillers: Fillers,
) -> None:
    apps = client.AppsV1Api(api)
    a = start_healthy(api, admin_kubeconfig, namespace)
    fillers.fill(RESERVED)

    with Watch(api, namespace) as watch:
        apply_manifest(admin_kubeconfig, manifest(namespace, "b"))
        state = wait_for(
            "revision B to be healthy",
            healthy_rollout(api, namespace, NAME, not_revision=a),
            timeout=180,
        )
        b = state["currentRevision"]
        wait_for(
            f"{REPLICAS} Ready pods of B on {RESERVED} alone (the extra one removed)",
            lambda: pods_by(api, namespace) == {(RESERVED, b): REPLICAS},
            timeout=60,
        )

    assert watch.ready
    assert min(watch.ready) >= REPLICAS, watch.ready
    assert not watch.phases & {"Failed", "RolledBack"}, watch.phases
    surging = [p for p in watch.progressing if p[1] == "SurgingElsewhere"]
    assert surging, watch.progressing
    assert surging[0][0] == "True"
    assert RESERVED in surging[0][2]
    assert ONDEMAND in surging[0][2]
    assert "Insufficient nvidia.com/gpu" in surging[0][2], surging[0]
    assert any(p[1] == "ReplacingInPlace" for p in watch.progressing), watch.progressing
    assert not [d for d in watch.degraded if d[0] == "True"], watch.degraded
    assert state["lastHealthyRevision"] == b
    assert not state.get("capacity"), state  # cleared once healthy
    # Each Event is posted right after the status write that records it (announce.py).
    expected = ("SurgingElsewhere", "ReplacingInPlace", "CapacityReleased", "RolloutSucceeded")
    events = wait_for(
        f"the Events {', '.join(expected)}",
        lambda: set(expected) <= set(e := reasons(api, namespace)) and e,
        timeout=30,
    )
    assert "RolledBack" not in events
    assert "RolloutFailed" not in events
    reserved = apps.read_namespaced_deployment(f"{NAME}-{RESERVED}", namespace)
    assert reserved.spec.strategy.rolling_update.max_surge == 1  # the spec's again
    assert reserved.spec.strategy.rolling_update.max_unavailable == 0
    ondemand = apps.read_namespaced_deployment(f"{NAME}-{ONDEMAND}", namespace)
    assert ondemand.spec.replicas == 0


def test_a_rollout_with_no_room_waits_honestly_and_proceeds_when_room_appears(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    fast_overflow_operator: OperatorProcess,
    namespace: str,
    fillers: Fillers,
) -> None:
    apps = client.AppsV1Api(api)
    a = start_healthy(api, admin_kubeconfig, namespace)
    fillers.fill(RESERVED)
    fillers.fill(ONDEMAND)

    with Watch(api, namespace) as watch:
        apply_manifest(admin_kubeconfig, manifest(namespace, "b"))

        def waiting() -> dict[str, Any] | None:
            obj = get_endpoint(api, namespace, NAME)
            progressing = condition(obj, "Progressing")
            if progressing and progressing["reason"] == "WaitingForCapacity":
                return obj
            return None

        obj = wait_for("the rollout to wait for capacity", waiting, timeout=120)
        progressing = condition(obj, "Progressing")
        assert progressing is not None
        assert progressing["status"] == "True"
        assert RESERVED in progressing["message"], progressing
        assert "Insufficient nvidia.com/gpu" in progressing["message"], progressing
        assert "maxUnavailable is 0" in progressing["message"], progressing
        capacity = obj["status"]["rollout"]["capacity"]
        assert capacity["mode"] == "Waiting"
        assert capacity["pool"] == RESERVED
        assert capacity["fullPools"] == [RESERVED, ONDEMAND], capacity
        b = obj["status"]["rollout"]["currentRevision"]
        assert b != a

        # It stays so: still serving A with every replica, not Degraded, nothing lingering on
        # on-demand, never failed (for longer than several passes).
        def steady() -> bool:
            obj = get_endpoint(api, namespace, NAME)
            degraded, ready = condition(obj, "Degraded"), condition(obj, "Ready")
            ondemand = apps.read_namespaced_deployment(f"{NAME}-{ONDEMAND}", namespace)
            assert obj["status"]["rollout"]["phase"] == "Progressing"
            assert degraded is not None
            assert degraded["status"] == "False", degraded
            assert ready is not None
            assert ready["status"] == "True", ready
            assert ondemand.spec.replicas == 0
            assert pods_by(api, namespace) == {(RESERVED, a): REPLICAS}
            return False

        for _ in range(8):
            steady()
            watch.stop.wait(1.5)
        assert "WaitingForCapacity" in reasons(api, namespace)

        # Room appears on one reserved node: the Pending surge pod is scheduled and the
        # rollout proceeds by itself.
        fillers.free(next(n for n in sorted(fillers.names) if n.startswith(RESERVED)))
        state = wait_for(
            "revision B to be healthy",
            healthy_rollout(api, namespace, NAME, not_revision=a),
            timeout=180,
        )
        wait_for(
            f"{REPLICAS} Ready pods of B on {RESERVED}",
            lambda: pods_by(api, namespace) == {(RESERVED, b): REPLICAS},
            timeout=60,
        )

    assert state["currentRevision"] == b
    assert min(watch.ready) >= REPLICAS, watch.ready
    assert not watch.phases & {"Failed", "RolledBack"}, watch.phases
    assert not [d for d in watch.degraded if d[0] == "True"], watch.degraded
    events = reasons(api, namespace)
    assert "RolledBack" not in events
    assert "RolloutFailed" not in events
