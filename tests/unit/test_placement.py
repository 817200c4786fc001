"""Placement across GPU pools (operator/magistral_operator/placement.py): tables and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.status import PlacementStatus, PoolPlacement
from magistral_operator.placement import (
    MAX_BACKOFF_SECONDS,
    Placement,
    PlacementPool,
    PoolLoad,
    place,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
POOLS = (
    PlacementPool(name="reserved", overflow_after_seconds=60),
    PlacementPool(name="ondemand", overflow_after_seconds=60),
    PlacementPool(name="spot", overflow_after_seconds=60),
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def state(*, probe: tuple[str, str] | None = None, **replicas: int) -> PlacementStatus:
    return PlacementStatus(
        pools=[PoolPlacement(name=p.name, replicas=replicas.get(p.name, 0)) for p in POOLS],
        probe_pool=probe[0] if probe else None,
        probe_from=probe[1] if probe else None,
        probe_since="2026-01-01T11:59:00Z" if probe else None,
    )


def ready(n: int) -> PoolLoad:
    return PoolLoad(pods=n, ready=n)


def run(
    desired: int, observed: dict[str, PoolLoad], prev: PlacementStatus | None, now: datetime = NOW
) -> Placement:
    return place(desired=desired, pools=POOLS, observed=observed, state=prev, now=now)


def test_starts_everything_on_the_most_preferred_pool() -> None:
    out = run(3, {}, None)
    assert out.replicas == {"reserved": 3, "ondemand": 0, "spot": 0}
    assert out.state.probe_pool is None


@pytest.mark.parametrize(
    ("pending", "moved"),
    [
        ((ago(30),), 0),  # within the delay: wait
        ((ago(61),), 1),
        ((ago(61), ago(5)), 2),  # the pool is full: all its pending replicas go
    ],
)
def test_pending_past_the_delay_overflows_to_the_next_pool(
    pending: tuple[datetime, ...], moved: int
) -> None:
    load = {"reserved": PoolLoad(pods=3, ready=3 - len(pending), pending_since=pending)}
    out = run(3, load, state(reserved=3))
    assert out.replicas == {"reserved": 3 - moved, "ondemand": moved, "spot": 0}
    assert len(out.overflowed) == (1 if moved else 0)
    if moved:
        assert "reserved" in out.overflowed[0].message
        assert "ondemand" in out.overflowed[0].message
        assert out.state.pools[0].retry_after is not None


def test_elastic_pool_waits_its_own_longer_delay() -> None:
    pools = (PlacementPool(name="reserved", overflow_after_seconds=600), *POOLS[1:])
    load = {"reserved": PoolLoad(pods=1, pending_since=(ago(120),))}
    out = place(desired=1, pools=pools, observed=load, state=state(reserved=1), now=NOW)
    assert out.replicas["reserved"] == 1


def test_overflow_cascades_and_stops_at_the_last_pool() -> None:
    load = {
        "ondemand": PoolLoad(pods=2, pending_since=(ago(90), ago(90))),
        "spot": PoolLoad(pods=1, pending_since=(ago(90),)),
    }
    out = run(3, load, state(ondemand=2, spot=1))
    assert out.replicas == {"reserved": 0, "ondemand": 0, "spot": 3}


def test_spot_loss_takes_the_overflow_path() -> None:
    pools = (POOLS[2], POOLS[1])  # an endpoint that prefers spot
    load = {"spot": PoolLoad(pods=2, ready=0, pending_since=(ago(70), ago(70)))}
    prev = PlacementStatus(pools=[PoolPlacement(name="spot", replicas=2)])
    out = place(desired=2, pools=pools, observed=load, state=prev, now=NOW)
    assert out.replicas == {"spot": 0, "ondemand": 2}


def test_settled_overflow_probes_back_with_a_surge_replica() -> None:
    prev = state(reserved=1, ondemand=1)
    out = run(2, {"reserved": ready(1), "ondemand": ready(1)}, prev)
    assert out.replicas == {"reserved": 2, "ondemand": 1, "spot": 0}
    assert (out.state.probe_pool, out.state.probe_from) == ("reserved", "ondemand")


def test_ready_probe_consolidates_one_replica() -> None:
    prev = state(reserved=2, ondemand=1, probe=("reserved", "ondemand"))
    out = run(2, {"reserved": ready(2), "ondemand": ready(1)}, prev)
    assert out.replicas == {"reserved": 2, "ondemand": 0, "spot": 0}
    assert out.state.probe_pool is None
    assert len(out.consolidated) == 1


def test_probe_not_ready_yet_keeps_the_overflow_replica() -> None:
    prev = state(reserved=2, ondemand=1, probe=("reserved", "ondemand"))
    load = {"reserved": PoolLoad(pods=2, ready=1), "ondemand": ready(1)}
    out = run(2, load, prev)
    assert out.replicas == {"reserved": 2, "ondemand": 1, "spot": 0}
    assert out.state == prev


def test_unschedulable_probe_is_given_up_with_doubling_backoff() -> None:
    prev = state(reserved=2, ondemand=1, probe=("reserved", "ondemand"))
    load = {"reserved": PoolLoad(pods=2, ready=1, pending_since=(ago(61),)), "ondemand": ready(1)}
    out = run(2, load, prev)
    assert out.replicas == {"reserved": 1, "ondemand": 1, "spot": 0}
    first = out.state.pools[0].backoff_seconds
    assert first == 60
    # no probe while backing off, even on a settled endpoint
    settled = {"reserved": ready(1), "ondemand": ready(1)}
    assert run(2, settled, out.state, NOW + timedelta(seconds=30)).state == out.state
    # after it, a new probe; its failure doubles the wait, capped
    later = NOW + timedelta(seconds=61)
    probing = run(2, settled, out.state, later)
    assert probing.state.probe_pool == "reserved"
    failed = run(
        2,
        {"reserved": PoolLoad(pods=2, ready=1, pending_since=(ago(0),)), "ondemand": ready(1)},
        probing.state,
        later + timedelta(seconds=61),
    )
    assert failed.state.pools[0].backoff_seconds == 120
    big = PlacementStatus(
        pools=[
            PoolPlacement(name="reserved", replicas=2, backoff_seconds=MAX_BACKOFF_SECONDS),
            PoolPlacement(name="ondemand", replicas=1),
        ],
        probe_pool="reserved",
        probe_from="ondemand",
    )
    capped = run(2, load, big)
    assert capped.state.pools[0].backoff_seconds == MAX_BACKOFF_SECONDS


def test_scale_up_goes_to_the_preferred_pool_not_blocked() -> None:
    prev = state(reserved=1, ondemand=1).model_copy(
        update={
            "pools": [
                PoolPlacement(
                    name="reserved",
                    replicas=1,
                    backoff_seconds=60,
                    retry_after="2026-01-01T12:01:00Z",
                ),
                PoolPlacement(name="ondemand", replicas=1),
                PoolPlacement(name="spot", replicas=0),
            ]
        }
    )
    out = run(3, {"reserved": ready(1), "ondemand": ready(1)}, prev)
    assert out.replicas == {"reserved": 1, "ondemand": 2, "spot": 0}


def test_scale_down_removes_pending_then_least_preferred() -> None:
    load = {
        "reserved": PoolLoad(pods=2, ready=1, pending_since=(ago(5),)),
        "ondemand": ready(1),
        "spot": ready(1),
    }
    out = run(2, load, state(reserved=2, ondemand=1, spot=1))
    assert out.replicas == {"reserved": 1, "ondemand": 1, "spot": 0}


def test_a_count_change_cancels_the_probe() -> None:
    prev = state(reserved=2, ondemand=1, probe=("reserved", "ondemand"))
    out = run(3, {"reserved": PoolLoad(pods=2, ready=1), "ondemand": ready(1)}, prev)
    assert out.state.probe_pool is None
    assert sum(out.replicas.values()) == 3


def test_unusable_pools_lose_their_replicas() -> None:
    prev = PlacementStatus(pools=[PoolPlacement(name="gone", replicas=2)])
    out = run(2, {}, prev)
    assert out.replicas == {"reserved": 2, "ondemand": 0, "spot": 0}


# -- properties ---------------------------------------------------------------------------

names = [p.name for p in POOLS]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, dict[str, PoolLoad], PlacementStatus | None]:
    desired = draw(st.integers(min_value=0, max_value=6))
    loads = {}
    for n in names:
        pods = draw(st.integers(min_value=0, max_value=6))
        pending = draw(st.integers(min_value=0, max_value=pods))
        ages = draw(
            st.lists(st.integers(min_value=0, max_value=4000), min_size=pending, max_size=pending)
        )
        loads[n] = PoolLoad(
            pods=pods,
            ready=draw(st.integers(min_value=0, max_value=pods - pending)),
            pending_since=tuple(ago(a) for a in ages),
            message="0/2 nodes are available",
        )
    if draw(st.booleans()):
        return desired, loads, None
    pools = [
        PoolPlacement(
            name=n,
            replicas=draw(st.integers(min_value=0, max_value=6)),
            backoff_seconds=draw(st.none() | st.integers(min_value=10, max_value=1800)),
            retry_after=draw(
                st.none() | st.sampled_from(["2026-01-01T11:00:00Z", "2026-01-01T13:00:00Z"])
            ),
        )
        for n in draw(st.lists(st.sampled_from([*names, "gone"]), unique=True))
    ]
    probe = draw(st.none() | st.tuples(st.sampled_from(names), st.sampled_from(names)))
    return (
        desired,
        loads,
        PlacementStatus(
            pools=pools,
            probe_pool=probe[0] if probe else None,
            probe_from=probe[1] if probe else None,
        ),
    )


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_properties(scenario: tuple[int, dict[str, PoolLoad], PlacementStatus | None]) -> None:
    desired, loads, prev = scenario

    def check(out: Placement) -> None:
        total = sum(out.replicas.values())
        # only usable pools, never negative
        assert set(out.replicas) == set(names)
        assert all(v >= 0 for v in out.replicas.values())
        # N, or N+1 while one probe runs
        assert total == desired + (1 if out.state.probe_pool else 0)
        if out.state.probe_pool:
            assert out.state.probe_pool in names
            assert out.state.probe_from in names
            assert names.index(out.state.probe_pool) < names.index(out.state.probe_from or "")
        assert out.state.assigned() == out.replicas

    # Stable: passes over unchanged observations settle within a few passes and then change
    # nothing. (A generated state may contradict the observations, e.g. a probe whose pool
    # also holds a Pending replica; one pass resolves the probe, the next the Pending one.)
    out = run(desired, loads, prev)
    check(out)
    for _ in range(3):
        again = run(desired, loads, out.state)
        check(again)
        if again.state == out.state:
            break
        out = again
    assert again.replicas == out.replicas
    assert again.state == out.state
    assert not again.overflowed
    assert not again.consolidated
