"""The canary analysis: the new revision's replica against the healthy ones (pure).

What is compared, over a window that starts when the canary replica turns Ready
(spec.rollout.canary; docs/rollout.md#the-canary-analysis):

- **time to first token** and **inter-token latency**: a quantile (p90 by default) of the
  engines' own histograms `vllm:time_to_first_token_seconds` and
  `vllm:inter_token_latency_seconds`, from the bucket counts added in the window, interpolated
  as Prometheus' `histogram_quantile` does; relative to the baseline and, if set, absolute;
- **errors**: the share of requests that finished with `error` or `abort`
  (`vllm:request_success_total` by `finished_reason`); absolute and relative to the baseline;
- **what clients saw**: the share of the endpoint's responses that were 5xx from the router
  (the routers' fronts count them), absolute.

Requests asking for at most one token (`vllm:request_params_max_tokens` bucket `le="1"`) are
the readiness probes' (every replica gets them) and are not counted as traffic.

Semantics follow Argo Rollouts' AnalysisRun (phases Pending, Running, Inconclusive,
Successful, Failed) and Flagger's analysis (a minimum of requests, errors fail fast, latency is
judged over the window). The window's start counters are kept by `WindowTracker` in the
operator's memory (an operator restart starts the window again: slower, never wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api.canary import CanarySpec
from .api.status import AnalysisPhase

ERROR_REASONS = ("error", "abort")
Buckets = tuple[tuple[float, float], ...]
"""Cumulative histogram buckets: (upper bound, count), ascending, +Inf last."""


def _bucket_minus(now: Buckets, start: Buckets) -> Buckets:
    before = dict(start)
    return tuple((le, max(0.0, count - before.get(le, 0.0))) for le, count in now)


def _bucket_plus(a: Buckets, b: Buckets) -> Buckets:
    if not a:
        return b
    if not b:
        return a
    total: dict[float, float] = dict(a)
    for le, count in b:
        total[le] = total.get(le, 0.0) + count
    return tuple(sorted(total.items()))


@dataclass(frozen=True)
class Counters:
    """One engine pod's cumulative counters (or a sum, or a difference, of them)."""

    ttft: Buckets = ()
    itl: Buckets = ()
    finishes: Mapping[str, float] = field(default_factory=dict)
    probes: float = 0.0
    """Requests that asked for at most one token: readiness probes."""

    @property
    def finished(self) -> float:
        return sum(self.finishes.values())

    @property
    def requests(self) -> int:
        """Finished requests that were not probes."""
        return max(0, round(self.finished - self.probes))

    @property
    def errors(self) -> int:
        return round(sum(self.finishes.get(r, 0.0) for r in ERROR_REASONS))

    def error_share(self) -> float | None:
        return min(1.0, self.errors / self.requests) if self.requests else None

    def minus(self, start: Counters) -> Counters:
        """What was added since `start`; all of it when a counter went down (a restart)."""
        reset = self.finished < start.finished or any(
            self.finishes.get(k, 0.0) < v for k, v in start.finishes.items()
        )
        if reset:
            return self
        return Counters(
            ttft=_bucket_minus(self.ttft, start.ttft),
            itl=_bucket_minus(self.itl, start.itl),
            finishes={
                k: max(0.0, v - start.finishes.get(k, 0.0)) for k, v in self.finishes.items()
            },
            probes=max(0.0, self.probes - start.probes),
        )

    def plus(self, other: Counters) -> Counters:
        keys = set(self.finishes) | set(other.finishes)
        return Counters(
            ttft=_bucket_plus(self.ttft, other.ttft),
            itl=_bucket_plus(self.itl, other.itl),
            finishes={k: self.finishes.get(k, 0.0) + other.finishes.get(k, 0.0) for k in keys},
            probes=self.probes + other.probes,
        )


def total(counters: Sequence[Counters]) -> Counters:
    out = Counters()
    for c in counters:
        out = out.plus(c)
    return out


