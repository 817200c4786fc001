"""Rollouts that prove health on a real control plane: a crash-looping revision is rolled back
to the last healthy one without ever dropping below the desired ready replicas, and a fixed
spec rolls out and becomes healthy (docs/rollout.md).

The new revision's pods are made to crash-loop through an ordinary spec field: the env
variable E2E_SIM_FAIL=true (spec.runtime.env, part of the revision) matches the kwok
stage e2e/cluster/stages/pod-sim-fail-env.yaml.

A revision is also broken through its runtime config alone (maxModelLen: only the ConfigMap the
template mounts differs): a stand-in engine reads the config each pod mounts and crash-loops
the pods whose config it cannot serve. After the rollback the restored template, a restarted
pod and a pod a scale-up adds all start from the healthy revision's ConfigMap.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster.stages import SIM_FAIL_ENV, SIM_FAIL_LABEL
from e2e.operator_process import OperatorProcess
from magistral_operator.rollout import RESTART_THRESHOLD

from .conftest import (
    apply_manifest,
    condition,
    endpoint_manifest,
    get_endpoint,
    healthy_rollout,
    printed_columns,
    ready_pods_by,
    rollout_state,
    wait_for,
)

NAME = "roll"
REPLICAS = 2
ROLLOUT = {
    "maxSurge": 1,
    "maxUnavailable": 0,
    "healthySeconds": 2,
    "autoRollback": True,
    "canary": {"enabled": False},  # the plain health-gated rollout; test_canary.py has its own
}


def manifest(namespace: str, env: list[dict[str, str]]) -> dict[str, Any]:
    return endpoint_manifest(
        NAME,
        namespace,
        runtime={"maxModelLen": 40960, "env": env},
        scaling={"minReplicas": REPLICAS, "maxReplicas": REPLICAS},
        rollout=ROLLOUT,
    )


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
    first = wait_for("revision A to be healthy", healthy_rollout(api, namespace, NAME), timeout=120)
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
            state = rollout_state(api, namespace, NAME)
            return state if state.get("phase") == "RolledBack" else None

        state = wait_for("revision B to be rolled back", rolled_back, timeout=180)
        revision_b = state["currentRevision"]
        assert revision_b != revision_a
        printed = printed_columns(admin_kubeconfig, namespace, NAME)
        assert (printed["ROLLOUT"], printed["REVISION"]) == ("RolledBack", revision_b), printed
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
        healthy_rollout(api, namespace, NAME, not_revision=revision_a),
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
    printed = printed_columns(admin_kubeconfig, namespace, NAME)
    assert (printed["ROLLOUT"], printed["REVISION"], printed["HEALTH"]) == (
        "Healthy",
        revision_c,
        "AsExpected",
    ), printed
    wait_for(
        "a RolloutSucceeded Event for C",
        lambda: reasons(api, namespace).count("RolloutSucceeded") >= 2,
        timeout=30,
    )
    assert "RolloutStarted" in reasons(api, namespace)


# --- a revision broken through its runtime config alone --------------------------------------

CONFIG_NAME = "cfg"
GOOD_LEN, BAD_LEN = 40960, 32768  # both fit TP 1: only the config differs


def config_manifest(namespace: str, *, max_model_len: int, replicas: int) -> dict[str, Any]:
    return endpoint_manifest(
        CONFIG_NAME,
        namespace,
        runtime={"maxModelLen": max_model_len},
        scaling={"minReplicas": replicas, "maxReplicas": replicas},
        # Long enough that the config-reading engine below fails a bad pod before it counts as
        # available (it polls every 0.1 s).
        rollout={**ROLLOUT, "healthySeconds": 10},
    )


class ConfigReadingEngine:
    """Plays the engine's start-up for every engine pod of the endpoint: reads the runtime config
    the pod mounts (the ConfigMap its spec names, the item at ``runtime.json``) and fails the
    pod (label ``magistral.dev/sim-fail=true``, the kwok crash-loop stage) unless it says
    ``max_model_len`` GOOD_LEN, as a real engine would crash on a config it cannot serve.
    ``seen`` records, per pod, the ConfigMap and the ``max_model_len`` it started with."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, tuple[str, int]] = {}
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConfigReadingEngine:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _config(self, pod: Any) -> tuple[str, int] | None:
        for volume in pod.spec.volumes or []:
            if volume.name == "runtime-config" and volume.config_map is not None:
                name = volume.config_map.name
                key = next(i.key for i in volume.config_map.items if i.path == "runtime.json")
                try:
                    data = self.core.read_namespaced_config_map(name, self.namespace).data
                except client.ApiException as exc:
                    if exc.status == 404:  # as the kubelet would: wait for it
                        return None
                    raise
                return name, int(json.loads(data[key])["max_model_len"])
        return None

    def _count_restarts(self, pod: Any) -> None:
        """The kwok stage for the label shows one restart; a kubelet would count on while the
        pod crash-loops: past the rollout's threshold (the env stage shows as many). The list
        is replaced whole (container statuses have no merge key)."""
        statuses = pod.status.container_statuses or []
        crashing = [
            s
            for s in statuses
            if s.state and s.state.waiting and s.restart_count < RESTART_THRESHOLD
        ]
        if not crashing:
            return
        wire = self.core.api_client.sanitize_for_serialization(statuses)
        for status in wire:
            status["restartCount"] = max(int(status.get("restartCount") or 0), RESTART_THRESHOLD)
        self.core.patch_namespaced_pod_status(
            pod.metadata.name, self.namespace, {"status": {"containerStatuses": wire}}
        )

    def _run(self) -> None:
        selector = f"magistral.dev/endpoint={CONFIG_NAME},app.kubernetes.io/component=inference"
        while not self.stop.is_set():
            for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
                name = pod.metadata.name
                if pod.metadata.deletion_timestamp:
                    continue
                if name in self.failed:
                    self._count_restarts(pod)
                if name in self.seen:
                    continue
                config = self._config(pod)
                if config is None:
                    continue
                self.seen[name] = config
                if config[1] != GOOD_LEN:
                    self.failed.append(name)
                    self.core.patch_namespaced_pod(
                        name, self.namespace, {"metadata": {"labels": {SIM_FAIL_LABEL: "true"}}}
                    )
            self.stop.wait(0.1)


