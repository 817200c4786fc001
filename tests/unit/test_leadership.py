"""Leader election on a Lease: the pure decisions (table) and the elector against a fake API."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from magistral_operator.kube.client import Kube, KubeError
from magistral_operator.kube.lease import LeaseElector
from magistral_operator.leadership import (
    Decision,
    LeaseRecord,
    LeaseTiming,
    Observation,
    decide,
    lease_spec,
    observe,
    release_spec,
    still_leading,
)

T = LeaseTiming()  # client-go's 15 s / 10 s / 2 s


def record(holder: str | None, renew: str = "t0", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        lease_duration_seconds=15,
        renew_time=renew,
        acquire_time="a0",
        transitions=transitions,
    )


# (case, identity, observation (record, observed_at) or None, now, decision)
DECISIONS = [
    ("no Lease: create it", "a", None, 0.0, Decision.CREATE),
    ("our own record: renew", "a", (record("a"), 0.0), 100.0, Decision.RENEW),
    ("released (no holder): take it", "b", (record(None), 0.0), 0.0, Decision.ACQUIRE),
    ("another's, just seen: wait", "b", (record("a"), 10.0), 10.0, Decision.WAIT),
    ("another's, unchanged 14.9 s: wait", "b", (record("a"), 10.0), 24.9, Decision.WAIT),
    ("another's, unchanged 15 s: take it", "b", (record("a"), 10.0), 25.0, Decision.ACQUIRE),
    ("another's, unchanged long: take it", "b", (record("a"), 10.0), 1000.0, Decision.ACQUIRE),
]


@pytest.mark.parametrize(
    ("identity", "seen", "now", "expected"),
    [c[1:] for c in DECISIONS],
    ids=[c[0] for c in DECISIONS],
)
def test_decide(
    identity: str, seen: tuple[LeaseRecord, float] | None, now: float, expected: Decision
) -> None:
    observation = Observation(*seen) if seen is not None else None
    assert decide(identity, observation, now, T) is expected


def test_the_record_s_own_duration_counts() -> None:
    short = LeaseRecord("a", 3, "t0", "a0", 0)
    assert decide("b", Observation(short, 0.0), 2.9, T) is Decision.WAIT
    assert decide("b", Observation(short, 0.0), 3.0, T) is Decision.ACQUIRE


def test_expiry_is_measured_from_the_last_change_the_reader_saw() -> None:
    """A renewing leader's record changes; only an unchanged record ages (no clock comparison)."""
    first = observe(None, record("a", "t0"), 0.0)
    same = observe(first, record("a", "t0"), 14.0)
    assert same.observed_at == 0.0
    renewed = observe(same, record("a", "t1"), 14.0)
    assert renewed.observed_at == 14.0
    assert decide("b", renewed, 20.0, T) is Decision.WAIT
    # A different resourceVersion alone (someone touched metadata) is no renewal.
    touched = observe(renewed, LeaseRecord("a", 15, "t1", "a0", 0, resource_version="9"), 20.0)
    assert touched.observed_at == 14.0


def test_fencing_stops_the_leader_before_a_standby_may_acquire() -> None:
    renewed_at = 100.0
    assert still_leading(renewed_at, 109.99, T)
    assert not still_leading(renewed_at, 110.0, T)
    assert not still_leading(None, 0.0, T)
    # The standby saw that renewal no earlier than it started: it may take over at 115 at the
    # soonest, 5 s (the fencing margin) after the leader stopped.
    seen = Observation(record("a"), renewed_at)
    assert decide("b", seen, renewed_at + T.renew_deadline, T) is Decision.WAIT
    assert decide("b", seen, renewed_at + T.lease_duration, T) is Decision.ACQUIRE
    assert T.fencing_margin == 5.0
    assert T.takeover_bound == 19.0


@pytest.mark.parametrize(("ld", "rd", "rp"), [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)])
def test_timing_must_be_ordered(ld: float, rd: float, rp: float) -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaseTiming(ld, rd, rp)


def test_lease_spec_counts_transitions_and_keeps_the_acquire_time_on_renewal() -> None:
    current = record("a", transitions=3)
    renew = lease_spec("a", Decision.RENEW, current, "now", T)
    assert renew == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "a0",
        "renewTime": "now",
        "leaseTransitions": 3,
    }
    take = lease_spec("b", Decision.ACQUIRE, current, "now", T)
    assert take["holderIdentity"] == "b"
    assert take["acquireTime"] == "now"
    assert take["leaseTransitions"] == 4
    create = lease_spec("a", Decision.CREATE, None, "now", T)
    assert create["leaseTransitions"] == 0
    with pytest.raises(ValueError, match="waiting"):
        lease_spec("b", Decision.WAIT, current, "now", T)
    released = release_spec(current, "now")
    assert released["holderIdentity"] is None
    assert released["leaseTransitions"] == 3


