"""What the front reports on its demand port: ``/demand`` (the operator's read), ``/metrics``
(Prometheus) and ``/healthz`` (the router pod's readiness).

``/demand`` (version 1)::

    {"version": 1, "held": 0, "queued": 0, "inFlight": 3, "arrivalsTotal": 120,
     "completedTotal": 117, "holdTimeoutsTotal": 0, "cancelledTotal": 0, "workers": 1,
     "capacity": 128, "router": {"up": true, "error": null},
     "workerLoads": {"http://10.0.0.7:8000": 3}, "startTime": 1764570000.0}

Every request that arrived is, at any moment, held, queued, in flight, completed, timed out
or cancelled (its client left while it waited):
``arrivalsTotal = held + queued + inFlight + completedTotal + holdTimeoutsTotal +
cancelledTotal``. ``startTime`` changes when the front restarts (the counters then restart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .admission import Gate
from .workers import WorkerPoller

DEMAND_VERSION = 1
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def demand_document(*, gate: Gate, poller: WorkerPoller, start_time: float) -> dict[str, Any]:
    """The ``/demand`` JSON."""
    counts = gate.counts()
    view = poller.view
    return {
        "version": DEMAND_VERSION,
        "held": counts.held,
        "queued": counts.queued,
        "inFlight": counts.in_flight,
        "arrivalsTotal": counts.arrivals_total,
        "completedTotal": counts.completed_total,
        "holdTimeoutsTotal": counts.hold_timeouts_total,
        "cancelledTotal": counts.cancelled_total,
        "responsesTotal": counts.responses_total,
        "responses5xxTotal": counts.responses_5xx_total,
        "workers": counts.workers,
        "capacity": counts.capacity,
        "router": {"up": view.up, "error": view.error},
        "workerLoads": dict(view.loads),
        "workerUrls": list(view.urls),
        "startTime": start_time,
    }


class FrontCollector(Collector):
    """The front's metrics, read from the gate and the poller at scrape time."""

    def __init__(self, *, gate: Gate, poller: WorkerPoller) -> None:
        self._gate = gate
        self._poller = poller

    def collect(self) -> Iterator[Metric]:
        counts = self._gate.counts()
        yield CounterMetricFamily(
            "magistral_front_requests",
            "Requests received by the front.",
            value=counts.arrivals_total,
        )
        yield CounterMetricFamily(
            "magistral_front_responses",
            "Answers relayed from the router.",
            value=counts.responses_total,
        )
        yield CounterMetricFamily(
            "magistral_front_responses_5xx",
            "Answers relayed from the router with a 5xx status.",
            value=counts.responses_5xx_total,
        )
        yield CounterMetricFamily(
            "magistral_front_hold_timeouts",
            "Requests answered 503 because no replica or slot was free within the hold timeout.",
            value=counts.hold_timeouts_total,
        )
        gauges: tuple[tuple[str, str, float], ...] = (
            ("held_requests", "Requests waiting because the router has no worker.", counts.held),
            ("queued_requests", "Requests waiting for an admission slot.", counts.queued),
            ("in_flight_requests", "Requests admitted and not finished.", counts.in_flight),
            ("router_workers", "Healthy workers the router had at its last poll.", counts.workers),
            ("router_up", "1 when the router answered its last poll.", float(self._poller.view.up)),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(f"magistral_front_{name}", documentation, value=value)


def make_report_app(
    *, gate: Gate, poller: WorkerPoller, start_time: float, draining: Callable[[], bool]
) -> web.Application:
    """The demand port's application."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FrontCollector(gate=gate, poller=poller))

    async def demand(request: web.Request) -> web.Response:
        return web.json_response(demand_document(gate=gate, poller=poller, start_time=start_time))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": METRICS_CONTENT_TYPE}
        )

    async def healthz(request: web.Request) -> web.Response:
        view = poller.view
        if draining():
            return web.json_response({"status": "draining", "detail": None}, status=503)
        if not view.up:
            return web.json_response({"status": "router-down", "detail": view.error}, status=503)
        return web.json_response({"status": "ok", "detail": f"{view.workers} worker(s)"})

    app = web.Application()
    app.router.add_get("/demand", demand)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app
