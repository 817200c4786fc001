"""Replicas the cluster shows Ready that do not answer (issue 12, item 4: a lost node).

The pure parts (consecutive misses, the routers' dropped workers, who counts as unreachable),
the demand collector's memory of misses per round (its HTTP calls replaced), and the wiring
against the fake API: an unreachable replica leaves status.readyReplicas, makes Ready False
when it was the only one and Degraded True ReplicasUnreachable naming it.
"""

from __future__ import annotations

from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.autoscale.demand import DemandSample
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.kube import collector as collector_module
from magistral_operator.kube.collector import DemandCollector, EngineScrape
from magistral_operator.kube.demand import (
    UNREACHABLE_AFTER_MISSES,
    FrontReading,
    Miss,
    count_misses,
    not_routed,
    unreachable_pods,
)
from magistral_operator.kube.metrics import EngineReading
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NS, NAME = "ns", "ep"


def test_two_consecutive_misses_are_needed() -> None:
    assert UNREACHABLE_AFTER_MISSES == 2


@pytest.mark.parametrize(
    ("previous", "ready", "silent", "expected"),
    [
        ({}, ["a", "b"], [], {}),
        ({}, ["a", "b"], ["a"], {"a": (1, 10.0)}),
        ({"a": (1, 5.0)}, ["a", "b"], ["a"], {"a": (2, 10.0)}),
        ({"a": (2, 5.0)}, ["a"], ["a"], {"a": (3, 10.0)}),
        ({"a": (1, 9.0)}, ["a"], ["a"], {"a": (1, 9.0)}),  # 1 s later: the same burst
        ({"a": (1, 5.0)}, ["a", "b"], ["b"], {"b": (1, 10.0)}),  # a answered: it restarts
        ({"a": (3, 5.0)}, ["b"], [], {}),  # a no longer Ready (or gone): forgotten
        ({"a": (1, 5.0)}, [], ["a"], {}),  # silent but not Ready: not counted
    ],
)
def test_consecutive_misses(
    previous: dict[str, Miss], ready: list[str], silent: list[str], expected: dict[str, Miss]
) -> None:
    assert count_misses(previous, ready=ready, silent=silent, now=10.0, min_gap=2.0) == expected


def test_only_pods_that_answered_before_are_counted() -> None:
    """A pod the operator never reached (a network policy, a simulated node without a
    process) stays a partial read: no lost node is inferred."""
    got = count_misses({}, ready=["a", "b"], silent=["a", "b"], answered={"b"}, now=1.0)
    assert got == {"b": (1, 1.0)}


@pytest.mark.parametrize(
    ("misses", "unrouted", "expected"),
    [
        ({}, [], ()),
        ({"a": (1, 0.0)}, [], ()),  # one slow scrape is not enough
        ({"a": (2, 0.0)}, [], ("a",)),
        ({"b": (5, 0.0), "a": (2, 0.0)}, [], ("a", "b")),
        ({"a": (1, 0.0)}, ["a"], ("a",)),  # silent and dropped by every router: at once
        ({"a": (1, 0.0)}, ["b"], ()),  # another pod dropped (not silent): nothing
        ({}, ["a"], ()),  # dropped by the routers but answering: reachable
    ],
)
def test_who_is_unreachable(
    misses: dict[str, Miss], unrouted: list[str], expected: tuple[str, ...]
) -> None:
    assert unreachable_pods(misses, unrouted=unrouted) == expected


def _front(urls: tuple[str, ...] | None) -> FrontReading:
    return FrontReading(
        held=0,
        queued=0,
        in_flight=0,
        arrivals_total=0,
        start_time=1.0,
        workers=len(urls or ()),
        router_up=True,
        worker_urls=urls,
    )


TARGETS = {"a": ("10.0.0.1", 8000), "b": ("10.0.0.2", 8000)}


@pytest.mark.parametrize(
    ("fronts", "expected"),
    [
        ([], set()),
        (["10.1.0.1:9090: timed out"], set()),  # no answering front: nothing known
        ([_front(None)], set()),  # a front that does not report its workers
        ([_front(("http://10.0.0.2:8000",))], {"a"}),
        ([_front(()), _front(("http://10.0.0.1:8000",))], {"b"}),  # one router still routes a
        ([_front(()), "refused"], {"a", "b"}),
        ([_front(("http://10.0.0.1:8000", "http://10.0.0.2:8000"))], set()),
    ],
)
def test_pods_no_router_routes_to(fronts: list[FrontReading | str], expected: set[str]) -> None:
    assert not_routed(TARGETS, fronts) == expected


# --- the collector's memory (its HTTP calls replaced) ---------------------------------------


def _pod(name: str, component: str, ip: str, *, ready: bool = True) -> dict[str, Any]:
    labels = {"magistral.dev/endpoint": NAME, "app.kubernetes.io/component": component}
    port = {"name": "http", "containerPort": 8000}
    if component == "inference":
        labels["magistral.dev/pool"] = "reserved-h100"
    else:
        port = {"name": "demand", "containerPort": 9090}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": [port]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


