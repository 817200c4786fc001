"""The coalescing pass queue (handlers/workqueue.py) and its wiring: a burst of child events is
one pass, a key never runs twice at once, a key added during its pass runs once more after it,
and the operator's cache events reach the queue (handlers/operator.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import kopf
import pytest
from prometheus_client import REGISTRY

from magistral_operator.handlers import operator as op
from magistral_operator.handlers.workqueue import PassQueue
from tests.unit.test_ha_wiring import Leadership, RecordingKube, deployment_of, endpoint, memo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def queue() -> tuple[PassQueue, Clock]:
    clock = Clock()
    return PassQueue(lambda key: None, clock=clock), clock


def test_a_burst_of_adds_is_one_pass_due_at_the_first_due_time() -> None:
    q, clock = queue()
    for _ in range(10):
        q.add("a", delay=0.5)
        clock.now += 0.01
    assert q.pending() == 1
    assert q.take(block=False) is None  # not due yet
    clock.now = 100.5
    assert q.take(block=False) == "a"
    assert q.take(block=False) is None


def test_an_add_without_delay_overtakes_a_delayed_one() -> None:
    q, _clock = queue()
    q.add("a", delay=5.0)
    q.add("a")
    assert q.take(block=False) == "a"


def test_keys_come_in_due_order() -> None:
    q, clock = queue()
    q.add("late", delay=2.0)
    q.add("early", delay=1.0)
    clock.now += 3
    assert [q.take(block=False), q.take(block=False)] == ["early", "late"]


def test_a_background_key_waits_for_every_due_key_however_early() -> None:
    q, clock = queue()
    q.add("resync-1", background=True)
    q.add("resync-2", background=True)
    clock.now += 5
    q.add("event", delay=0.5)
    assert q.take(block=False) == "resync-1"  # nothing else due yet: background keys run
    clock.now += 1
    assert q.take(block=False) == "event"  # due later than resync-2, taken first
    assert q.take(block=False) == "resync-2"


def test_an_event_promotes_a_background_key_and_a_resync_never_demotes_one() -> None:
    q, clock = queue()
    q.add("a", background=True)
    q.add("b", background=True)
    q.add("b")  # a child's event for b
    q.add("c")
    q.add("c", background=True)  # the resync meets c already queued by an event
    clock.now += 1
    assert [q.take(block=False) for _ in range(3)] == ["b", "c", "a"]


def test_a_background_add_during_a_pass_stays_background_an_event_does_not() -> None:
    q, clock = queue()
    q.add("a")
    q.add("b")
    assert q.take(block=False) == "a"
    assert q.take(block=False) == "b"
    q.add("a", background=True)  # the resync, while a's pass runs
    q.add("b", background=True)
    q.add("b")  # and an event for b
    q.add("c", delay=0.1)
    q.done("a")
    q.done("b")
    clock.now += 1
    assert [q.take(block=False) for _ in range(3)] == ["b", "c", "a"]


def test_a_key_added_during_its_pass_runs_once_more_after_it_never_twice_at_once() -> None:
    q, _clock = queue()
    q.add("a")
    assert q.take(block=False) == "a"
    q.add("a")
    q.add("a")
    assert q.take(block=False) is None  # running: not handed to a second worker
    q.done("a")
    assert q.take(block=False) == "a"
    q.done("a")
    assert q.take(block=False) is None


def test_workers_run_every_key_and_stop() -> None:
    ran: list[str] = []
    running: set[str] = set()
    overlap: list[str] = []
    lock = threading.Lock()

    def run(key: Any) -> None:
        with lock:
            if key in running:
                overlap.append(key)
            running.add(key)
        time.sleep(0.01)
        with lock:
            running.discard(key)
            ran.append(key)

    q = PassQueue(run, workers=3)
    threads = q.start()
    for i in range(20):
        q.add(f"k{i % 5}")
    deadline = time.monotonic() + 10
    while (q.pending() or len(ran) < 5) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.stop()
    for thread in threads:
        thread.join(timeout=5)
    assert set(ran) == {f"k{i}" for i in range(5)}
    assert overlap == []
    assert not any(t.is_alive() for t in threads)


# --- wiring ----------------------------------------------------------------------------------


def queued_memo(names: list[str], term: int | None = 1) -> tuple[kopf.Memo, PassQueue]:
    m = memo(RecordingKube(names), Leadership(term))
    q = PassQueue(lambda key: op.run_key(m, key))
    m.queue = q
    return m, q


def drain(q: PassQueue) -> None:
    while (key := q.take(block=False)) is not None:
        q._run(key)
        q.done(key)


def test_child_events_queue_their_endpoint_s_pass_coalesced(
    reconciled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(op, "COALESCE_SECONDS", 0.0)
    m, q = queued_memo(["ep", "other"])
    for kind in ("Pod", "Deployment", "Pod", "ReplicaSet"):
        op.child_changed(m, kind, "MODIFIED", deployment_of("ep"))
    assert q.pending() == 1
    assert reconciled == []  # queued, not run in the event's thread
    drain(q)
    assert reconciled == ["ep"]


def test_endpoint_events_and_a_standby_queue_nothing(reconciled: list[str]) -> None:
    m, q = queued_memo(["ep"])
    op.child_changed(m, "MagistralEndpoint", "MODIFIED", deployment_of("ep"))  # our status write
    unlabelled = kopf.Body({"metadata": {"namespace": "ns", "name": "x", "labels": {}}})
    op.child_changed(m, "Pod", "MODIFIED", unlabelled)
    assert q.pending() == 0
    standby, sq = queued_memo(["ep"], term=None)
    op.child_changed(standby, "Pod", "MODIFIED", deployment_of("ep"))
    assert sq.pending() == 0


def test_a_deleted_endpoint_s_records_are_dropped(reconciled: list[str]) -> None:
    m, q = queued_memo(["ep"])
    key = ("ns", "ep")
    op._refusals._held[key] = {}
    op._passed_in_term[key] = 1
    op.dispatch(m, key)
    drain(q)
    assert reconciled == ["ep"]
    assert passes("ns", "ep") >= 1.0  # the pass counter tests and dashboards read
    op.child_changed(m, "MagistralEndpoint", "DELETED", endpoint("ep"))
    assert key not in op._refusals._held
    assert key not in op._passed_in_term
    assert passes("ns", "ep") is None  # its series went with it
    assert q.pending() == 0


def passes(namespace: str, name: str) -> float | None:
    value: float | None = REGISTRY.get_sample_value(
        "magistral_operator_endpoint_passes_total", {"namespace": namespace, "endpoint": name}
    )
    return value


def test_the_resync_queues_every_endpoint_and_a_deleted_one_is_skipped(
    reconciled: list[str],
) -> None:
    m, q = queued_memo(["a", "b", "gone"])
    op.full_pass(m, 1)
    assert q.pending() == 3
    del m.kube.endpoints["gone"]
    drain(q)
    assert sorted(reconciled) == ["a", "b"]


def test_the_resync_s_passes_wait_behind_a_child_event_s(
    reconciled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full pass queued ahead of a child's event does not hold the event's pass: the bench
    saw a new pod's Ready announced 270 s late behind 500 resync passes."""
    monkeypatch.setattr(op, "COALESCE_SECONDS", 0.0)
    m, q = queued_memo([f"ep-{i}" for i in range(5)])
    op.full_pass(m, 1)
    op.child_changed(m, "Pod", "MODIFIED", deployment_of("ep-3"))
    drain(q)
    assert reconciled[0] == "ep-3"
    assert sorted(reconciled) == [f"ep-{i}" for i in range(5)]


class FakeCache:
    def __init__(self) -> None:
        self.on_change: Any = None
        self.started = False
        self.closed = False

    def start(self) -> None:
        self.started = True

    def wait_synced(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


def test_startup_wires_the_cache_to_the_queue_and_cleanup_stops_both(
    reconciled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(op, "COALESCE_SECONDS", 0.0)
    m = memo(RecordingKube(["ep"]), Leadership(1))
    cache = FakeCache()
    m.cache = cache
    op.start_resync(memo=m)
    try:
        assert cache.started
        cache.on_change("Pod", "MODIFIED", deployment_of("ep"))
        deadline = time.monotonic() + 5
        while not reconciled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reconciled == ["ep"]  # the queue's workers ran it
    finally:
        op.stop_resync(memo=m)
    assert cache.closed
