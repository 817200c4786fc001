"""The demand read's pure parts: the fronts' reports, the arrival record, one sample.

A silent router or engine is never read as low demand: no router answering is a failed read,
some silent is a partial one; counters that restart count from zero.
"""

from __future__ import annotations

import json

import pytest

from magistral_operator.autoscale.arrivals import ArrivalRecord, CounterReading
from magistral_operator.kube.demand import FrontReading, canary_not_routed, parse_front, sample_from
from magistral_operator.kube.metrics import EngineReading, parse_sample

REPORT = {
    "version": 1,
    "held": 1,
    "queued": 2,
    "inFlight": 3,
    "arrivalsTotal": 40,
    "completedTotal": 34,
    "holdTimeoutsTotal": 0,
    "cancelledTotal": 0,
    "workers": 1,
    "capacity": 3,
    "router": {"up": True, "error": None},
    "workerLoads": {},
    "startTime": 1000.5,
}


def front(**kw: object) -> FrontReading:
    return parse_front(json.dumps({**REPORT, **kw}))


def test_a_front_report_is_parsed() -> None:
    assert front() == FrontReading(
        held=1,
        queued=2,
        in_flight=3,
        arrivals_total=40,
        start_time=1000.5,
        workers=1,
        router_up=True,
    )
    counted = front(responsesTotal=30, responses5xxTotal=2)
    assert (counted.responses_total, counted.responses_5xx_total) == (30, 2)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"version": 2}, "version 1"),
        ({"held": -1}, "held"),
        ({"inFlight": "3"}, "inFlight"),
        ({"queued": True}, "queued"),
        ({"startTime": None}, "startTime"),
        ({"responses5xxTotal": -1}, "responses5xxTotal"),
    ],
)
def test_a_bad_front_report_is_refused(change: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_front(json.dumps({**REPORT, **change}))


def test_arrival_rate_and_trend_from_counters() -> None:
    record = ArrivalRecord(rate_window=60, trend_window=300)
    for i in range(61):  # 10 minutes of 10 s passes; router a: 1 req/s, b: 2 then 4 req/s
        t = 10.0 * i
        b = 20 * i if t <= 300 else 20 * 30 + 40 * (i - 30)
        record.observe(t, {"a": CounterReading(0.0, 10 * i), "b": CounterReading(0.0, b)})
    assert record.rate(600.0) == pytest.approx(5.0)
    trend = record.trend(600.0)
    assert trend is not None
    assert (trend.earlier_rate, trend.recent_rate) == (pytest.approx(3.0), pytest.approx(5.0))
    assert ArrivalRecord().trend(0.0) is None  # no history: no made-up trend


def test_a_restarted_front_counts_from_zero() -> None:
    record = ArrivalRecord(rate_window=60)
    record.observe(0.0, {"a": CounterReading(1.0, 500)})
    record.observe(30.0, {"a": CounterReading(1.0, 530)})
    record.observe(60.0, {"a": CounterReading(50.0, 30)})  # restarted: a new start time
    assert record.rate(60.0) == pytest.approx(1.0)
    record.observe(90.0, {"a": CounterReading(50.0, 10)})  # smaller count: restarted again
    assert record.rate(90.0) == pytest.approx((30 + 10) / 60)  # the passes at 60 s and 90 s


def _sample(fronts: list[FrontReading | str], engines: list[EngineReading | None], **kw: int):
    return sample_from(
        fronts=fronts,
        engines=engines,
        ready_engines=kw.get("ready_engines", len(engines)),
        starting_engines=kw.get("starting", 0),
        ready_routers=kw.get("ready_routers", len(fronts)),
        record=ArrivalRecord(),
        keys=[f"r{i}" for i in range(len(fronts))],
        now=0.0,
    )


def test_no_ready_router_or_none_answering_is_a_failed_read() -> None:
    assert _sample([], [], ready_routers=0).read == "failed"
    failed = _sample(["10.1.2.3:9090: timed out", "10.1.2.4:9090: refused"], [])
    assert failed.read == "failed"
    assert failed.error is not None
    assert "timed out" in failed.error
    assert "refused" in failed.error


def test_silent_routers_or_engines_make_a_partial_read() -> None:
    engine = EngineReading(waiting=1, running=4, kv_usage=0.5)
    partial = _sample([front(), "10.1.2.4:9090: refused"], [engine])
    assert partial.read == "partial"
    assert partial.silent_routers == 1
    assert _sample([front()], [engine, None]).read == "partial"
    whole = _sample([front(), front(held=0, queued=5, inFlight=1)], [engine], starting=2)
    assert whole.read == "ok"
    assert (whole.queued, whole.in_flight, whole.starting_replicas) == (8, 4, 2)
    assert whole.replicas[0].kv_usage == 0.5


def test_engine_metrics_are_summed_over_engines() -> None:
    text = "\n".join(
        [
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0"} 2',
            'vllm:num_requests_waiting{engine="1"} 1',
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0"} 5',
            "# TYPE vllm:kv_cache_usage_perc gauge",
            'vllm:kv_cache_usage_perc{engine="0"} 0.2',
            'vllm:kv_cache_usage_perc{engine="1"} 0.4',
            "# TYPE vllm:prompt_tokens_total counter",
            'vllm:prompt_tokens_total{engine="0"} 1000',
            "# TYPE vllm:request_success_total counter",
            'vllm:request_success_total{finished_reason="stop"} 4',
            'vllm:request_success_total{finished_reason="length"} 1',
        ]
    )
    reading = parse_sample(text)
    assert reading == EngineReading(
        waiting=3, running=5, kv_usage=pytest.approx(0.3), prompt_tokens=1000, successes=5
    )
    assert (
        parse_sample("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n")
        is None
    )


def test_a_canary_window_waits_until_every_router_routes_to_it() -> None:
    pod = {
        "metadata": {"name": "ep-canary-x"},
        "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8000}]}]},
        "status": {
            "phase": "Running",
            "podIP": "127.64.0.9",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    url = "http://127.64.0.9:8000"
    knows = front(workerUrls=[url, "http://127.64.0.2:8000"])
    blind = front(workerUrls=["http://127.64.0.2:8000"])
    assert canary_not_routed([pod], [knows, knows]) is None
    assert canary_not_routed([pod], [knows, blind]) == (
        "the routers have not added the canary replica yet (1/2 route to it)"
    )
    assert canary_not_routed([pod], [front()]) is None  # a front that does not say
    with pytest.raises(ValueError, match="workerUrls"):
        front(workerUrls="all")