def quantile(buckets: Buckets, q: float) -> float | None:
    """`histogram_quantile(q, …)` over cumulative buckets; None without observations.

    Linear interpolation inside the bucket; a quantile in the +Inf bucket is the largest finite
    bound (as Prometheus answers).
    """
    if not buckets:
        return None
    count = buckets[-1][1]
    if count <= 0:
        return None
    rank = q * count
    lower_bound, lower_count = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if le == float("inf"):
                return lower_bound
            width = cumulative - lower_count
            if width <= 0:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / width
        lower_bound, lower_count = le, cumulative
    return lower_bound


@dataclass(frozen=True)
class RouterCounts:
    """Responses a router pod's front relayed, and how many were 5xx."""

    total: float = 0.0
    errors: float = 0.0

    def minus(self, start: RouterCounts) -> RouterCounts:
        if self.total < start.total or self.errors < start.errors:
            return self
        return RouterCounts(self.total - start.total, self.errors - start.errors)


@dataclass(frozen=True)
class WindowReading:
    """What was added in the window so far."""

    seconds: float
    canary: Counters
    baseline: Counters
    router: RouterCounts
    baseline_pods: int = 0


class WindowTracker:
    """The counters at the start of one canary's window, and the differences since.

    Pods absent at the start count from zero (a replica added in the window); a pod whose
    counters went down restarted and counts from zero too.
    """

    def __init__(
        self,
        *,
        now: float,
        canary: Mapping[str, Counters],
        baseline: Mapping[str, Counters],
        routers: Mapping[str, RouterCounts],
    ) -> None:
        self.started = now
        self._start = {**canary, **baseline}
        self._routers = dict(routers)

    def reading(
        self,
        *,
        now: float,
        canary: Mapping[str, Counters],
        baseline: Mapping[str, Counters],
        routers: Mapping[str, RouterCounts],
    ) -> WindowReading:
        def since(pods: Mapping[str, Counters]) -> Counters:
            return total([c.minus(self._start.get(pod, Counters())) for pod, c in pods.items()])

        router = RouterCounts()
        for key, counts in routers.items():
            added = counts.minus(self._routers.get(key, RouterCounts()))
            router = RouterCounts(router.total + added.total, router.errors + added.errors)
        return WindowReading(
            seconds=max(0.0, now - self.started),
            canary=since(canary),
            baseline=since(baseline),
            router=router,
            baseline_pods=len(baseline),
        )


@dataclass(frozen=True)
class Verdict:
    """The analysis' answer for this pass."""

    phase: AnalysisPhase
    message: str
    canary_requests: int = 0
    baseline_requests: int = 0
    inconclusive_timeout: bool = False
    """Successful or Failed only because maxWaitSeconds passed without enough traffic."""
    pod: str | None = None
    """The canary pod measured (set by the caller)."""


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _latency_failures(
    name: str,
    *,
    canary: float | None,
    baseline: float | None,
    ratio: float,
    absolute: float | None,
    quantile_name: str,
    baseline_counted: bool,
) -> list[str]:
    out: list[str] = []
    if canary is None:
        return out
    if absolute is not None and canary > absolute:
        out.append(f"{name} {quantile_name} {_seconds(canary)} > {_seconds(absolute)} (absolute)")
    if baseline_counted and baseline is not None and canary > ratio * baseline:
        out.append(
            f"{name} {quantile_name} {_seconds(canary)} > {ratio:g} x baseline {_seconds(baseline)}"
        )
    return out


