"""The canary through reconcile passes against the in-memory API (the wiring).

Revision A is healthy; revision B differs in its sampling defaults. With spec.rollout.canary
on by default, B first runs as `ep-canary` (one replica, reserved pool name `canary`) while the
pool Deployment keeps A's template; the reconcile reads the window through the reader with the
canary pod and A's ready pods, and the verdict decides: Successful promotes B to the pool
Deployment and removes the canary, Failed restores A and removes the canary with an Event and a
Degraded message quoting the numbers, Inconclusive waits.
"""

from __future__ import annotations

from typing import Any

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.kube.children import config_maps_in_template
from magistral_operator.plan import plan_endpoint
from magistral_operator.rollout_analysis import WindowReading
from tests.unit.canary_data import counters, reading
from tests.unit.fake_kube import FakeKube, ScriptedDemand
from tests.unit.test_revision_config_maps import (
    NAME,
    NS,
    REVISION,
    _controller,
    _endpoint,
    _engines,
    _rollout,
)

POOL = "magistral.dev/pool"


def _with_canary(temperature: float) -> dict[str, Any]:
    body = _endpoint(temperature, replicas=2)
    body["spec"]["rollout"] = {"canary": {"analysisSeconds": 60, "minRequests": 10}}
    return body


def _set(kube: FakeKube, temperature: float) -> None:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    body["spec"] = _with_canary(temperature)["spec"]
    body["metadata"]["generation"] += 1
    kube.add(body)


def _pass(
    kube: FakeKube, config: OperatorConfig, window: WindowReading | str = "not scripted"
) -> tuple[ScriptedDemand, list[tuple[str, str]]]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    demand = ScriptedDemand(window=window)
    before = len(kube.writes)
    reconcile(kube, config, body, demand=demand, refusals=RefusalBook())
    return demand, [w for w in kube.writes[before:] if w[0] in ("apply", "delete")]


def _by_name(kube: FakeKube) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _engines(kube)}


def _serving(kube: FakeKube) -> dict[str, Any]:
    """The pool Deployment that has the replicas (reserved first)."""
    (dep,) = [
        d for n, d in _by_name(kube).items() if n != f"{NAME}-canary" and d["spec"]["replicas"] > 0
    ]
    return dep


def _condition(kube: FakeKube, type_: str) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return next(c for c in body["status"]["conditions"] if c["type"] == type_)


def _start_canary(kube: FakeKube, config: OperatorConfig) -> tuple[str, str]:
    """A healthy, then B applied: returns (A, B) once the canary pod runs."""
    kube.add(_with_canary(0.7))
    _pass(kube, config)
    _controller(kube)
    _pass(kube, config)
    state = _rollout(kube)
    assert state["phase"] == "Healthy"
    assert "analysis" not in state  # the first: no canary
    a = state["currentRevision"]
    _set(kube, 0.9)
    _pass(kube, config)
    b = _rollout(kube)["currentRevision"]
    assert b != a
    _controller(kube)  # the canary's pod runs and is Ready
    return a, b


