"""The queue-depth autoscaling policy (tables and properties) and the /metrics parsing."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.spec import ScalingSpec
from magistral_operator.api.status import AutoscalerStatus
from magistral_operator.autoscale.policy import (
    ReplicaSample,
    decide,
    recommend,
    starting_replicas,
)
from magistral_operator.kube.metrics import metrics_target, parse_sample

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scaling(**kw: int | float) -> ScalingSpec:
    base: dict[str, int | float] = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetQueueDepth": 2,
        "scaleUpWindowSeconds": 0,
        "scaleDownWindowSeconds": 0,
    }
    return ScalingSpec.model_validate({**base, **kw})


def samples(*pairs: tuple[float, float]) -> list[ReplicaSample]:
    return [ReplicaSample(waiting=w, running=r) for w, r in pairs]


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        ([], 1),  # nothing observed: minReplicas
        ([(0, 0)], 1),  # idle
        ([(2, 2)], 1),  # 2 running + 2 waiting: exactly one replica's share
        ([(3, 2)], 2),  # one over the target
        ([(4, 2)], 2),  # six in the engine, four per replica
        ([(10, 2)], 3),  # twelve / four
        ([(100, 2)], 4),  # capped at maxReplicas
        ([(0, 2), (0, 2)], 1),  # four running fit one replica with the queue target
        ([(0, 2), (0, 1)], 1),
        ([(1, 2), (1, 2)], 2),  # six: N-1 = 1 replica holds only four
        ([(0, 1), (0, 1), (0, 1)], 1),  # a replica holds at least what one was seen running
    ],
)
def test_recommendation_table(observed: list[tuple[float, float]], expected: int) -> None:
    assert recommend(samples=samples(*observed), scaling=scaling()) == expected


def test_no_samples_hold_even_below_a_pending_window() -> None:
    state = AutoscalerStatus(
        desired_replicas=3, pending_direction="Down", pending_since="2026-01-01T00:00:00Z"
    )
    d = decide(current=3, samples=[], scaling=scaling(), state=state, now=T0 + timedelta(hours=1))
    assert d.desired_replicas == 3
    assert d.scaled is None
    assert d.state.pending_direction is None  # the signal did not hold
    assert "no replica metrics" in d.reason


def test_scale_up_waits_for_its_window_then_takes_the_fewest_seen() -> None:
    spec = scaling(scaleUpWindowSeconds=30)
    d = decide(current=1, samples=samples((10, 2)), scaling=spec, state=None, now=T0)
    assert (d.desired_replicas, d.scaled, d.state.pending_direction) == (1, None, "Up")
    assert d.state.pending_replicas == 3
    assert d.state.observed_queue == 10
    t = T0 + timedelta(seconds=10)
    d = decide(current=1, samples=samples((4, 2)), scaling=spec, state=d.state, now=t)
    assert (d.desired_replicas, d.state.pending_replicas) == (1, 2)
    t = T0 + timedelta(seconds=30)
    d = decide(current=1, samples=samples((10, 2)), scaling=spec, state=d.state, now=t)
    assert (d.desired_replicas, d.scaled, d.previous_replicas) == (2, "Up", 1)
    assert d.state == AutoscalerStatus(
        desired_replicas=2, last_scale_time="2026-01-01T00:00:30Z", observed_queue=10
    )
    assert "scaled up from 1 to 2 replicas" in d.reason


def test_a_broken_signal_restarts_the_window() -> None:
    spec = scaling(scaleDownWindowSeconds=60)
    d = decide(current=3, samples=samples((0, 0)), scaling=spec, state=None, now=T0)
    assert d.state.pending_direction == "Down"
    t = T0 + timedelta(seconds=50)
    d = decide(current=3, samples=samples((10, 2)), scaling=spec, state=d.state, now=t)
    assert d.state.pending_direction is None  # 12 in the engine: 2 replicas no longer hold it
    t = T0 + timedelta(seconds=70)
    d = decide(current=3, samples=samples((0, 0)), scaling=spec, state=d.state, now=t)
    assert (d.desired_replicas, d.state.pending_since) == (3, "2026-01-01T00:01:10Z")


def test_scale_down_goes_to_the_most_replicas_seen_during_the_window() -> None:
    spec = scaling(scaleDownWindowSeconds=60)
    load = [samples((0, 0)), samples((0, 2), (0, 2), (1, 1)), samples((0, 0))]
    state = None
    for i, observed in enumerate(load):
        d = decide(
            current=4,
            samples=observed,
            scaling=spec,
            state=state,
            now=T0 + timedelta(seconds=30 * i),
        )
        state = d.state
    assert (d.desired_replicas, d.scaled) == (2, "Down")


def test_bounds_changes_apply_at_once_and_restart_resumes() -> None:
    d = decide(current=5, samples=[], scaling=scaling(maxReplicas=3), state=None, now=T0)
    assert d.desired_replicas == 3
    state = AutoscalerStatus(desired_replicas=3)
    assert starting_replicas(state=state, status_replicas=1, scaling=scaling()) == 3
    assert starting_replicas(state=None, status_replicas=2, scaling=scaling()) == 2
    assert starting_replicas(state=None, status_replicas=0, scaling=scaling(minReplicas=1)) == 1


def test_an_idle_endpoint_keeps_the_same_state() -> None:
    state = AutoscalerStatus(desired_replicas=1, observed_queue=7, last_scale_time="x")
    for i in range(5):
        d = decide(
            current=1,
            samples=samples((0, 0)),
            scaling=scaling(),
            state=state,
            now=T0 + timedelta(seconds=i),
        )
        assert d.state == state


sample_lists = st.lists(
    st.tuples(st.integers(0, 200), st.integers(0, 64)).map(
        lambda p: ReplicaSample(waiting=p[0], running=p[1])
    ),
    max_size=8,
)
specs = st.builds(
    lambda lo, span, q, up, down: scaling(
        minReplicas=lo,
        maxReplicas=lo + span if lo else 0,  # minReplicas 0 only pauses (maxReplicas 0)
        targetQueueDepth=q,
        scaleUpWindowSeconds=up,
        scaleDownWindowSeconds=down,
    ),
    st.integers(0, 5),
    st.integers(0, 10),
    st.sampled_from([0.5, 1, 2, 5, 20]),
    st.integers(0, 120),
    st.integers(0, 600),
)


@settings(max_examples=300, deadline=None)
@given(
    spec=specs, observed=st.lists(sample_lists, min_size=1, max_size=20), current=st.integers(0, 30)
)
def test_bounds_are_always_respected(
    spec: ScalingSpec, observed: list[list[ReplicaSample]], current: int
) -> None:
    state = None
    for i, obs in enumerate(observed):
        now = T0 + timedelta(seconds=17 * i)
        d = decide(current=current, samples=obs, scaling=spec, state=state, now=now)
        assert spec.min_replicas <= d.desired_replicas <= spec.max_replicas
        assert d.state.desired_replicas == d.desired_replicas
        current, state = d.desired_replicas, d.state


@settings(max_examples=300, deadline=None)
@given(spec=specs, obs=sample_lists, current=st.integers(0, 15), steps=st.integers(2, 40))
def test_a_constant_load_never_flaps(
    spec: ScalingSpec, obs: list[ReplicaSample], current: int, steps: int
) -> None:
    state = None
    seen = []
    for i in range(steps):
        now = T0 + timedelta(seconds=20 * i)
        d = decide(current=current, samples=obs, scaling=spec, state=state, now=now)
        current, state = d.desired_replicas, d.state
        seen.append(current)
    directions = {b > a for a, b in itertools.pairwise(seen) if a != b}
    assert len(directions) <= 1  # monotone: never up then down (or back)
    changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    assert changes <= 1  # one move to the recommendation, then steady


@settings(max_examples=300, deadline=None)
@given(spec=specs, obs=sample_lists, extra=st.lists(st.integers(0, 50), max_size=8))
def test_recommendation_is_monotone_in_the_queue(
    spec: ScalingSpec, obs: list[ReplicaSample], extra: list[int]
) -> None:
    more = [
        ReplicaSample(waiting=s.waiting + (extra[i] if i < len(extra) else 0), running=s.running)
        for i, s in enumerate(obs)
    ]
    assert recommend(samples=more, scaling=spec) >= recommend(samples=obs, scaling=spec)


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:request_success counter
vllm:request_success_total{finished_reason="stop"} 3.0
"""


def test_parse_sample_sums_engines() -> None:
    assert parse_sample(METRICS) == ReplicaSample(waiting=4, running=3)
    assert parse_sample("# TYPE x gauge\nx 1\n") is None  # not an engine: no sample


def pod(ip: str, *, ready: bool = True, port: str = "http") -> dict[str, object]:
    return {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"ports": [{"name": port, "containerPort": 8000}]}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_metrics_targets_are_ready_pods_with_ip_literals() -> None:
    assert metrics_target(pod("127.64.0.5")) == ("127.64.0.5", 8000)
    assert metrics_target(pod("127.64.0.5", ready=False)) is None
    assert metrics_target(pod("example.com")) is None  # never resolve a name
    assert metrics_target(pod("")) is None
    assert metrics_target(pod("127.64.0.5", port="metrics")) is None