def judge(spec: CanarySpec, reading: WindowReading) -> Verdict:
    """One measurement of the window so far (see the module docstring)."""
    c, b = reading.canary, reading.baseline
    n_c, n_b = c.requests, b.requests
    counts: dict[str, Any] = {"canary_requests": n_c, "baseline_requests": n_b}
    err_c, err_b = c.error_share(), b.error_share()
    enough = n_c >= spec.min_requests
    baseline_counted = n_b >= spec.min_requests
    errors = (
        f"errors: canary {c.errors}/{n_c} ({_percent(err_c)}), "
        f"baseline {b.errors}/{n_b} ({_percent(err_b)})"
    )
    router_share = reading.router.errors / reading.router.total if reading.router.total else None
    router = (
        f"router 5xx {round(reading.router.errors)}/{round(reading.router.total)} "
        f"({_percent(router_share)})"
    )
    # Errors fail fast (Flagger: a failed check before the window ends): users are hurt now.
    failures = []
    if enough and err_c is not None and err_c > spec.max_error_rate:
        failures.append(f"error share {_percent(err_c)} > {_percent(spec.max_error_rate)}")
    if (
        enough
        and baseline_counted
        and err_c is not None
        and err_b is not None
        and err_c - err_b > spec.max_error_rate_increase
    ):
        failures.append(
            f"error share {_percent(err_c)} exceeds the baseline's {_percent(err_b)} by more "
            f"than {_percent(spec.max_error_rate_increase)}"
        )
    if (
        router_share is not None
        and reading.router.total >= spec.min_requests
        and router_share > spec.max_router_error_rate
    ):
        failures.append(
            f"router 5xx share {_percent(router_share)} > {_percent(spec.max_router_error_rate)}"
        )
    if failures:
        return Verdict("Failed", "; ".join(failures) + f" ({errors}; {router})", **counts)

    elapsed = f"{reading.seconds:.0f}/{spec.analysis_seconds} s"
    if reading.seconds < spec.analysis_seconds:
        return Verdict(
            "Running",
            f"window {elapsed}: canary {n_c} requests, baseline {n_b} ({errors}; {router})",
            **counts,
        )
    if not enough:
        waited = f"{reading.seconds:.0f}/{spec.max_wait_seconds} s"
        short = (
            f"too little traffic to judge: the canary finished {n_c} of the {spec.min_requests} "
            "requests needed"
        )
        if reading.seconds < spec.max_wait_seconds:
            return Verdict("Inconclusive", f"{short}; waiting ({waited})", **counts)
        if spec.inconclusive == "Promote":
            return Verdict(
                "Successful",
                f"{short} by maxWaitSeconds; promoted (inconclusive: Promote)",
                inconclusive_timeout=True,
                **counts,
            )
        return Verdict(
            "Failed",
            f"{short} by maxWaitSeconds ({spec.max_wait_seconds} s); rolled back "
            "(inconclusive: RollBack)",
            inconclusive_timeout=True,
            **counts,
        )

    q = spec.quantile
    qname = f"p{round(q * 100)}"
    ttft_c, ttft_b = quantile(c.ttft, q), quantile(b.ttft, q)
    itl_c, itl_b = quantile(c.itl, q), quantile(b.itl, q)
    latency = (
        f"TTFT {qname} canary {_seconds(ttft_c)} vs baseline {_seconds(ttft_b)}, "
        f"ITL {qname} canary {_seconds(itl_c)} vs baseline {_seconds(itl_b)}"
    )
    failures = _latency_failures(
        "TTFT",
        canary=ttft_c,
        baseline=ttft_b,
        ratio=spec.max_ttft_ratio,
        absolute=spec.max_ttft_seconds,
        quantile_name=qname,
        baseline_counted=baseline_counted,
    ) + _latency_failures(
        "ITL",
        canary=itl_c,
        baseline=itl_b,
        ratio=spec.max_itl_ratio,
        absolute=spec.max_itl_seconds,
        quantile_name=qname,
        baseline_counted=baseline_counted,
    )
    detail = (
        f"{n_c} canary and {n_b} baseline requests in {reading.seconds:.0f} s: {latency}; "
        f"{errors}; {router}"
    )
    if not baseline_counted:
        detail += (
            f"; the baseline finished fewer than {spec.min_requests} requests, so only the "
            "absolute thresholds applied"
        )
    if failures:
        return Verdict("Failed", "; ".join(failures) + f" ({detail})", **counts)
    return Verdict("Successful", f"passed: {detail}", **counts)
