"""The demand collector (kube/collector.py): the routers and engines are read in the background,
and a pass reads the collector's memory instead of the pods.

What is shown: a pass reads over HTTP only the pods the collector has never read; a round
reads every target once (one GET per engine page, the canary's counters included); the
collector queues an endpoint's pass when what it read would change the pass's decisions, and
not when nothing changed; a suspect is read again after `recheck` rather than `interval`; and
the operator's startup wires it so that a change read by the collector runs the endpoint's pass.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from magistral_operator.handlers import operator as op
from magistral_operator.handlers.metrics import DEMAND_READS
from magistral_operator.handlers.reconcile import Outcome
from magistral_operator.kube import collector as collector_module
from magistral_operator.kube.collector import (
    DemandCollector,
    EngineScrape,
    RoundReport,
    Signal,
    signal_of,
)
from magistral_operator.kube.demand import FrontReading
from magistral_operator.kube.metrics import EngineReading
from magistral_operator.rollout_analysis import Counters
from tests.unit.test_ha_wiring import Leadership, RecordingKube, memo

NS, NAME = "ns", "ep"
KEY = (NS, NAME)


def _pod(name: str, component: str, ip: str) -> dict[str, Any]:
    port = {"name": "http" if component == "inference" else "demand", "containerPort": 8000}
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {"containers": [{"name": "c", "ports": [port]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


ROUTER = _pod("r-1", "router", "10.1.0.1")
E1, E2 = _pod("e-1", "inference", "10.0.0.1"), _pod("e-2", "inference", "10.0.0.2")


class Pods:
    """What the pods answer, and every GET made (by IP; with whether counters were parsed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queued = 0
        self.waiting = 0.0
        self.silent: set[str] = set()
        self.gets: list[tuple[str, bool]] = []
        self.lock = threading.Lock()
        monkeypatch.setattr(collector_module, "scrape_engine", self.scrape)
        monkeypatch.setattr(collector_module, "read_front", self.read_front)

    def scrape(self, ip: str, port: int, *, counters: bool, timeout: float) -> EngineScrape | None:
        with self.lock:
            self.gets.append((ip, counters))
        if ip in self.silent:
            return None
        found = Counters(finishes={"stop": 3.0}) if counters else None
        return EngineScrape(EngineReading(waiting=self.waiting, running=1.0), found)

    def read_front(self, ip: str, port: int, *, timeout: float) -> FrontReading | str:
        with self.lock:
            self.gets.append((ip, False))
        if ip in self.silent:
            return f"{ip}:{port}: refused"
        return FrontReading(
            held=0,
            queued=self.queued,
            in_flight=1,
            arrivals_total=10,
            start_time=1.0,
            workers=2,
            router_up=True,
            worker_urls=("http://10.0.0.1:8000", "http://10.0.0.2:8000"),
        )

    def ips(self) -> list[str]:
        return [ip for ip, _ in self.gets]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def read(c: DemandCollector, *engines: dict[str, Any]) -> Any:
    return c.read(KEY, routers=[ROUTER], engines=list(engines), now=0.0)


def test_a_pass_reads_over_http_only_the_pods_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    pods, c = Pods(monkeypatch), DemandCollector(clock=Clock())
    assert read(c, E1).read == "ok"
    assert sorted(pods.ips()) == ["10.0.0.1", "10.1.0.1"]  # the first sight of each pod
    pods.gets.clear()
    pods.silent = {"10.0.0.1"}
    assert read(c, E1).read == "ok"  # the latest reading; the silent pod holds no pass
    assert pods.gets == []
    assert read(c, E1, E2).read == "ok"
    assert pods.ips() == ["10.0.0.2"]  # only the new pod


def test_a_round_reads_every_target_and_the_next_pass_sees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods, c = Pods(monkeypatch), DemandCollector(clock=Clock())
    assert read(c, E1, E2).queued == 0
    pods.queued, pods.waiting = 4, 2.0
    assert read(c, E1, E2).queued == 0  # no round yet
    pods.gets.clear()
    pods.silent = {"10.0.0.2"}
    reports: list[RoundReport] = []
    c.on_round = reports.append
    c.collect(due_only=False)
    assert sorted(pods.ips()) == ["10.0.0.1", "10.0.0.2", "10.1.0.1"]  # each once
    assert [
        (r.endpoints, r.routers_answered, r.engines_answered, r.engines_silent) for r in reports
    ] == [(1, 1, 1, 1)]
    pods.silent = set()
    c.collect(due_only=False)
    pods.gets.clear()
    sample = read(c, E1, E2)
    assert (sample.queued, [r.waiting for r in sample.replicas]) == (4, [2, 2])
    assert pods.gets == []  # the pass read nothing


def test_a_round_queues_a_pass_only_when_what_it_read_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods, clock = Pods(monkeypatch), Clock()
    c = DemandCollector(clock=clock)
    queued: list[tuple[str, str]] = []
    c.on_change = queued.append
    read(c, E1)
    rounds = c.rounds
    assert c.collect(due_only=False) == []  # the same as the pass saw: no pass
    assert (c.rounds, queued) == (rounds + 1, [])  # (the round ran)
    pods.queued = 3
    assert c.collect(due_only=False) == [KEY]
    assert queued == [KEY]
    read(c, E1)  # the pass saw it
    assert c.collect(due_only=False) == []  # still queued, but the pass has seen that
    pods.queued = 5
    assert c.collect(due_only=False) == []  # more of the same: the next resync is soon enough
    pods.silent = {"10.0.0.1"}
    assert c.collect(due_only=False) == [KEY]  # an engine went silent: a partial read


def test_signal_names_what_a_pass_acts_on() -> None:
    engine = EngineScrape(EngineReading(waiting=0, running=0))
    front = FrontReading(
        held=0, queued=0, in_flight=0, arrivals_total=0, start_time=0, workers=1, router_up=True
    )
    assert signal_of([front], [engine], []) == Signal(True, "ok", False, (), None)
    assert signal_of(["refused"], [engine], []).read == "failed"
    assert signal_of([front, "refused"], [engine], []).read == "partial"
    assert signal_of([front], [None], []).read == "partial"
    assert signal_of([front], [EngineScrape(None)], []).read == "partial"
    held = FrontReading(
        held=2, queued=0, in_flight=0, arrivals_total=0, start_time=0, workers=1, router_up=True
    )
    assert signal_of([held], [engine], []).queued is True
    assert signal_of([front], [engine], ["e-2", "e-1"]).unreachable == ("e-1", "e-2")


def test_a_suspect_is_read_again_after_recheck_not_after_the_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods, clock = Pods(monkeypatch), Clock()
    c = DemandCollector(interval=10.0, recheck=3.0, clock=clock)
    read(c, E1)
    c.collect(due_only=False)
    clock.now += 3.5
    pods.gets.clear()
    c.collect()
    assert pods.gets == []  # nothing due before the period
    pods.silent = {"10.0.0.1"}
    clock.now += 7.0
    c.collect()  # the period: e-1 misses once
    assert c.suspects() == [KEY]
    assert read(c, E1).unreachable == ()
    clock.now += 3.5
    pods.gets.clear()
    c.collect()  # due after `recheck`
    assert "10.0.0.1" in pods.ips()
    assert c.suspects() == []
    assert read(c, E1).unreachable == ("e-1",)


def test_one_get_per_engine_page_during_a_canary_window(monkeypatch: pytest.MonkeyPatch) -> None:
    pods, clock = Pods(monkeypatch), Clock()
    c = DemandCollector(clock=clock)
    read(c, E1, E2)
    assert all(not counters for _, counters in pods.gets)  # no window: gauges only

    def window() -> Any:
        return c.read_window(
            KEY, window="rev/e-2", canary=[E2], baseline=[E1], routers=[ROUTER], now=0.0
        )

    first = window()
    assert not isinstance(first, str)
    pods.gets.clear()
    clock.now += 10
    c.collect(due_only=False)
    assert sorted(pods.gets) == [("10.0.0.1", True), ("10.0.0.2", True), ("10.1.0.1", False)]
    pods.gets.clear()
    later = window()
    assert pods.gets == []  # read from the round's pages
    assert not isinstance(later, str)
    assert later.seconds == 10.0  # the window's clock is the reading's
    pods.silent = {"10.0.0.2"}
    c.collect(due_only=False)
    assert window() == "the canary replica's /metrics did not answer"


def test_a_forgotten_endpoint_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    pods, c = Pods(monkeypatch), DemandCollector(clock=Clock())
    read(c, E1)
    c.forget(KEY)
    pods.gets.clear()
    assert c.collect(due_only=False) == []
    assert pods.gets == []


# --- the wiring: the operator starts the collector, and its changes run passes -------------


def test_the_operator_runs_a_pass_when_the_collector_reads_a_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pods = Pods(monkeypatch)
    collector = DemandCollector(interval=0.05, recheck=0.05)
    monkeypatch.setattr(op, "_demand", collector)
    passes: list[str] = []

    def recorded(kube: Any, config: Any, body: dict[str, Any], **_: Any) -> Outcome:
        passes.append(body["metadata"]["name"])
        return Outcome()

    monkeypatch.setattr(op, "reconcile", recorded)
    monkeypatch.setattr(op, "RESYNC_SECONDS", 3600.0)  # no periodic pass in this test
    lead = Leadership(1)
    m = memo(RecordingKube([NAME]), lead)
    answered = DEMAND_READS.labels(component="engine", result="answered")
    before = answered._value.get()
    op.start_resync(memo=m)
    try:
        read(collector, E1)  # a pass handed the pods over and saw them
        rounds = collector.rounds
        deadline = time.monotonic() + 5
        while collector.rounds < rounds + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert collector.rounds >= rounds + 3  # the collector ran, on its own
        assert passes == []  # and read nothing new: no pass
        assert answered._value.get() > before  # its rounds are in the operator's metrics
        pods.queued = 2
        while not passes and time.monotonic() < deadline:
            time.sleep(0.02)
        assert passes
        assert set(passes) == {NAME}
        lead.current = None  # a standby reads nothing
        time.sleep(0.1)
        stopped = collector.rounds
        time.sleep(0.2)
        assert collector.rounds == stopped
    finally:
        op.stop_resync(memo=m)
