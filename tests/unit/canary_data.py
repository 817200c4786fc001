"""Counters and window readings for canary analysis tests (vLLM's bucket bounds)."""

from __future__ import annotations

from magistral_operator.rollout_analysis import Counters, RouterCounts, WindowReading

TTFT_BOUNDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0, float("inf"))  # fmt: skip
ITL_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
              10.0, 20.0, 40.0, 80.0, float("inf"))  # fmt: skip


def buckets(bounds: tuple[float, ...], value: float, count: int) -> tuple[tuple[float, float], ...]:
    """Cumulative buckets with `count` observations of `value`."""
    return tuple((le, float(count) if value <= le else 0.0) for le in bounds)


def counters(
    requests: int,
    *,
    errors: int = 0,
    aborts: int = 0,
    ttft: float = 0.08,
    itl: float = 0.02,
    probes: int = 0,
    tokens: int = 50,
) -> Counters:
    """A pod that finished `requests` requests (`errors` and `aborts` among them) plus `probes`
    readiness probes, each request with one TTFT and `tokens` inter-token gaps."""
    ok = requests - errors - aborts
    return Counters(
        ttft=buckets(TTFT_BOUNDS, ttft, requests + probes),
        itl=buckets(ITL_BOUNDS, itl, ok * tokens),
        finishes={
            "stop": float(ok),
            "length": float(probes),
            "error": float(errors),
            "abort": float(aborts),
        },
        probes=float(probes),
    )


def reading(
    seconds: float,
    canary: Counters,
    baseline: Counters,
    *,
    router: RouterCounts | None = None,
) -> WindowReading:
    return WindowReading(
        seconds=seconds,
        canary=canary,
        baseline=baseline,
        router=router if router is not None else RouterCounts(),
        baseline_pods=2,
    )
