"""The demand collector: the routers' /demand and the engines' /metrics, read in the background.

A reconcile pass used to read every router and engine of its endpoint over HTTP, so a silent
pod held a pass worker for the read timeout, on every pass. Now a collector thread reads them
every `SCRAPE_SECONDS` (10 s, `MAGISTRAL_SCRAPE_SECONDS`), and a pass takes the latest readings
from memory (`read`, `read_window`: the `kube/demand.DemandReader` the reconcile is given):

- **What is read.** The targets a pass hands over: its endpoint's Ready router pods (port
  `demand`) and Ready engine pods (port `http`). A pass that sees a target the collector has
  never read (a pod just Ready) reads that one at once, so the status never calls a read
  failed or partial only because the collector has not come round yet; a pass never re-reads
  a pod it has read before.
- **One GET per engine pod** gives the autoscaler's gauges and, while the endpoint has a canary
  window open, the analysis' counters from the same page.
- **Lost nodes.** Consecutive misses of a Ready engine pod are counted per collector round
  (`count_misses`); after a first miss the endpoint is read again after `RECHECK_SECONDS`
  (5 s, `MAGISTRAL_RECHECK_SECONDS`) instead of a whole period, and a second miss makes the pod
  unreachable (`unreachable_pods`, docs/architecture.md "Unreachable replicas").
- **Passes when it matters.** After each round the collector compares what the autoscaler and
  the status depend on (`Signal`: whether a router answered, ok/partial/failed, queued or not,
  the unreachable pods, the routers' worker lists) with what the endpoint's last pass saw, and
  calls `on_change(key)` when it differs: the operator queues that endpoint's pass. A steady
  endpoint gets no extra pass; its resync still runs every 30 s.

The collector forgets an endpoint when it is deleted (`forget`) and reads nothing while the
process is not the leader (`start(active=...)`).
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..autoscale.arrivals import ArrivalRecord
from ..autoscale.demand import DemandSample
from ..rollout_analysis import Counters, RouterCounts, WindowReading, WindowTracker
from .demand import (
    DEMAND_PORT_NAME,
    MISS_GAP_SECONDS,
    UNREACHABLE_AFTER_MISSES,
    FrontReading,
    Miss,
    canary_not_routed,
    count_misses,
    not_routed,
    read_front,
    sample_from,
    unreachable_pods,
)
from .metrics import (
    TIMEOUT_SECONDS,
    EngineReading,
    http_get,
    metrics_target,
    parse_counters,
    parse_sample,
    pod_ready,
)

log = logging.getLogger(__name__)

SCRAPE_SECONDS = float(os.environ.get("MAGISTRAL_SCRAPE_SECONDS", "10"))
"""How often every endpoint's routers and engines are read."""
RECHECK_SECONDS = float(os.environ.get("MAGISTRAL_RECHECK_SECONDS", "5"))
"""How soon an endpoint with a Ready engine that missed its last read is read again."""
SCRAPE_WORKERS = 16
"""Threads reading pods in the rounds (a silent pod holds one for the read timeout)."""
FILL_WORKERS = 8
"""Threads reading the pods a pass sees first (apart, so a pass never waits behind a round)."""
WINDOW_COUNTERS_SECONDS = 300.0
"""An endpoint's engine pages are parsed for the analysis' counters for this long after its
last canary-window read (the counters are parsed only while a window may be open)."""

Target = tuple[str, str, int]
"""(router uid or engine pod name, IP, port)."""


@dataclass(frozen=True)
class EngineScrape:
    """One engine pod's /metrics page: the gauges, and the analysis' counters if asked for."""

    reading: EngineReading | None
    counters: Counters | None = None


