"""The demand read: the routers' fronts and the engines, gathered into one DemandSample.

For one endpoint (read in the background by kube/collector.py, which the passes ask):

1. `GET http://<router pod IP>:<port 'demand'>/demand` of each ready router pod (in parallel,
   1 s timeout): requests held (no replica), queued (every replica full), in flight, and the
   request counter that gives the arrival rate (autoscale/arrivals.py keeps the record).
2. `GET http://<engine pod IP>:<port 'http'>/metrics` of each ready engine pod (kube/metrics.py):
   the engines' own queues, KV-cache usage and token counters.

No ready router pod, or none answering, is a *failed* read (the autoscaler holds the replicas
and says why in status.autoscaler); some router pods or engines silent is a *partial* read (no
scale-down). A silent source is never read as 0.

A Ready engine pod that answered before and has not answered its /metrics on
`UNREACHABLE_AFTER_MISSES` consecutive reads, or has not answered this read while no answering
router lists it among its healthy workers (`workerUrls`), is *unreachable*
(`DemandSample.unreachable`): the node under it may be lost, which Kubernetes shows only after
its node-monitor grace period (about 40 s) by setting the pod's Ready=False. The status does not
count it as ready (docs/architecture.md, Unreachable replicas). The misses, and which pods have
answered, are kept per endpoint in the collector's memory. A pod that never answered (a network
policy, a simulated node) stays a partial read.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..autoscale.arrivals import ArrivalRecord, CounterReading
from ..autoscale.demand import DemandSample, ReplicaLoad
from ..rollout_analysis import WindowReading
from .metrics import TIMEOUT_SECONDS, EngineReading, http_get, metrics_target

DEMAND_PORT_NAME = "demand"
DEMAND_PATH = "/demand"
DEMAND_VERSION = 1
UNREACHABLE_AFTER_MISSES = 2
"""Consecutive reads a Ready engine pod must miss to count as unreachable (one slow scrape is
not enough)."""
MISS_GAP_SECONDS = 2.0
"""Misses closer together than this count once (passes in one burst of pod events)."""


@dataclass(frozen=True)
class FrontReading:
    """One router pod's /demand answer (the fields the autoscaler uses)."""

    held: int
    queued: int
    in_flight: int
    arrivals_total: int
    start_time: float
    workers: int
    router_up: bool
    responses_total: int = 0
    responses_5xx_total: int = 0
    worker_urls: tuple[str, ...] | None = None
    """The router's healthy workers (None from a front that does not report them)."""


def parse_front(text: str) -> FrontReading:
    """A /demand body; ValueError naming what is wrong with it."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != DEMAND_VERSION:
        raise ValueError(f"not a version {DEMAND_VERSION} demand report")

    def count(key: str) -> int:
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key}: expected a non-negative integer, got {value!r}")
        return value

    def optional_count(key: str) -> int:  # absent from fronts older than the canary analysis
        return count(key) if key in data else 0

    start = data.get("startTime")
    if not isinstance(start, int | float) or isinstance(start, bool):
        raise ValueError(f"startTime: expected a number, got {start!r}")
    router = data.get("router")
    return FrontReading(
        held=count("held"),
        queued=count("queued"),
        in_flight=count("inFlight"),
        arrivals_total=count("arrivalsTotal"),
        start_time=float(start),
        workers=count("workers"),
        router_up=bool(isinstance(router, dict) and router.get("up")),
        responses_total=optional_count("responsesTotal"),
        responses_5xx_total=optional_count("responses5xxTotal"),
        worker_urls=_urls(data.get("workerUrls")),
    )


def _urls(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise ValueError(f"workerUrls: expected a list of strings, got {value!r}")
    return tuple(value)


def read_front(ip: str, port: int, *, timeout: float = TIMEOUT_SECONDS) -> FrontReading | str:
    """One router pod's reading, or why there is none."""
    try:
        return parse_front(http_get(ip, port, DEMAND_PATH, timeout=timeout))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{ip}:{port}: {exc or type(exc).__name__}"


class DemandReader(Protocol):
    """Reads an endpoint's demand (kube/collector.DemandCollector; tests pass scripted ones)."""

    def read(
        self,
        key: tuple[str, str],
        *,
        routers: Sequence[dict[str, Any]],
        engines: Sequence[dict[str, Any]],
        now: float,
    ) -> DemandSample: ...

    def read_window(
        self,
        key: tuple[str, str],
        *,
        window: str,
        canary: Sequence[dict[str, Any]],
        baseline: Sequence[dict[str, Any]],
        routers: Sequence[dict[str, Any]],
        now: float,
    ) -> WindowReading | str:
        """The canary analysis' window so far: counters added since the first read of
        `window` (a name for one canary replica of one revision), or why there is none."""
        ...

    def forget(self, key: tuple[str, str]) -> None: ...


