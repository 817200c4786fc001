"""Pure parts of router pods in the pod supervisor: which processes a router pod asks for."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from e2e.engine.pods import (
    ConfigMapKey,
    SecretKey,
    decide,
    is_router_pod,
    readiness_gated,
    termination,
)
from e2e.engine.router_pods import decide_router, expand_vars, map_loopback
from tests.e2e_engine.router_contract import router_containers, router_labels

IP = "127.64.2.7"


def router_pod(**status: Any) -> dict[str, Any]:
    """A router pod as the operator renders it (the contract), Running on a loopback IP, with
    more kinds of environment variables, a ``$(VAR)`` argument and a preStop sleep."""
    router, front = router_containers(namespace="team", endpoint="ep")
    router["env"].append({"name": "RUST_LOG", "value": "info"})
    front["args"] += ["--name", "$(POD_NAME)"]
    front["readinessProbe"]["periodSeconds"] = 2
    front["lifecycle"] = {"preStop": {"sleep": {"seconds": 3}}}
    label = "metadata.labels['magistral.dev/endpoint']"
    front["env"] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "UPSTREAM", "value": "localhost:8001"},
        {
            "name": "VLLM_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "ep-key", "key": "api-key"}},
        },
        {"name": "ENDPOINT", "valueFrom": {"fieldRef": {"fieldPath": label}}},
        {"name": "LIMITS", "valueFrom": {"configMapKeyRef": {"name": "ep-cm", "key": "limits"}}},
    ]
    return {
        "metadata": {
            "name": "ep-router-5d8f-abcde",
            "namespace": "team",
            "uid": "uid-r1",
            "labels": router_labels("ep"),
        },
        "spec": {
            "serviceAccountName": "ep-router",
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 20,
            "containers": [router, front],
        },
        "status": {"phase": "Running", "podIP": IP, "hostIP": "127.32.0.1", **status},
    }


def test_loopback_mapping_replaces_whole_addresses_only() -> None:
    assert map_loopback("0.0.0.0", IP) == IP
    assert map_loopback("http://127.0.0.1:8001/v1", IP) == f"http://{IP}:8001/v1"
    assert map_loopback("http://localhost:8001", IP) == f"http://{IP}:8001"
    assert map_loopback("a=127.0.0.1,b=0.0.0.0:9", IP) == f"a={IP},b={IP}:9"
    for kept in ("127.0.0.10", "10.127.0.0.1", "localhost.example", "my-localhost", "127.64.0.1"):
        assert map_loopback(kept, IP) == kept


def test_kubelet_variable_expansion() -> None:
    env = {"A": "x", "B": "y"}
    assert expand_vars("$(A)-$(B)", env) == "x-y"
    assert expand_vars("$(MISSING)", env) == "$(MISSING)"
    assert expand_vars("$$(A)", env) == "$(A)"


def test_a_router_pod_never_gets_a_simulator() -> None:
    pod = router_pod()
    assert is_router_pod(pod)
    decision = decide(pod)  # the front has a port named "http"
    assert decision.sim is None
    assert "router pod" in decision.reason
    engine = copy.deepcopy(pod)
    engine["metadata"]["labels"]["app.kubernetes.io/component"] = "inference"
    assert not is_router_pod(engine)
    assert decide(engine).sim is not None


def test_each_container_runs_with_the_pod_ip() -> None:
    decision = decide_router(router_pod())
    assert decision.reason == ""
    assert not decision.skipped
    router, front = decision.containers
    assert router.container == "router"
    assert front.container == "front"
    assert router.argv[0] == "vllm-router"
    assert router.argv[router.argv.index("--host") + 1] == IP
    assert router.argv[router.argv.index("--prometheus-host") + 1] == IP
    assert router.port == 8001  # from --port, not the metrics port
    assert router.readiness is None
    assert dict(router.env) == {"POD_IP": IP, "RUST_LOG": "info"}
    assert router.readiness_port is None
    assert (router.service_account, router.automount_token) == ("ep-router", True)
    assert front.argv[:2] == ("magistral-runtime", "front")
    assert front.argv[front.argv.index("--host") + 1] == IP
    assert front.argv[front.argv.index("--router-url") + 1] == f"http://{IP}:8001"
    assert front.argv[-1] == "ep-router-5d8f-abcde"  # $(POD_NAME)
    assert not any(a in ("0.0.0.0", "127.0.0.1") or "127.0.0.1" in a for a in front.argv)
    assert front.port == 8000
    assert dict(front.env) == {
        "POD_NAME": "ep-router-5d8f-abcde",
        "UPSTREAM": f"{IP}:8001",
        "ENDPOINT": "ep",
    }
    assert [(r.name, r.secret, r.config_map) for r in front.env_refs] == [
        ("VLLM_API_KEY", SecretKey("ep-key", "api-key"), None),
        ("LIMITS", None, ConfigMapKey("ep-cm", "limits")),
    ]
    assert front.readiness is not None
    assert (front.readiness.path, front.readiness.period_s) == ("/healthz", 2.0)
    assert front.readiness_port == 9090  # the port named "demand"
    assert front.key == "uid-r1/front"


def test_fingerprint_follows_the_pod_ip_and_args() -> None:
    (router, _) = decide_router(router_pod()).containers
    moved = router_pod(podIP="127.64.2.8")
    (moved_router, _) = decide_router(moved).containers
    assert moved_router.fingerprint() != router.fingerprint()
    same = router_pod()
    same["metadata"]["labels"]["extra"] = "x"
    (same_router, _) = decide_router(same).containers
    assert same_router.fingerprint() == router.fingerprint()


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"phase": "Pending"}, "phase Pending"),
        ({"podIP": ""}, "no pod IP"),
    ],
)
def test_no_process_when(status: dict[str, Any], reason: str) -> None:
    decision = decide_router(router_pod(**status))
    assert decision.containers == ()
    assert decision.reason == reason


def test_deleted_pod_and_foreign_ip() -> None:
    deleted = router_pod()
    deleted["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert decide_router(deleted).reason == "terminating"
    foreign = decide_router(router_pod(podIP="10.0.0.7"))
    assert foreign.containers == ()
    assert foreign.refused


def test_a_container_kwok_reports_not_running_has_no_process() -> None:
    pod = router_pod(
        containerStatuses=[
            {"name": "router", "state": {"running": {"startedAt": "2026-12-01T00:00:00Z"}}},
            {"name": "front", "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ]
    )
    decision = decide_router(pod)
    assert [c.container for c in decision.containers] == ["router"]
    assert decision.skipped == (("front", "not running (CrashLoopBackOff)"),)


def test_a_container_without_command_is_skipped() -> None:
    pod = router_pod()
    del pod["spec"]["containers"][0]["command"]
    decision = decide_router(pod)
    assert [c.container for c in decision.containers] == ["front"]
    assert decision.skipped[0][0] == "router"


def test_no_service_account_token_when_automount_is_off() -> None:
    pod = router_pod()
    pod["spec"]["automountServiceAccountToken"] = False
    assert not any(c.automount_token for c in decide_router(pod).containers)


def test_readiness_gate_and_termination_per_container() -> None:
    pod = router_pod()
    assert readiness_gated(pod)  # every router pod, by its label, without any env
    engine = copy.deepcopy(pod)
    engine["metadata"]["labels"]["app.kubernetes.io/component"] = "inference"
    assert not readiness_gated(engine)  # an engine pod only with the env, on its http container
    front = engine["spec"]["containers"][1]
    front["env"].append({"name": "E2E_SIM_READINESS", "value": "supervisor"})
    assert readiness_gated(engine)
    assert (termination(pod, "front").prestop_s, termination(pod, "front").grace_s) == (3.0, 20.0)
    assert termination(pod, "router").prestop_s == 0.0