def test_a_config_only_failure_restores_the_healthy_config(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)

    def state() -> dict[str, Any]:
        return dict(
            (get_endpoint(api, namespace, CONFIG_NAME).get("status") or {}).get("rollout") or {}
        )

    def in_phase(phase: str) -> Any:
        def check() -> dict[str, Any] | None:
            current = state()
            return current if current.get("phase") == phase else None

        return check

    def live_pods(revision: str) -> list[str]:
        selector = f"magistral.dev/endpoint={CONFIG_NAME},magistral.dev/revision={revision}"
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        return sorted(p.metadata.name for p in pods if not p.metadata.deletion_timestamp)

    def ready_by_revision() -> dict[str, int]:
        return ready_pods_by(api, namespace, endpoint=CONFIG_NAME, label="magistral.dev/revision")

    with ConfigReadingEngine(api, namespace) as engine:
        # Revision A: healthy with GOOD_LEN.
        apply_manifest(
            admin_kubeconfig, config_manifest(namespace, max_model_len=GOOD_LEN, replicas=2)
        )
        a = wait_for(
            "revision A to be healthy",
            in_phase("Healthy"),
            timeout=180,
        )["currentRevision"]
        a_map = f"{CONFIG_NAME}-runtime-{a}"
        wait_for("2 Ready pods of A", lambda: ready_by_revision().get(a) == 2, timeout=60)

        # Revision B: the same pod template but for the ConfigMap it mounts (BAD_LEN).
        apply_manifest(
            admin_kubeconfig, config_manifest(namespace, max_model_len=BAD_LEN, replicas=2)
        )
        rolled = wait_for("revision B to be rolled back", in_phase("RolledBack"), timeout=180)
        b = rolled["currentRevision"]
        assert b != a
        b_map = f"{CONFIG_NAME}-runtime-{b}"
        assert engine.failed, "no pod of B started"
        assert {engine.seen[p] for p in engine.failed} == {(b_map, BAD_LEN)}
        wait_for(
            "the pods of A alone to serve again",
            lambda: ready_by_revision() == {a: 2},
            timeout=180,
        )
        deployment = apps.read_namespaced_deployment(f"{CONFIG_NAME}-reserved-h100", namespace)
        template = deployment.spec.template
        assert template.metadata.labels["magistral.dev/revision"] == a
        assert [v.config_map.name for v in template.spec.volumes if v.config_map] == [a_map]
        a_config = core.read_namespaced_config_map(a_map, namespace)
        assert a_config.immutable is True
        assert all(
            json.loads(v)["max_model_len"] == GOOD_LEN
            for k, v in a_config.data.items()
            if k.endswith(".json")
        )
        assert core.read_namespaced_config_map(b_map, namespace).immutable is True  # kept

        # A pod of A restarts (deleted, replaced) and a scale-up adds one: both start from A's
        # config, and serve (the engine would have failed them on B's).
        failed_before = len(engine.failed)
        victim = live_pods(a)[0]
        core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

        def replaced() -> bool:
            live = live_pods(a)
            return (
                victim not in live
                and len(live) == 2
                and all(p in engine.seen for p in live)
                and ready_by_revision() == {a: 2}
            )

        wait_for("a replacement pod of A, Ready", replaced, timeout=120)
        apply_manifest(
            admin_kubeconfig, config_manifest(namespace, max_model_len=BAD_LEN, replicas=3)
        )
        wait_for("3 Ready pods of A", lambda: ready_by_revision() == {a: 3}, timeout=180)
        assert state()["phase"] == "RolledBack"
        assert state()["currentRevision"] == b
        assert len(engine.failed) == failed_before, engine.failed
        live = live_pods(a)
        assert len(live) == 3
        assert victim not in live
        for name in live:
            assert engine.seen[name] == (a_map, GOOD_LEN), (name, engine.seen)
