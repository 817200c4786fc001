"""The canary analysis (pure): histogram quantiles, window differences and the verdict table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magistral_operator.api.canary import CanarySpec
from magistral_operator.kube.metrics import parse_counters
from magistral_operator.rollout_analysis import (
    Counters,
    RouterCounts,
    WindowTracker,
    judge,
    quantile,
)
from tests.unit.canary_data import TTFT_BOUNDS, buckets, counters, reading

SPEC = CanarySpec(analysis_seconds=300, min_requests=20, max_wait_seconds=900)
GOOD = counters(100)
BASE = counters(200)


def test_quantile_interpolates_like_histogram_quantile() -> None:
    # 10 observations in (0.1, 0.25]: p50 is halfway through that bucket.
    assert quantile(buckets(TTFT_BOUNDS, 0.2, 10), 0.5) == pytest.approx(0.175)
    two = ((0.1, 5.0), (0.25, 10.0), (float("inf"), 10.0))
    assert quantile(two, 0.9) == pytest.approx(0.1 + 0.15 * 0.8)
    assert quantile(((1.0, 0.0), (float("inf"), 0.0)), 0.9) is None
    assert quantile((), 0.9) is None
    assert quantile(((1.0, 0.0), (float("inf"), 4.0)), 0.9) == 1.0  # in +Inf: the last bound


@given(
    st.lists(st.integers(min_value=0, max_value=50), min_size=3, max_size=8),
    st.floats(min_value=0.5, max_value=0.99),
)
def test_quantile_stays_inside_the_bucket_bounds(counts: list[int], q: float) -> None:
    bounds = [0.1 * (i + 1) for i in range(len(counts))]
    cumulative, total = [], 0
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        cumulative.append((bound, float(total)))
    cumulative.append((float("inf"), float(total)))
    value = quantile(tuple(cumulative), q)
    if total == 0:
        assert value is None
    else:
        assert value is not None
        assert 0.0 <= value <= bounds[-1]


def test_counters_minus_and_restart() -> None:
    start, now = counters(10, errors=1), counters(30, errors=4)
    since = now.minus(start)
    assert since.requests == 20
    assert since.errors == 3
    assert counters(5).minus(start) == counters(5)  # went down: the pod restarted
    assert counters(8, probes=20).requests == 8  # readiness probes are not traffic


def test_window_tracker_counts_new_pods_from_zero() -> None:
    tracker = WindowTracker(
        now=100.0,
        canary={"c": counters(2)},
        baseline={"b1": counters(50)},
        routers={"r1": RouterCounts(100, 1)},
    )
    out = tracker.reading(
        now=160.0,
        canary={"c": counters(12, errors=1)},
        baseline={"b1": counters(70), "b2": counters(15)},
        routers={"r1": RouterCounts(150, 3), "r2": RouterCounts(10, 0)},
    )
    assert out.seconds == 60
    assert (out.canary.requests, out.canary.errors) == (10, 1)
    assert out.baseline.requests == 35
    assert out.router == RouterCounts(60, 2)


# (case, window seconds, canary, baseline, router, spec changes, phase, words in the message)
VERDICTS: list[tuple[Any, ...]] = [
    ("too early", 100, GOOD, BASE, None, {}, "Running", "window 100/300 s"),
    ("healthy at the window's end", 300, GOOD, BASE, None, {}, "Successful", "passed"),
    ("slow tokens", 300, counters(100, itl=0.09), BASE, None, {}, "Failed",
     "ITL p90"),
    ("slow first token", 300, counters(100, ttft=0.9), BASE, None, {}, "Failed", "TTFT p90"),
    ("absolute TTFT", 300, counters(100, ttft=0.09), counters(200, ttft=0.09), None,
     {"max_ttft_seconds": 0.05}, "Failed", "(absolute)"),
    ("errors fail fast", 60, counters(40, errors=8), BASE, None, {}, "Failed",
     "error share 20.0 %"),
    ("aborts count as errors", 60, counters(40, aborts=4), BASE, None, {}, "Failed",
     "error share 10.0 %"),
    ("errors within the threshold", 300, counters(100, errors=1), counters(200, errors=2), None,
     {}, "Successful", "canary 1/100"),
    ("errors above the baseline's", 300, counters(100, errors=4), BASE, None, {}, "Failed",
     "exceeds the baseline's"),
    ("router 5xx", 60, GOOD, BASE, RouterCounts(100, 10), {}, "Failed", "router 5xx share"),
    ("too little traffic: waits", 300, counters(5), BASE, None, {}, "Inconclusive",
     "too little traffic"),
    ("probes are not traffic", 300, counters(5, probes=60), BASE, None, {}, "Inconclusive",
     "finished 5 of the 20"),
    ("too little traffic at maxWait: rolls back", 900, counters(5), BASE, None, {}, "Failed",
     "inconclusive: RollBack"),
    ("too little traffic at maxWait: promote", 900, counters(5), BASE, None,
     {"inconclusive": "Promote"}, "Successful", "inconclusive: Promote"),
    ("baseline too quiet: absolute only", 300, counters(100, itl=0.09), counters(3), None, {},
     "Successful", "only the absolute thresholds"),
]  # fmt: skip


@pytest.mark.parametrize("row", VERDICTS, ids=[r[0] for r in VERDICTS])
def test_verdicts(row: tuple[Any, ...]) -> None:
    _, seconds, canary, baseline, router, changes, phase, words = row
    spec = SPEC.model_copy(update=changes)
    verdict = judge(spec, reading(seconds, canary, baseline, router=router))
    assert verdict.phase == phase, verdict.message
    assert words in verdict.message
    assert verdict.canary_requests == canary.requests


METRICS = """\
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 7.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="m"} 2.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 3.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.0
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.05",model_name="m"} 90.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 100.0
# TYPE vllm:request_params_max_tokens histogram
vllm:request_params_max_tokens_bucket{engine="0",le="1.0",model_name="m"} 3.0
vllm:request_params_max_tokens_bucket{engine="0",le="2.0",model_name="m"} 3.0
vllm:request_params_max_tokens_bucket{engine="0",le="+Inf",model_name="m"} 12.0
"""


def test_parse_counters_reads_vllm_names() -> None:
    parsed = parse_counters(METRICS)
    assert parsed is not None
    assert parsed.finishes == {"stop": 7.0, "error": 2.0, "length": 3.0}
    assert parsed.probes == 3.0
    assert parsed.requests == 9
    assert parsed.errors == 2
    assert parsed.ttft == ((0.1, 4.0), (float("inf"), 12.0))
    assert parsed.itl == ((0.05, 90.0), (float("inf"), 100.0))
    assert parse_counters("# nothing\n") is None
    assert isinstance(parsed, Counters)


def test_spec_wait_must_cover_the_window() -> None:
    with pytest.raises(ValueError, match="maxWaitSeconds must be at least analysisSeconds"):
        CanarySpec(analysis_seconds=600, max_wait_seconds=300)