class Network:
    """What answers: engine IPs that are silent, and the routers' worker lists; `gets` counts
    the HTTP reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.silent: set[str] = set()
        self.worker_urls: tuple[str, ...] | None = None
        self.gets = 0
        monkeypatch.setattr(collector_module, "scrape_engine", self.scrape)
        monkeypatch.setattr(collector_module, "read_front", self.read_front)

    def scrape(self, ip: str, port: int, *, counters: bool, timeout: float) -> EngineScrape | None:
        self.gets += 1
        return None if ip in self.silent else EngineScrape(EngineReading(waiting=0, running=0))

    def read_front(self, ip: str, port: int, *, timeout: float) -> FrontReading:
        self.gets += 1
        return _front(self.worker_urls)


ROUTER = _pod("r-1", "router", "10.1.0.1")
E1, E2 = _pod("e-1", "inference", "10.0.0.1"), _pod("e-2", "inference", "10.0.0.2")


CLOCK = [0.0]


def collector() -> DemandCollector:
    return DemandCollector(interval=10.0, recheck=5.0, clock=lambda: CLOCK[0])


def _read(reader: DemandCollector, *engines: dict[str, Any], after: float = 5.0) -> DemandSample:
    """A collector round `after` seconds on, then a pass's read of the pods."""
    reader.read((NS, NAME), routers=[ROUTER], engines=list(engines), now=CLOCK[0])
    CLOCK[0] += after
    reader.collect(due_only=False)
    return reader.read((NS, NAME), routers=[ROUTER], engines=list(engines), now=CLOCK[0])


def test_the_collector_counts_misses_per_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    net, reader = Network(monkeypatch), collector()
    assert _read(reader, E1, E2).unreachable == ()
    net.silent = {"10.0.0.1"}
    first = _read(reader, E1, E2)
    assert (first.unreachable, first.read) == ((), "partial")  # one miss: a slow scrape?
    assert _read(reader, E1, E2, after=0.5).unreachable == ()  # rounds 0.5 s apart: one miss
    assert _read(reader, E1, E2).unreachable == ("e-1",)
    assert _read(reader, E1, E2).unreachable == ("e-1",)
    net.silent = set()
    assert _read(reader, E1, E2).unreachable == ()  # it answered: reachable again
    net.silent = {"10.0.0.1"}
    assert _read(reader, E1, E2).unreachable == ()  # the count restarted
    assert reader.read(("ns", "other"), routers=[ROUTER], engines=[E1], now=0.0).unreachable == ()
    reader.forget((NS, NAME))
    assert _read(reader, E1, E2).unreachable == ()  # forgotten with the endpoint
    assert _read(reader, E1, E2).unreachable == ()  # and never answered since: not counted
    assert reader.suspects() == []


def test_a_pod_that_never_answered_is_not_judged_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    net, reader = Network(monkeypatch), collector()
    net.silent = {"10.0.0.1"}
    for _ in range(4):
        sample = _read(reader, E1, E2)
        assert (sample.unreachable, sample.read) == ((), "partial")


def test_a_pod_the_routers_dropped_is_unreachable_on_its_first_miss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net, reader = Network(monkeypatch), collector()
    net.worker_urls = ("http://10.0.0.2:8000",)
    assert _read(reader, E1, E2).unreachable == ()  # dropped but answering
    net.silent = {"10.0.0.1"}
    assert _read(reader, E1, E2).unreachable == ("e-1",)


# --- the wiring: reconcile passes against the fake API --------------------------------------


def _kube(*pods: dict[str, Any], replicas: int = 1) -> FakeKube:
    kube = FakeKube()
    kube.add(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
            "spec": {
                "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
                "auth": {"disabled": True},
            },
        }
    )
    for pod in (ROUTER, *pods):
        kube.add(pod)
    return kube


def _clock() -> float:
    CLOCK[0] += 5.0  # passes 5 s apart (the quick re-read's period)
    return CLOCK[0]


def _pass(kube: FakeKube, config: OperatorConfig, demand: Any) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    reconcile(kube, config, body, demand=demand, refusals=RefusalBook(), clock=_clock)
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return dict(body["status"])


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_the_only_replica_unreachable_is_not_ready(operator_config: OperatorConfig) -> None:
    kube = _kube(E1)
    status = _pass(kube, operator_config, ScriptedDemand(DemandSample(router_ok=True)))
    assert status["readyReplicas"] == 1
    assert _conditions(status)["Ready"][:2] == ("True", "ReplicasReady")
    lost = ScriptedDemand(DemandSample(router_ok=True, ready_replicas=1, unreachable=("e-1",)))
    status = _pass(kube, operator_config, lost)
    assert status["readyReplicas"] == 0
    conditions = _conditions(status)
    assert conditions["Ready"][:2] == ("False", "ReplicasUnreachable")
    assert "e-1" in conditions["Ready"][2]
    assert conditions["Degraded"][:2] == ("True", "ReplicasUnreachable")
    assert "node may be lost" in conditions["Degraded"][2]
    assert "ReplicasUnreachable" in [e["reason"] for e in kube.events]
    status = _pass(kube, operator_config, ScriptedDemand(DemandSample(router_ok=True)))
    assert (status["readyReplicas"], _conditions(status)["Degraded"][1]) == (1, "AsExpected")