def scrape_engine(
    ip: str, port: int, *, counters: bool, timeout: float = TIMEOUT_SECONDS
) -> EngineScrape | None:
    """One GET of an engine pod's /metrics; None when it does not answer (or answers garbage)."""
    try:
        text = http_get(ip, port, "/metrics", timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("scraping %s:%s failed: %s", ip, port, exc)
        return None
    try:
        return EngineScrape(parse_sample(text), parse_counters(text) if counters else None)
    except ValueError as exc:  # not a Prometheus page
        log.debug("%s:%s: not a metrics page: %s", ip, port, exc)
        return None


@dataclass(frozen=True)
class Signal:
    """What a pass would act on differently (the collector queues a pass when it changes)."""

    router_answered: bool
    read: str
    queued: bool
    unreachable: tuple[str, ...]
    routed: tuple[str, ...] | None


def signal_of(
    fronts: Iterable[FrontReading | str],
    engines: Iterable[EngineScrape | None],
    unreachable: Sequence[str],
) -> Signal:
    """The signal of one endpoint's readings (pure)."""
    fronts, engines = list(fronts), list(engines)
    answered = [f for f in fronts if isinstance(f, FrontReading)]
    silent = len(answered) < len(fronts) or any(e is None or e.reading is None for e in engines)
    lists = [f.worker_urls for f in answered if f.worker_urls is not None]
    return Signal(
        router_answered=bool(answered),
        read="failed" if not answered else "partial" if silent else "ok",
        queued=any(f.held + f.queued > 0 for f in answered),
        unreachable=tuple(sorted(unreachable)),
        routed=tuple(sorted({u for urls in lists for u in urls})) if lists else None,
    )


@dataclass(frozen=True)
class RoundReport:
    """How one collector round went."""

    seconds: float
    endpoints: int
    routers_answered: int
    routers_silent: int
    engines_answered: int
    engines_silent: int


@dataclass
class _Endpoint:
    """What the collector keeps of one endpoint."""

    fronts: dict[str, Target] = field(default_factory=dict)
    engines: dict[str, Target] = field(default_factory=dict)
    front_readings: dict[Target, FrontReading | str] = field(default_factory=dict)
    engine_readings: dict[Target, EngineScrape | None] = field(default_factory=dict)
    misses: dict[str, Miss] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    unreachable: tuple[str, ...] = ()
    record: ArrivalRecord = field(default_factory=ArrivalRecord)
    window: tuple[str, WindowTracker] | None = None
    window_read_at: float | None = None
    due: float = 0.0
    read_at: float = 0.0
    """When its pods were last read (the canary window's clock)."""
    seen: Signal | None = None
    """The signal as the endpoint's last pass saw it."""

    def current_fronts(self) -> list[FrontReading | str]:
        return [self.front_readings.get(t, "not read yet") for t in self.fronts.values()]

    def current_engines(self) -> list[EngineScrape | None]:
        return [self.engine_readings.get(t) for t in self.engines.values()]

    def signal(self) -> Signal:
        return signal_of(self.current_fronts(), self.current_engines(), self.unreachable)


def _front_targets(routers: Sequence[dict[str, Any]]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for r in routers:
        t = metrics_target(r, port_name=DEMAND_PORT_NAME)
        if t is not None:
            key = str(r["metadata"].get("uid") or r["metadata"]["name"])
            out[key] = (key, t[0], t[1])
    return out


def _engine_targets(engines: Sequence[dict[str, Any]]) -> dict[str, Target]:
    out: dict[str, Target] = {}
    for e in engines:
        t = metrics_target(e)
        if t is not None:
            name = str(e["metadata"]["name"])
            out[name] = (name, t[0], t[1])
    return out


def _no_counters(state: _Endpoint, target: Target) -> bool:
    """The target's last page was read without the analysis' counters."""
    scrape = state.engine_readings.get(target)
    return scrape is not None and scrape.counters is None


def _starting(pod: dict[str, Any]) -> bool:
    """Created and not Ready yet (scheduled or not), and not being deleted."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    return not pod_ready(pod)


class DemandCollector:
    """Reads the endpoints' fronts and engines in the background; passes read its memory."""

    def __init__(
        self,
        *,
        interval: float = SCRAPE_SECONDS,
        recheck: float = RECHECK_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
        workers: int = SCRAPE_WORKERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.recheck = min(recheck, interval)
        self.timeout = timeout
        self.clock = clock
        self.on_change: Callable[[tuple[str, str]], None] | None = None
        self.on_round: Callable[[RoundReport], None] | None = None
        """Told how each round went (the operator's metrics)."""
        self.rounds = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demand-round")
        self._fill_pool = ThreadPoolExecutor(
            max_workers=FILL_WORKERS, thread_name_prefix="demand-fill"
        )
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading pods ------------------------------------------------------------------------

    def _read_fronts(
        self, targets: Iterable[Target], pool: ThreadPoolExecutor
    ) -> dict[Target, FrontReading | str]:
        todo = list(dict.fromkeys(targets))
        found = pool.map(lambda t: read_front(t[1], t[2], timeout=self.timeout), todo)
        return dict(zip(todo, found, strict=True))

    def _read_engines(
        self, targets: Iterable[tuple[Target, bool]], pool: ThreadPoolExecutor
    ) -> dict[Target, EngineScrape | None]:
        todo = list(dict.fromkeys(targets))
        found = pool.map(
            lambda tc: scrape_engine(tc[0][1], tc[0][2], counters=tc[1], timeout=self.timeout),
            todo,
        )
        return {t: r for (t, _), r in zip(todo, found, strict=True)}

    def _wants_counters(self, state: _Endpoint, now: float) -> bool:
        at = state.window_read_at
        return at is not None and now - at < WINDOW_COUNTERS_SECONDS

    # --- the background rounds ---------------------------------------------------------------

    def collect(self, *, due_only: bool = True) -> list[tuple[str, str]]:
        """One round: read the targets of every endpoint that is due (every endpoint, without
        `due_only`), count the misses, and report the endpoints whose signal changed since
        their last pass (`on_change` is called for each). Returns those endpoints."""
        now = self.clock()
        with self._guard:
            due = {
                key: state
                for key, state in self._endpoints.items()
                if (state.fronts or state.engines) and (not due_only or state.due <= now)
            }
            if not due:
                return []
            fronts = [t for s in due.values() for t in s.fronts.values()]
            engines = [
                (t, self._wants_counters(s, now)) for s in due.values() for t in s.engines.values()
            ]
        front_found = self._read_fronts(fronts, self._pool)
        engine_found = self._read_engines(engines, self._pool)
        report = RoundReport(
            seconds=self.clock() - now,
            endpoints=len(due),
            routers_answered=sum(isinstance(f, FrontReading) for f in front_found.values()),
            routers_silent=sum(not isinstance(f, FrontReading) for f in front_found.values()),
            engines_answered=sum(
                e is not None and e.reading is not None for e in engine_found.values()
            ),
            engines_silent=sum(e is None or e.reading is None for e in engine_found.values()),
        )
        changed: list[tuple[str, str]] = []
        with self._guard:
            self.rounds += 1
            for key, state in due.items():
                if self._endpoints.get(key) is not state:  # forgotten meanwhile
                    continue
                state.front_readings.update(
                    (t, r) for t, r in front_found.items() if t in state.fronts.values()
                )
                state.engine_readings.update(
                    (t, r) for t, r in engine_found.items() if t in state.engines.values()
                )
                state.read_at = now
                self._count_misses(state, now)
                state.due = now + (self.recheck if self._suspect(state) else self.interval)
                if state.seen is not None and state.signal() != state.seen:
                    changed.append(key)
        if self.on_round is not None:
            self.on_round(report)
        for key in changed:
            if self.on_change is not None:
                try:
                    self.on_change(key)
                except Exception:
                    log.exception("queueing the pass of %s/%s failed", *key)
        return changed

    def _count_misses(self, state: _Endpoint, now: float) -> None:
        silent = {
            name: (t[1], t[2])
            for name, t in state.engines.items()
            if (r := state.engine_readings.get(t)) is None or r.reading is None
        }
        state.misses = count_misses(
            state.misses,
            ready=state.engines,
            silent=silent,
            answered=state.answered,
            now=now,
            min_gap=MISS_GAP_SECONDS,
        )
        state.answered = {n for n in state.engines if n in state.answered or n not in silent}
        state.unreachable = unreachable_pods(
            state.misses, unrouted=not_routed(silent, state.current_fronts())
        )

    @staticmethod
    def _suspect(state: _Endpoint) -> bool:
        return any(0 < n < UNREACHABLE_AFTER_MISSES for n, _ in state.misses.values())

    def suspects(self) -> list[tuple[str, str]]:
        """The endpoints with a Ready engine pod that missed its last read but is not judged
        unreachable yet (read again after `recheck` seconds)."""
        with self._guard:
            return sorted(k for k, s in self._endpoints.items() if self._suspect(s))

    def start(self, *, active: Callable[[], bool] = lambda: True) -> None:
        """Run rounds in a thread until `stop`, while `active()` (the process leads)."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, args=(active,), name="demand-collector", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _next_due(self) -> float:
        with self._guard:
            dues = [s.due for s in self._endpoints.values() if s.fronts or s.engines]
        return min(dues, default=self.clock() + self.interval)

    def _loop(self, active: Callable[[], bool]) -> None:
        while not self._stop.is_set():
            wait = max(0.0, min(self._next_due() - self.clock(), 1.0))
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not active():
                continue
            try:
                self.collect()
            except Exception:
                log.exception("demand collector round failed")

    # --- what the passes read ----------------------------------------------------------------

    def _state(self, key: tuple[str, str]) -> _Endpoint:
        return self._endpoints.setdefault(key, _Endpoint(due=self.clock() + self.interval))

    def _fill(self, key: tuple[str, str], *, counters: Sequence[Target] = ()) -> None:
        """Read at once the targets of `key` never read (and the `counters` pods' analysis
        counters, when the last page read had none): a pass never reports a pod the collector
        has not come round to as silent."""
        now = self.clock()
        with self._guard:
            state = self._state(key)
            fronts = [t for t in state.fronts.values() if t not in state.front_readings]
            want = self._wants_counters(state, now)
            engines = [
                (t, want)
                for t in state.engines.values()
                if t not in state.engine_readings or (t in counters and _no_counters(state, t))
            ]
        if not fronts and not engines:
            return
        front_found = self._read_fronts(fronts, self._fill_pool)
        engine_found = self._read_engines(engines, self._fill_pool)
        with self._guard:
            if self._endpoints.get(key) is not state:
                return
            state.front_readings.update(front_found)
            state.engine_readings.update(engine_found)
            state.read_at = now
            # A first reading counts no miss (the pod has not answered before); one that
            # answered joins the pods whose silence would count.
            state.answered |= {
                t[0] for t, r in engine_found.items() if r is not None and r.reading is not None
            }

    def _targets(
        self,
        key: tuple[str, str],
        *,
        routers: Sequence[dict[str, Any]],
        engines: Sequence[dict[str, Any]],
        replace: bool,
    ) -> None:
        with self._guard:
            state = self._state(key)
            fronts, pods = _front_targets(routers), _engine_targets(engines)
            if replace:  # readings of pods that went (or changed IP) go too
                state.fronts, state.engines = fronts, pods
                for t in [t for t in state.front_readings if t not in fronts.values()]:
                    del state.front_readings[t]
                for t in [t for t in state.engine_readings if t not in pods.values()]:
                    del state.engine_readings[t]
            else:
                state.fronts.update(fronts)
                state.engines.update(pods)

    def read(
        self,
        key: tuple[str, str],
        *,
        routers: Sequence[dict[str, Any]],
        engines: Sequence[dict[str, Any]],
        now: float,
    ) -> DemandSample:
        """The endpoint's demand from the latest readings of its current Ready pods (these
        become the targets of the next rounds)."""
        self._targets(key, routers=routers, engines=engines, replace=True)
        self._fill(key)
        with self._guard:
            state = self._state(key)
            fronts = state.current_fronts()
            scrapes = state.current_engines()
            ready_routers = len(state.fronts)
            unreachable = tuple(n for n in state.unreachable if n in state.engines)
            state.seen = state.signal()
            keys = list(state.fronts)
            record = state.record
        return sample_from(
            fronts=fronts,
            engines=[s.reading if s is not None else None for s in scrapes],
            ready_engines=sum(1 for e in engines if pod_ready(e)),
            starting_engines=sum(1 for e in engines if _starting(e)),
            ready_routers=ready_routers,
            record=record,
            keys=keys,
            now=now,
            unreachable=unreachable,
        )

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
        """The analysis counters of the canary and baseline pods and the fronts, as the
        difference since the window's first read (the tracker is kept per endpoint)."""
        self._targets(key, routers=routers, engines=[*canary, *baseline], replace=False)
        with self._guard:
            state = self._state(key)
            state.window_read_at = self.clock()
            pods = _engine_targets([*canary, *baseline])
        self._fill(key, counters=list(pods.values()))

        def counters(of: Sequence[dict[str, Any]]) -> dict[str, Counters]:
            out = {}
            for name, target in _engine_targets(of).items():
                scrape = state.engine_readings.get(target)
                if scrape is not None and scrape.counters is not None:
                    out[name] = scrape.counters
            return out

        with self._guard:
            canary_now, baseline_now = counters(canary), counters(baseline)
            if not canary_now:
                return "the canary replica's /metrics did not answer"
            readings = {
                k: f
                for k, t in _front_targets(routers).items()
                if isinstance(f := state.front_readings.get(t), FrontReading)
            }
            fronts = {
                k: RouterCounts(float(f.responses_total), float(f.responses_5xx_total))
                for k, f in readings.items()
            }
            held = state.window
            if held is None or held[0] != window:
                waiting = canary_not_routed(canary, readings.values())
                if waiting:
                    return waiting
                tracker = WindowTracker(
                    now=state.read_at, canary=canary_now, baseline=baseline_now, routers=fronts
                )
                state.window = (window, tracker)
            else:
                tracker = held[1]
            at = state.read_at
        return tracker.reading(now=at, canary=canary_now, baseline=baseline_now, routers=fronts)

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a deleted endpoint: its targets, readings and records."""
        with self._guard:
            self._endpoints.pop(key, None)
