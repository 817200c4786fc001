"""The operator's own Prometheus metrics (scraped through the chart's metrics Service)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter(
    "magistral_operator_reconciles_total",
    "Endpoint reconciles by result (ok, invalid, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "magistral_operator_reconcile_duration_seconds",
    "Time one endpoint reconcile takes.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PASSES = Counter(
    "magistral_operator_endpoint_passes_total",
    "Reconcile passes completed, per endpoint (its series goes when the endpoint does).",
    ["namespace", "endpoint"],
)
CHILD_WRITES = Counter(
    "magistral_operator_child_writes_total",
    "Child objects applied or deleted, by kind and action.",
    ["kind", "action"],
)

DEMAND_ROUND_SECONDS = Histogram(
    "magistral_operator_demand_round_seconds",
    "Time one round of the demand collector takes (every due endpoint's routers and engines "
    "read); rounds longer than MAGISTRAL_SCRAPE_SECONDS mean the readings lag.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEMAND_READS = Counter(
    "magistral_operator_demand_reads_total",
    "Pods read by the demand collector, by component (router, engine) and result "
    "(answered, silent).",
    ["component", "result"],
)


def serve_metrics(port: int) -> None:
    """Expose /metrics on all interfaces of the operator pod."""
    start_http_server(port)
