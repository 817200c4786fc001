"""Rollouts that prove health on a real control plane: a crash-looping revision is rolled back
to the last healthy one without ever dropping below the desired ready replicas, and a fixed
spec rolls out and becomes healthy (docs/rollout.md).

The new revision's pods are made to crash-loop through an ordinary spec field: the env
variable E2E_SIM_FAIL=true (spec.runtime.env, part of the revision) matches the kwok
stage e2e/cluster/stages/pod-sim-fail-env.yaml.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster.stages import SIM_FAIL_ENV
from e2e.operator_process import OperatorProcess

from .conftest import (
    apply_manifest,
    condition,
    endpoint_manifest,
    get_endpoint,
    ready_pods_by,
    wait_for,
)

NAME = "roll"
REPLICAS = 2
ROLLOUT = {"maxSurge": 1, "maxUnavailable": 0, "healthySeconds": 2, "autoRollback": True}


def manifest(namespace: str, env: list[dict[str, str]]) -> dict[str, Any]:
    return endpoint_manifest(
        NAME,
        namespace,
        runtime={"maxModelLen": 40960, "env": env},
        scaling={"minReplicas": REPLICAS, "maxReplicas": REPLICAS},
        rollout=ROLLOUT,
    )


def rollout_state(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return dict((get_endpoint(api, namespace, NAME).get("status") or {}).get("rollout") or {})


def healthy_on(api: client.ApiClient, namespace: str, *, not_revision: str | None = None) -> Any:
    def check() -> dict[str, Any] | None:
        state = rollout_state(api, namespace)
        if state.get("phase") != "Healthy" or state.get("currentRevision") == not_revision:
            return None
        return state

    return check


def reasons(api: client.ApiClient, namespace: str) -> list[str]:
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME}"
    )
    return [e.reason for e in events.items]


def ready_pods_by_revision(api: client.ApiClient, namespace: str) -> dict[str, int]:
    return ready_pods_by(api, namespace, endpoint=NAME, label="magistral.dev/revision")


def test_failed_revision_rolls_back_and_a_fixed_one_rolls_out(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    # Revision A: healthy.
    apply_manifest(admin_kubeconfig, manifest(namespace, [{"name": "STAGE", "value": "a"}]))
    first = wait_for("revision A to be healthy", healthy_on(api, namespace), timeout=120)
    revision_a = first["currentRevision"]
    assert first["lastHealthyRevision"] == revision_a
    wait_for(
        f"{REPLICAS} Ready pods of revision A",
        lambda: ready_pods_by_revision(api, namespace).get(revision_a) == REPLICAS,
        timeout=60,
    )

    # Watch the Ready pods of A for the whole attempt: maxUnavailable 0 keeps them all.
    lowest: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            lowest.append(ready_pods_by_revision(api, namespace).get(revision_a, 0))
            stop.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # Revision B: its pods crash-loop.
        apply_manifest(
            admin_kubeconfig,
            manifest(
                namespace,
                [{"name": "STAGE", "value": "b"}, {"name": SIM_FAIL_ENV, "value": "true"}],
            ),
        )

        def rolled_back() -> dict[str, Any] | None:
            state = rollout_state(api, namespace)
            return state if state.get("phase") == "RolledBack" else None

        state = wait_for("revision B to be rolled back", rolled_back, timeout=180)
        revision_b = state["currentRevision"]
        assert revision_b != revision_a
        assert state["failedRevision"] == revision_b
        assert state["lastHealthyRevision"] == revision_a

        def restored() -> dict[str, Any] | None:
            obj = get_endpoint(api, namespace, NAME)
            progressing = condition(obj, "Progressing")
            counts = ready_pods_by_revision(api, namespace)
            if (
                counts == {revision_a: REPLICAS}
                and progressing
                and progressing["reason"] == "RolledBack"
                and progressing["status"] == "False"
            ):
                return obj
            return None

        obj = wait_for("the pods of A alone to serve again", restored, timeout=180)
    finally:
        stop.set()
        watcher.join(timeout=5)

    assert lowest
    assert min(lowest) >= REPLICAS, lowest
    assert obj["status"]["currentRevision"] == revision_a
    degraded = condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["status"] == "True", degraded
    assert degraded["reason"] == "RolloutFailed"
    assert revision_b in degraded["message"]
    assert revision_a in degraded["message"]
    assert "crash-looping" in degraded["message"]
    deployment = client.AppsV1Api(api).read_namespaced_deployment(
        f"{NAME}-reserved-h100", namespace
    )
    assert deployment.spec.template.metadata.labels["magistral.dev/revision"] == revision_a
    assert deployment.spec.min_ready_seconds == ROLLOUT["healthySeconds"]
    wait_for("a RolledBack Event", lambda: "RolledBack" in reasons(api, namespace), timeout=30)

    # Revision C: fixed; it rolls out and proves healthy.
    apply_manifest(admin_kubeconfig, manifest(namespace, [{"name": "STAGE", "value": "c"}]))
    state = wait_for(
        "revision C to be healthy",
        healthy_on(api, namespace, not_revision=revision_a),
        timeout=180,
    )
    revision_c = state["currentRevision"]
    assert revision_c not in (revision_a, revision_b)
    assert state["lastHealthyRevision"] == revision_c
    assert not state.get("failedRevision")

    def settled() -> dict[str, Any] | None:
        obj = get_endpoint(api, namespace, NAME)
        degraded = condition(obj, "Degraded")
        counts = ready_pods_by_revision(api, namespace)
        if counts == {revision_c: REPLICAS} and degraded and degraded["status"] == "False":
            return obj
        return None

    obj = wait_for("the pods of C alone, not Degraded", settled, timeout=120)
    assert obj["status"]["currentRevision"] == revision_c
    wait_for(
        "a RolloutSucceeded Event for C",
        lambda: reasons(api, namespace).count("RolloutSucceeded") >= 2,
        timeout=30,
    )
    assert "RolloutStarted" in reasons(api, namespace)
