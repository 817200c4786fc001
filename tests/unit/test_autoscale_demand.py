"""The demand autoscaling policy (autoscale/demand.py): tables, windows, reads, properties."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.config import CapacityTier
from magistral_operator.api.status import RecommendationEntry
from magistral_operator.autoscale.demand import (
    ArrivalTrend,
    DemandConfig,
    DemandSample,
    DemandState,
    ReplicaCapacity,
    ReplicaLoad,
    decide,
    fill_order,
    forecast_rate,
    needed,
    recommend,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# One replica: 10 sequences, 10,000 KV tokens, 1,000 prompt tokens/s. Requests of 100 prompt
# and 100 output tokens: 10 req/s is exactly one replica's prefill.
CAPACITY = ReplicaCapacity(max_sequences=10, kv_tokens=10_000, prefill_tokens_per_second=1000)


def config(**kw: float) -> DemandConfig:
    base: dict[str, float] = {
        "min_replicas": 1,
        "max_replicas": 20,
        "target_utilisation": 1.0,
        "headroom": 0.0,
        "target_fill": 1.0,
        "startup_seconds": 100.0,
        "max_growth": 1.0,
        "drain_seconds": 10.0,
        "typical_prompt_tokens": 100.0,
        "typical_output_tokens": 100.0,
        "scale_up_window_seconds": 0.0,
        "scale_down_window_seconds": 60.0,
    }
    merged = {**base, **kw}
    return DemandConfig(
        capacity=CAPACITY,
        min_replicas=int(merged.pop("min_replicas")),
        max_replicas=int(merged.pop("max_replicas")),
        **merged,
    )


def sample(
    rate: float = 0.0,
    *,
    queued: int = 0,
    in_flight: int = 0,
    loads: tuple[tuple[int, int, float], ...] = (),
    ready: int | None = None,
    starting: int = 0,
    ok: bool = True,
    trend: ArrivalTrend | None = None,
) -> DemandSample:
    replicas = [ReplicaLoad(in_flight=f, waiting=w, kv_usage=kv) for f, w, kv in loads]
    return DemandSample(
        router_ok=ok,
        queued=queued,
        in_flight=in_flight,
        arrival_rate=rate,
        trend=trend,
        replicas=replicas,
        ready_replicas=len(replicas) if ready is None else ready,
        starting_replicas=starting,
    )


@pytest.mark.parametrize(
    ("observed", "kw", "expected"),
    [
        (sample(), {}, 1),  # idle: minReplicas
        (sample(), {"min_replicas": 0}, 0),  # idle, scale to zero allowed
        (sample(10), {}, 1),  # exactly one replica's prefill
        (sample(25), {}, 3),  # 2.5 replicas of prefill
        (sample(25), {"target_utilisation": 0.5}, 5),
        (sample(4), {"headroom": 1.0}, 2),  # 0.4 + sqrt(0.4) = 1.03: a second replica
        (sample(40), {"headroom": 1.0}, 6),  # load 4 + sqrt(4)
        (sample(10, queued=200), {}, 3),  # 1 + a backlog of 20,000 tokens over 10 s
        (sample(10, queued=200, starting=1), {}, 2),  # starting replicas drain it: 1 + 0.18
        (sample(10, loads=((0, 100, 0.0),)), {}, 2),  # a backlog inside an engine counts too
        (sample(0, in_flight=30), {}, 3),  # 30 sequences of 10
        (sample(0, in_flight=30), {"target_fill": 0.5}, 6),
        (sample(0, loads=((1, 0, 1.0), (1, 0, 1.0))), {}, 2),  # two full KV caches
        (sample(1000), {}, 20),  # capped at maxReplicas
    ],
)
def test_recommendation_table(observed: DemandSample, kw: dict[str, float], expected: int) -> None:
    assert recommend(observed, config(**kw)) == expected


def test_queued_requests_hold_slots_only_for_their_share_of_the_drain_time() -> None:
    # 20 in flight at 10 req/s: a request holds a slot for 2 s; 100 queued drained over 10 s
    # need 100 * 2/10 = 20 more slots, not 100.
    n = needed(sample(10, queued=100, in_flight=20), config())
    assert n.sequences == pytest.approx((20 + 20) / 10)
    # With nothing arriving, every queued request counts (Little's law has no rate).
    assert needed(sample(0, queued=5), config()).sequences == pytest.approx(0.5)


def test_the_forecast_follows_the_trend_up_to_max_growth() -> None:
    rising = ArrivalTrend(earlier_rate=5, recent_rate=8, window_seconds=300)  # +0.01 req/s²
    cfg = config(max_growth=2.0, startup_seconds=300)
    assert forecast_rate(sample(10, trend=rising), cfg) == pytest.approx(13)
    steep = ArrivalTrend(earlier_rate=0, recent_rate=10, window_seconds=60)
    assert forecast_rate(sample(10, trend=steep), cfg) == 20  # capped at 2x
    falling = ArrivalTrend(earlier_rate=10, recent_rate=5, window_seconds=300)
    assert forecast_rate(sample(10, trend=falling), cfg) == 10  # never below the current rate
    assert forecast_rate(sample(10, trend=rising), config()) == 10  # max_growth 1: off
    assert forecast_rate(sample(10), cfg) == 10  # no history: no trend
    # The fleet is sized for the demand one start-up ahead.
    assert recommend(sample(10, trend=rising), cfg) == 2


def test_scale_up_goes_to_the_current_recommendation_at_once() -> None:
    cfg = config()
    state, current = None, 1
    for i, rate in enumerate([10, 35, 80, 150]):
        d = decide(
            current=current,
            sample=sample(rate),
            config=cfg,
            state=state,
            now=T0 + timedelta(seconds=15 * i),
        )
        assert d.desired_replicas == recommend(sample(rate), cfg)
        current, state = d.desired_replicas, d.state
    assert current == 15
    assert d.scaled == "Up"
    assert "scaled up from 8 to 15 replicas" in d.reason


def test_an_up_window_waits_then_takes_the_current_recommendation() -> None:
    cfg = config(scale_up_window_seconds=30)
    d = decide(current=1, sample=sample(50), config=cfg, state=None, now=T0)
    assert (d.desired_replicas, d.scaled) == (1, None)
    assert "up to 5 pending" in d.reason
    d = decide(
        current=1, sample=sample(30), config=cfg, state=d.state, now=T0 + timedelta(seconds=30)
    )
    assert (d.desired_replicas, d.scaled) == (3, "Up")  # the current one, not the first seen


def test_replicas_already_starting_are_not_bought_twice() -> None:
    cfg = config()
    # 3 ready + 2 starting = 5 decided; 45 req/s needs 4.5, and the 100 queued requests are
    # drained by the starting replicas once Ready (10,000 tokens over 10 + 100 s): nothing more.
    observed = sample(45, queued=100, loads=((5, 0, 0.1),) * 3, starting=2)
    d = decide(current=5, sample=observed, config=cfg, state=None, now=T0)
    assert (d.desired_replicas, d.scaled) == (5, None)
    # Had nothing been starting, the same queue would be drained within 10 s: one more.
    ready_only = replace(observed, starting_replicas=0)
    d = decide(current=5, sample=ready_only, config=cfg, state=None, now=T0)
    assert d.desired_replicas == 6


def test_a_momentary_idle_snapshot_never_scales_down() -> None:
    cfg = config(scale_down_window_seconds=60)
    busy, idle = sample(40), sample(0)
    state = None
    for i, observed in enumerate([busy, idle, idle, busy, idle, idle, idle, idle]):
        d = decide(
            current=4,
            sample=observed,
            config=cfg,
            state=state,
            now=T0 + timedelta(seconds=15 * i),
        )
        assert d.desired_replicas == 4, i
        state = d.state
    # The busy recommendation (t=45 s) counts until the next pass replaced it (t=60 s); more
    # than a whole window after that, at the next pass: down.
    d = decide(current=4, sample=idle, config=cfg, state=state, now=T0 + timedelta(seconds=120))
    assert d.desired_replicas == 4
    d = decide(current=4, sample=idle, config=cfg, state=d.state, now=T0 + timedelta(seconds=135))
    assert (d.desired_replicas, d.scaled) == (1, "Down")


def test_scale_down_steps_to_the_most_recommended_in_the_window() -> None:
    cfg = config(scale_down_window_seconds=60)
    rates = [80, 30, 20, 10, 10, 10, 10, 10, 10, 10]  # one pass every 20 s
    state, current, seen = None, 8, []
    for i, rate in enumerate(rates):
        d = decide(
            current=current,
            sample=sample(rate),
            config=cfg,
            state=state,
            now=T0 + timedelta(seconds=20 * i),
        )
        current, state = d.desired_replicas, d.state
        seen.append(current)
    # 8 held until 80 leaves the window, then 3, 2, 1 as 30, 20 age out (the HPA's moving max);
    # each counts until the pass that replaced it.
    assert seen == [8, 8, 8, 8, 8, 3, 2, 1, 1, 1]


def test_a_failed_read_holds_and_restarts_the_window() -> None:
    cfg = config(scale_down_window_seconds=60)
    state = DemandState(
        desired_replicas=4, window_since=T0, window=((T0, 1),)
    )  # a whole window of low demand already recorded
    later = T0 + timedelta(seconds=300)
    failed = DemandSample(router_ok=False, error="connection refused")
    d = decide(current=4, sample=failed, config=cfg, state=state, now=later)
    assert (d.desired_replicas, d.read, d.scaled, d.recommended) == (4, "failed", None, None)
    assert "the demand read failed (connection refused)" in d.reason
    assert d.state.window == ()
    # Idle again: the record starts over, so no scale-down before a new window.
    d = decide(current=4, sample=sample(0), config=cfg, state=d.state, now=later)
    assert d.desired_replicas == 4
    d = decide(
        current=4,
        sample=sample(0),
        config=cfg,
        state=d.state,
        now=later + timedelta(seconds=60),
    )
    assert d.desired_replicas == 1


def test_a_partial_read_scales_up_but_never_down() -> None:
    cfg = config(scale_down_window_seconds=0)
    partial_idle = sample(0, loads=((0, 0, 0.0),), ready=3)  # 2 of 3 engines silent
    d = decide(current=3, sample=partial_idle, config=cfg, state=None, now=T0)
    assert (d.desired_replicas, d.read) == (3, "partial")
    assert d.notes == ("2 of 3 ready engines did not answer",)
    assert "no scale-down" in d.reason
    partial_busy = sample(60, loads=((0, 0, 0.0),), ready=3)
    d = decide(current=3, sample=partial_busy, config=cfg, state=d.state, now=T0)
    assert (d.desired_replicas, d.scaled) == (6, "Up")


def test_scale_from_zero_when_requests_are_held() -> None:
    cfg = config(min_replicas=0, scale_up_window_seconds=300)
    d = decide(current=0, sample=sample(0), config=cfg, state=None, now=T0)
    assert d.desired_replicas == 0  # nothing held, nothing arriving
    d = decide(current=0, sample=sample(0, queued=3), config=cfg, state=d.state, now=T0)
    assert (d.desired_replicas, d.scaled, d.scaled_from_zero, d.held_requests) == (
        1,
        "Up",
        True,
        3,
    )
    assert "3 requests held at zero replicas" in d.reason
    # Paused (maxReplicas 0): held requests never start a replica.
    paused = config(min_replicas=0, max_replicas=0)
    d = decide(current=0, sample=sample(0, queued=3), config=paused, state=None, now=T0)
    assert d.desired_replicas == 0


def test_scale_to_zero_after_a_window_without_demand() -> None:
    cfg = config(min_replicas=0, scale_down_window_seconds=600)
    state = None
    for i in range(42):
        d = decide(
            current=1,
            sample=sample(0),
            config=cfg,
            state=state,
            now=T0 + timedelta(seconds=15 * i),
        )
        if d.desired_replicas == 0:
            break
        state = d.state
    assert (i * 15, d.scaled) == (600, "Down")


def test_bounds_apply_at_once() -> None:
    d = decide(current=9, sample=sample(0), config=config(max_replicas=4), state=None, now=T0)
    assert d.desired_replicas == 4
    assert d.state.last_scale_time == T0
    # Entries recorded under old bounds never scale "down" to the same count.
    state = DemandState(desired_replicas=3, window_since=T0, window=((T0, 1),))
    d = decide(
        current=3,
        sample=sample(0),
        config=config(min_replicas=3),
        state=state,
        now=T0 + timedelta(hours=1),
    )
    assert (d.desired_replicas, d.scaled) == (3, None)


def test_state_round_trips_through_status() -> None:
    state = DemandState(
        desired_replicas=5,
        last_scale_time=T0,
        up_since=None,
        window_since=T0,
        window=((T0, 7), (T0 + timedelta(seconds=30), 5)),
    )
    stored = state.to_status(read="partial", read_error="1 of 3 ready engines did not answer")
    assert stored.to_wire() == {
        "desiredReplicas": 5,
        "lastScaleTime": "2026-01-01T00:00:00Z",
        "windowSince": "2026-01-01T00:00:00Z",
        "window": [
            {"time": "2026-01-01T00:00:00Z", "replicas": 7},
            {"time": "2026-01-01T00:00:30Z", "replicas": 5},
        ],
        "read": "partial",
        "readError": "1 of 3 ready engines did not answer",
        "heldRequests": 0,
    }
    assert DemandState.from_status(stored) == state
    # Unreadable parts restart the windows; nothing raises.
    broken = stored.model_copy(
        update={"window": [RecommendationEntry(time="yesterday", replicas=7)]}
    )
    assert DemandState.from_status(broken).window == ()
    assert DemandState.from_status(None, default=2) == DemandState(desired_replicas=2)


def test_a_repeated_recommendation_stores_nothing_new() -> None:
    """A steady recommendation leaves status.autoscaler as it was (no write every pass)."""
    cfg = config(scale_down_window_seconds=600)
    d = decide(current=3, sample=sample(25), config=cfg, state=None, now=T0)
    first = d.status()
    for i in range(1, 10):
        d = decide(
            current=3, sample=sample(25), config=cfg, state=d.state, now=T0 + timedelta(minutes=i)
        )
        assert d.status() == first, i


def test_reserved_pools_are_filled_first_and_released_last() -> None:
    pools = [
        ("spot-a", CapacityTier.SPOT),
        ("od", CapacityTier.ON_DEMAND),
        ("res-1", CapacityTier.RESERVED),
        ("spot-b", "spot"),
        ("res-2", "reserved"),
    ]
    assert fill_order(pools) == ["res-1", "res-2", "spot-a", "od", "spot-b"]


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="min_replicas"):
        config(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target_utilisation"):
        config(target_utilisation=0)
    with pytest.raises(ValueError, match="max_growth"):
        config(max_growth=0.5)
    with pytest.raises(ValueError, match="positive"):
        ReplicaCapacity(max_sequences=0, kv_tokens=1, prefill_tokens_per_second=1)


# --- properties -------------------------------------------------------------------------------

loads = st.tuples(st.integers(0, 50), st.integers(0, 50), st.floats(0, 1)).map(
    lambda t: ReplicaLoad(in_flight=t[0], waiting=t[1], kv_usage=t[2])
)
samples = st.builds(
    lambda ok, rate, queued, in_flight, replicas, missing, starting, trend: DemandSample(
        router_ok=ok,
        queued=queued,
        in_flight=in_flight,
        arrival_rate=rate,
        trend=trend,
        replicas=replicas,
        ready_replicas=len(replicas) + missing,
        starting_replicas=starting,
    ),
    st.booleans() | st.just(True),
    st.floats(0, 200),
    st.integers(0, 500),
    st.integers(0, 500),
    st.lists(loads, max_size=6),
    st.integers(0, 1) | st.just(0),
    st.integers(0, 4),
    st.none()
    | st.builds(
        lambda a, b: ArrivalTrend(earlier_rate=a, recent_rate=b, window_seconds=300),
        st.floats(0, 200),
        st.floats(0, 200),
    ),
)
configs = st.builds(
    lambda lo, span, u, h, growth, up, down: config(
        min_replicas=lo,
        max_replicas=lo + span,
        target_utilisation=u,
        headroom=h,
        max_growth=growth,
        scale_up_window_seconds=up,
        scale_down_window_seconds=down,
    ),
    st.integers(0, 4),
    st.integers(0, 12),
    st.sampled_from([0.5, 0.8, 1.0]),
    st.sampled_from([0.0, 1.0, 2.0]),
    st.sampled_from([1.0, 2.0]),
    st.sampled_from([0, 30]),
    st.sampled_from([0, 60, 600]),
)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, observed=st.lists(samples, min_size=1, max_size=25), current=st.integers(0, 30))
def test_bounds_are_always_respected(
    cfg: DemandConfig, observed: list[DemandSample], current: int
) -> None:
    state = None
    for i, s in enumerate(observed):
        d = decide(
            current=current, sample=s, config=cfg, state=state, now=T0 + timedelta(seconds=15 * i)
        )
        assert cfg.min_replicas <= d.desired_replicas <= cfg.max_replicas
        assert d.state.desired_replicas == d.desired_replicas
        assert DemandState.from_status(d.state.to_status()) == d.state
        current, state = d.desired_replicas, d.state


@settings(max_examples=300, deadline=None)
@given(cfg=configs, s=samples, current=st.integers(0, 15), steps=st.integers(2, 80))
def test_a_steady_load_never_flaps(
    cfg: DemandConfig, s: DemandSample, current: int, steps: int
) -> None:
    state, seen = None, []
    for i in range(steps):
        d = decide(
            current=current, sample=s, config=cfg, state=state, now=T0 + timedelta(seconds=15 * i)
        )
        current, state = d.desired_replicas, d.state
        seen.append(current)
    assert sum(1 for a, b in itertools.pairwise(seen) if a != b) <= 1


@settings(max_examples=300, deadline=None)
@given(cfg=configs, observed=st.lists(samples, min_size=1, max_size=25), current=st.integers(0, 20))
def test_a_failed_read_never_changes_the_replicas(
    cfg: DemandConfig, observed: list[DemandSample], current: int
) -> None:
    state = None
    for i, s in enumerate(observed):
        d = decide(
            current=current, sample=s, config=cfg, state=state, now=T0 + timedelta(seconds=15 * i)
        )
        if not s.router_ok:
            assert d.desired_replicas == cfg.clamp(current)
            assert d.scaled is None
        if s.read == "partial":
            assert d.desired_replicas >= cfg.clamp(current)  # never down on a partial read
        current, state = d.desired_replicas, d.state


@settings(max_examples=300, deadline=None)
@given(
    cfg=configs.map(lambda c: replace(c, scale_up_window_seconds=0)),
    observed=st.lists(samples, min_size=1, max_size=40),
    current=st.integers(0, 20),
)
def test_never_below_a_recommendation_of_the_last_window(
    cfg: DemandConfig, observed: list[DemandSample], current: int
) -> None:
    """Up follows the current recommendation; down waits until it is out of the window."""
    state = None
    history: list[tuple[float, int]] = []
    for i, s in enumerate(observed):
        t = 15.0 * i
        d = decide(
            current=current, sample=s, config=cfg, state=state, now=T0 + timedelta(seconds=t)
        )
        if d.recommended is not None:
            history.append((t, d.recommended))
        recent = [n for when, n in history if when >= t - cfg.scale_down_window_seconds]
        if s.router_ok and recent:
            assert d.desired_replicas >= max(recent)
        current, state = d.desired_replicas, d.state


@settings(max_examples=300, deadline=None)
@given(
    cfg=configs,
    s=samples,
    more_queued=st.integers(0, 100),
    more_in_flight=st.integers(0, 100),
    more_rate=st.floats(0, 50),
)
def test_recommendation_is_monotone_in_demand(
    cfg: DemandConfig, s: DemandSample, more_queued: int, more_in_flight: int, more_rate: float
) -> None:
    # More queued or in flight at the same arrival rate never asks for fewer replicas.
    busier = replace(s, queued=s.queued + more_queued, in_flight=s.in_flight + more_in_flight)
    assert recommend(busier, cfg) >= recommend(s, cfg)
    # Nor do more arrivals with nothing queued. (With a queue, more arrivals at the same
    # in-flight count mean shorter stays, so fewer of the queued need a slot at once.)
    idle_queue = replace(s, queued=0, trend=None)
    faster = replace(idle_queue, arrival_rate=s.arrival_rate + more_rate)
    assert recommend(faster, cfg) >= recommend(idle_queue, cfg)