def sample_from(
    *,
    fronts: Sequence[FrontReading | str],
    engines: Sequence[EngineReading | None],
    ready_engines: int,
    starting_engines: int,
    ready_routers: int,
    record: ArrivalRecord,
    keys: Sequence[str],
    now: float,
    unreachable: Sequence[str] = (),
) -> DemandSample:
    """Combine one pass's readings (pure; `keys` are the router pods' uids, as `fronts`;
    `unreachable` the Ready engine pods judged unreachable, `unreachable_pods`)."""
    answered = [(k, f) for k, f in zip(keys, fronts, strict=True) if isinstance(f, FrontReading)]
    errors = [f for f in fronts if isinstance(f, str)]
    if ready_routers == 0:
        return DemandSample(
            router_ok=False, error="no router pod is ready", unreachable=tuple(unreachable)
        )
    if not answered:
        return DemandSample(
            router_ok=False,
            error="no router pod answered: " + "; ".join(errors)[:500],
            unreachable=tuple(unreachable),
        )
    record.observe(now, {k: CounterReading(f.start_time, f.arrivals_total) for k, f in answered})
    readings = [e for e in engines if e is not None]
    successes = sum(e.successes for e in readings)
    return DemandSample(
        router_ok=True,
        queued=sum(f.held + f.queued for _, f in answered),
        in_flight=sum(f.in_flight for _, f in answered),
        arrival_rate=record.rate(now),
        rate_window_seconds=record.rate_window,
        trend=record.trend(now),
        replicas=[
            ReplicaLoad(
                in_flight=round(e.running + e.waiting),
                waiting=round(e.waiting),
                kv_usage=e.kv_usage,
            )
            for e in readings
        ],
        ready_replicas=ready_engines,
        starting_replicas=starting_engines,
        mean_prompt_tokens=sum(e.prompt_tokens for e in readings) / successes
        if successes
        else None,
        mean_output_tokens=sum(e.generation_tokens for e in readings) / successes
        if successes
        else None,
        silent_routers=len(errors),
        error="; ".join(errors)[:500] or None,
        unreachable=tuple(unreachable),
    )


Miss = tuple[int, float]
"""(consecutive reads missed, when the last of them was counted)."""


def count_misses(
    previous: Mapping[str, Miss],
    *,
    ready: Iterable[str],
    silent: Iterable[str],
    answered: Collection[str] | None = None,
    now: float = 0.0,
    min_gap: float = 0.0,
) -> dict[str, Miss]:
    """Consecutive reads each Ready engine pod (by name) has not answered, after this read: a
    silent pod's count goes up by one, unless its last counted miss is less than `min_gap`
    seconds old (reads in one burst of events are one read); a pod that answered or is no
    longer Ready is dropped. With `answered` (the pods that have answered a read since they
    became Ready), only those are counted: a pod the operator never reached (a network policy,
    a simulated node) is a partial read, not a lost node."""
    quiet = set(silent)
    out: dict[str, Miss] = {}
    for name in ready:
        if name not in quiet or (answered is not None and name not in answered):
            continue
        count, at = previous.get(name, (0, now))
        out[name] = (count, at) if count and now - at < min_gap else (count + 1, now)
    return out


def unreachable_pods(
    misses: Mapping[str, Miss],
    *,
    unrouted: Iterable[str] = (),
    threshold: int = UNREACHABLE_AFTER_MISSES,
) -> tuple[str, ...]:
    """The pods that count as unreachable (sorted): silent on `threshold` consecutive reads, or
    silent now (a count of at least 1) and in `unrouted` (no answering router routes to it)."""
    dropped = set(unrouted)
    return tuple(
        sorted(n for n, (c, _) in misses.items() if c >= threshold or (c >= 1 and n in dropped))
    )


def not_routed(
    pods: Mapping[str, tuple[str, int]], fronts: Iterable[FrontReading | str]
) -> set[str]:
    """The pods (name → metrics target) that no answering router lists among its healthy
    workers; empty when no answering front reports its workers (nothing is known)."""
    reported = [f.worker_urls for f in fronts if isinstance(f, FrontReading)]
    lists = [set(urls) for urls in reported if urls is not None]
    if not lists:
        return set()
    return {
        name
        for name, (ip, port) in pods.items()
        if not any(f"http://{ip}:{port}" in urls for urls in lists)
    }


def canary_not_routed(
    canary: Sequence[dict[str, Any]], fronts: Iterable[FrontReading]
) -> str | None:
    """Why the canary's window cannot start yet: a router that answered does not list the
    canary replica among its healthy workers (vllm-router adds a new pod after its own health
    poll, up to 30 s after the pod is Ready). None when every answering front lists it, or
    does not report its workers."""
    urls = {f"http://{t[0]}:{t[1]}" for t in map(metrics_target, canary) if t is not None}
    answered = [f for f in fronts if f.worker_urls is not None]
    routed = sum(1 for f in answered if urls & set(f.worker_urls or ()))
    if routed < len(answered):
        return (
            f"the routers have not added the canary replica yet ({routed}/{len(answered)} "
            "route to it)"
        )
    return None