# -- the elector against an in-memory Lease API -----------------------------------------------


class LeaseApi(Kube):
    """One Lease with resourceVersion conflicts, as the API server answers them."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.stale: dict[str, Any] | None = None  # served to GETs instead of the real Lease
        self.writes: list[tuple[str, str | None]] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if self.down:
            raise OSError("connection refused")
        if method == "GET":
            if self.stale is not None:
                return copy.deepcopy(self.stale)
            if self.lease is None:
                raise KubeError(status=404, method=method, path=path, body="{}")
            return copy.deepcopy(self.lease)
        if method == "POST" and self.lease is not None:
            raise KubeError(status=409, method=method, path=path, body="{}")
        if method == "PUT":
            assert self.lease is not None
            if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
                raise KubeError(status=409, method=method, path=path, body='{"message":"conflict"}')
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append((method, body["spec"]["holderIdentity"]))
        return copy.deepcopy(self.lease)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: LeaseApi, clock: Clock, identity: str) -> LeaseElector:
    return LeaseElector(
        api,
        namespace="ops",
        name="magistral-operator",
        identity=identity,
        timing=T,
        clock=clock,
        wall=lambda: datetime.fromtimestamp(clock.now, UTC),
    )


def test_one_leader_takeover_after_expiry_and_fencing() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert a.try_once() is Decision.CREATE
    assert a.term() == 1
    assert b.try_once() is Decision.WAIT
    assert b.term() is None
    # a keeps renewing every retry period; b never takes over.
    for _ in range(20):
        clock.now += T.retry_period
        assert a.try_once() is Decision.RENEW
        assert b.try_once() is Decision.WAIT
    assert a.term() == 1
    # a dies (stops renewing): it stops acting at its renew deadline, b takes over later.
    last_renewal = clock.now
    takeover = None
    while takeover is None:
        clock.now += T.retry_period
        if b.try_once() is Decision.ACQUIRE:
            takeover = clock.now
        assert not (a.is_leader() and b.is_leader()), "two leaders at once"
    assert a.term() is None
    assert last_renewal + T.lease_duration <= takeover <= last_renewal + T.takeover_bound
    assert b.term() == 1
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] == "b"
    assert api.lease["spec"]["leaseTransitions"] == 1
    # a comes back: the Lease is b's, a waits.
    assert a.try_once() is Decision.WAIT
    assert a.term() is None


def test_a_leader_that_cannot_renew_stops_at_the_renew_deadline() -> None:
    api, clock = LeaseApi(), Clock()
    a = elector(api, clock, "a")
    a.try_once()
    started = clock.now
    api.down = True
    while clock.now < started + T.renew_deadline - 0.5:
        clock.now += 0.5
        assert a.try_once() is None
        assert a.is_leader()
    clock.now = started + T.renew_deadline
    assert not a.is_leader()
    # Renewing again later (nobody took it) is a new term: the caller catches up with a full pass.
    api.down = False
    assert a.try_once() is Decision.RENEW
    assert a.term() == 2


def test_a_write_on_a_stale_read_conflicts_and_makes_no_leader() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    a.try_once()
    clock.now += T.retry_period
    a.try_once()
    # b reads an old copy of the Lease it believes expired long ago (a cache lagging behind).
    assert api.lease is not None
    api.stale = copy.deepcopy(api.lease)
    api.stale["metadata"]["resourceVersion"] = "1"
    b._observation = Observation(LeaseRecord.from_lease(api.stale), clock.now - 100)
    assert b.try_once() is None  # its update carries the old resourceVersion: 409
    assert b.term() is None
    assert a.term() == 1
    assert api.lease["spec"]["holderIdentity"] == "a"


def test_stop_releases_the_lease_so_a_standby_takes_over_at_its_next_try() -> None:
    api, clock = LeaseApi(), Clock()
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    a.try_once()
    b.try_once()
    a.stop()
    assert not a.is_leader()
    assert api.lease is not None
    assert api.lease["spec"]["holderIdentity"] is None
    clock.now += T.retry_period
    assert b.try_once() is Decision.ACQUIRE
    assert b.is_leader()