def test_a_canary_runs_beside_the_healthy_revision(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    a, b = _start_canary(kube, operator_config)
    state = _rollout(kube)
    assert state["phase"] == "Canary"
    assert state["analysis"]["phase"] == "Pending"
    deps = _by_name(kube)
    canary = deps[f"{NAME}-canary"]
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["metadata"]["labels"][REVISION] == b
    assert canary["spec"]["template"]["metadata"]["labels"][POOL] == "canary"
    assert canary["spec"]["selector"]["matchLabels"][POOL] == "canary"
    (config_map,) = config_maps_in_template(canary["spec"]["template"])
    assert config_map.endswith(b)  # the canary mounts B's own ConfigMap
    for name, dep in deps.items():  # every pool Deployment still runs A
        if name != f"{NAME}-canary":
            assert dep["spec"]["template"]["metadata"]["labels"][REVISION] == a
    assert _serving(kube)["spec"]["replicas"] == 2
    started = [e for e in kube.events if e["reason"] == "RolloutStarted"]
    assert "canary" in started[-1]["message"]

    demand, _ = _pass(kube, operator_config, reading(20, counters(3), counters(9)))
    (window, canary_pods, baseline_pods) = demand.windows[-1]
    assert window.startswith(f"{b}/")
    assert len(canary_pods) == 1
    assert canary_pods[0].startswith(f"{NAME}-canary-")
    assert len(baseline_pods) == 2
    assert all(f"{NAME}-canary" not in p for p in baseline_pods)
    state = _rollout(kube)
    assert state["phase"] == "Canary"
    assert state["analysis"]["phase"] == "Running"
    assert state["analysis"]["canaryPod"] == canary_pods[0]
    assert state["analysis"]["startedAt"]
    progressing = _condition(kube, "Progressing")
    assert progressing["reason"] == "CanaryAnalysis"
    assert "Running" in progressing["message"]


def test_a_passing_canary_is_promoted(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    _, b = _start_canary(kube, operator_config)
    _, writes = _pass(kube, operator_config, reading(61, counters(30), counters(60)))
    state = _rollout(kube)
    assert state["phase"] == "Progressing"
    assert state["analysis"]["phase"] == "Successful"
    assert ("delete", f"Deployment/{NAME}-canary") in writes
    assert f"{NAME}-canary" not in _by_name(kube)
    assert _serving(kube)["spec"]["template"]["metadata"]["labels"][REVISION] == b
    assert [e["reason"] for e in kube.events][-1] == "CanaryPromoted"
    _controller(kube)
    _pass(kube, operator_config)
    assert _rollout(kube)["phase"] == "Healthy"
    assert _rollout(kube)["lastHealthyRevision"] == b


def test_a_slow_canary_is_rolled_back_with_the_numbers(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    a, b = _start_canary(kube, operator_config)
    slow = reading(61, counters(30, itl=0.2), counters(60, itl=0.02))
    _, writes = _pass(kube, operator_config, slow)
    state = _rollout(kube)
    assert state["phase"] == "RolledBack"
    assert state["failedRevision"] == b
    assert state["analysis"]["phase"] == "Failed"
    assert ("delete", f"Deployment/{NAME}-canary") in writes
    assert f"{NAME}-canary" not in _by_name(kube)
    assert _serving(kube)["spec"]["template"]["metadata"]["labels"][REVISION] == a
    degraded = _condition(kube, "Degraded")
    assert degraded["status"] == "True"
    assert "ITL p90" in degraded["message"]
    assert "baseline" in degraded["message"]
    rolled = [e for e in kube.events if e["reason"] == "RolledBack"]
    assert "canary analysis failed" in rolled[-1]["message"]
    _, writes = _pass(kube, operator_config)  # settled: nothing more to write
    assert writes == []


def test_a_failing_canary_is_rolled_back_on_errors(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    a, _ = _start_canary(kube, operator_config)
    _pass(kube, operator_config, reading(15, counters(20, errors=5), counters(40)))
    state = _rollout(kube)
    assert state["phase"] == "RolledBack"
    assert "error share 25.0 %" in state["message"]
    assert f"{NAME}-canary" not in _by_name(kube)
    assert _serving(kube)["spec"]["template"]["metadata"]["labels"][REVISION] == a


def test_too_little_traffic_waits(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    _start_canary(kube, operator_config)
    _, writes = _pass(kube, operator_config, reading(90, counters(2), counters(4)))
    state = _rollout(kube)
    assert state["phase"] == "Canary"
    assert state["analysis"]["phase"] == "Inconclusive"
    assert "too little traffic" in state["analysis"]["message"]
    assert f"{NAME}-canary" in _by_name(kube)
    assert not any(w == ("delete", f"Deployment/{NAME}-canary") for w in writes)


def test_an_unreadable_window_is_not_a_verdict(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    _start_canary(kube, operator_config)
    not_yet = "the routers have not added the canary replica yet (1/2 route to it)"
    _pass(kube, operator_config, not_yet)
    state = _rollout(kube)
    assert state["analysis"]["phase"] == "Pending"  # the window has not started
    assert state["analysis"]["message"] == not_yet
    assert "startedAt" not in state["analysis"]
    _pass(kube, operator_config, reading(10, counters(3), counters(9)))
    assert _rollout(kube)["analysis"]["phase"] == "Running"
    _pass(kube, operator_config, "the canary replica's /metrics did not answer")
    state = _rollout(kube)
    assert state["phase"] == "Canary"
    assert state["analysis"]["phase"] == "Running"
    assert "could not be read" in state["analysis"]["message"]


def test_canary_off_rolls_out_at_once(operator_config: OperatorConfig) -> None:
    kube = FakeKube()
    kube.add(_with_canary(0.7))
    _pass(kube, operator_config)
    _controller(kube)
    _pass(kube, operator_config)
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    body["spec"] = {**_with_canary(0.9)["spec"], "rollout": {"canary": {"enabled": False}}}
    kube.add(body)
    _pass(kube, operator_config)
    assert _rollout(kube)["phase"] == "Progressing"
    assert f"{NAME}-canary" not in _by_name(kube)


def _unschedulable_canary(kube: FakeKube) -> str:
    """The scheduler found no node for the canary's pod, long ago; returns its pool."""
    (pod,) = [
        p
        for p in kube.list("Pod", namespace=NS, selector=f"{POOL}=canary")
        if not p["metadata"].get("deletionTimestamp")
    ]
    pod["status"] = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                "lastTransitionTime": "2020-01-01T00:00:00Z",
            }
        ],
    }
    kube.add(pod)
    canary = _by_name(kube)[f"{NAME}-canary"]
    return str(canary["metadata"]["annotations"]["magistral.dev/canary-of"])


def test_a_canary_on_a_full_pool_moves_on_then_waits_honestly(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    _start_canary(kube, operator_config)
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    # Every pool the endpoint may use (an empty one has no Deployment: kube/children.py).
    pools = [p.pool.name for p in plan_endpoint(parse_endpoint(body), operator_config).usable_pools]
    assert len(pools) > 1
    tried = []
    for _ in pools:
        tried.append(_unschedulable_canary(kube))
        _pass(kube, operator_config, "not read")
        _controller(kube)  # the moved canary's pod (the stand-in schedules it at once)
    assert tried[0] == "reserved-h100"  # reserved first
    assert sorted(tried) == sorted(pools)  # each pool tried once
    state = _rollout(kube)
    assert state["phase"] == "Canary"  # waiting, never failed
    assert state["analysis"]["fullPools"] == tried
    _unschedulable_canary(kube)
    _pass(kube, operator_config, "not read")
    progressing = _condition(kube, "Progressing")
    assert progressing["reason"] == "WaitingForCapacity"
    assert "Insufficient nvidia.com/gpu" in progressing["message"]
    assert _rollout(kube)["phase"] == "Canary"
    degraded = _condition(kube, "Degraded")
    assert degraded["status"] == "False"