def test_one_of_two_unreachable_keeps_the_endpoint_ready(operator_config: OperatorConfig) -> None:
    kube = _kube(E1, E2, replicas=2)
    lost = ScriptedDemand(DemandSample(router_ok=True, ready_replicas=2, unreachable=("e-2",)))
    status = _pass(kube, operator_config, lost)
    assert status["readyReplicas"] == 1
    conditions = _conditions(status)
    assert conditions["Ready"][:2] == ("True", "ReplicasReady")
    assert conditions["Degraded"][:2] == ("True", "ReplicasUnreachable")
    assert "e-2" in conditions["Degraded"][2]
    assert "e-1" not in conditions["Degraded"][2]


def test_the_collector_reports_a_silent_replica_after_its_second_missed_round(
    operator_config: OperatorConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, reader = Network(monkeypatch), collector()
    kube = _kube(E1)
    assert _pass(kube, operator_config, reader)["readyReplicas"] == 1
    net.silent = {"10.0.0.1"}
    again = _pass(kube, operator_config, reader)  # no round yet: the pass reads no pod again
    assert (again["readyReplicas"], _conditions(again)["Ready"][0]) == (1, "True")
    reader.collect(due_only=False)
    first = _pass(kube, operator_config, reader)  # one missed round: a slow scrape?
    assert (first["readyReplicas"], _conditions(first)["Ready"][0]) == (1, "True")
    assert reader.suspects() == [(NS, NAME)]
    reader.collect(due_only=False)
    second = _pass(kube, operator_config, reader)
    assert second["readyReplicas"] == 0
    assert _conditions(second)["Ready"][:2] == ("False", "ReplicasUnreachable")


# --- what Kubernetes itself shows of a lost node (the pod's own conditions and reason) ------


def _status_pod(name: str = "e-1", *, deleting: bool = False, **status: Any) -> dict[str, Any]:
    pod = _pod(name, "inference", "10.0.0.1")
    pod["status"] = {"phase": "Running", **status}
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return pod


def _conds(**types: str | tuple[str, str]) -> list[dict[str, str]]:
    out = []
    for type_, value in types.items():
        state, reason = value if isinstance(value, tuple) else (value, "")
        out.append({"type": type_, "status": state, **({"reason": reason} if reason else {})})
    return out


@pytest.mark.parametrize(
    ("pod", "lost"),
    [
        (_status_pod(conditions=_conds(Ready="True", ContainersReady="True")), False),
        (_status_pod(conditions=_conds(Ready="False", ContainersReady="False")), False),  # starts
        # the node lifecycle controller set Ready False; no kubelet changed ContainersReady
        (_status_pod(conditions=_conds(Ready="False", ContainersReady="True")), True),
        (_status_pod(reason="NodeLost", conditions=_conds(Ready="False")), True),
        (
            _status_pod(
                conditions=_conds(
                    Ready="False", DisruptionTarget=("True", "DeletionByTaintManager")
                )
            ),
            True,
        ),
        (_status_pod(conditions=_conds(DisruptionTarget=("True", "PreemptionByScheduler"))), False),
        (_status_pod(deleting=True, reason="NodeLost"), False),  # being deleted: gone already
        (_status_pod(phase="Pending", reason="NodeLost"), False),
    ],
)
def test_a_pod_kubernetes_shows_on_a_lost_node(pod: dict[str, Any], lost: bool) -> None:
    from magistral_operator.status.observe import node_lost

    assert node_lost(pod) is lost


def test_observe_counts_unreachable_and_lost_pods_apart_from_ready() -> None:
    from magistral_operator.status.observe import observe_pool

    ready = _conds(Ready="True", ContainersReady="True")
    pods = [
        _status_pod("e-1", conditions=ready),
        _status_pod("e-2", conditions=ready),
        _status_pod("e-3", conditions=_conds(Ready="False", ContainersReady="True")),
        _status_pod("e-4", conditions=_conds(Ready="False", ContainersReady="False")),
    ]
    seen = observe_pool(
        pool="reserved-h100", deployment=None, pods=pods, revision="r", unreachable=["e-2", "e-4"]
    )
    assert (seen.ready_replicas, seen.pods, seen.unreachable) == (1, 4, ("e-2", "e-3"))
    plain = observe_pool(pool="reserved-h100", deployment=None, pods=pods, revision="r")
    assert (plain.ready_replicas, plain.unreachable) == (2, ("e-3",))


def test_a_pod_marked_not_ready_by_the_node_controller_stays_reported(
    operator_config: OperatorConfig,
) -> None:
    lost = _pod("e-1", "inference", "10.0.0.1")
    lost["status"]["conditions"] = _conds(Ready="False", ContainersReady="True")
    kube = _kube(lost)
    status = _pass(kube, operator_config, ScriptedDemand(DemandSample(router_ok=True)))
    conditions = _conditions(status)
    assert status["readyReplicas"] == 0
    assert conditions["Ready"][:2] == ("False", "ReplicasUnreachable")
    assert conditions["Degraded"][:2] == ("True", "ReplicasUnreachable")
