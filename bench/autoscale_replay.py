"""Replay a request trace through one engine + router model, driven by each autoscaling policy.

    .venv/bin/python bench/autoscale_replay.py ../shared/data/traces/azure-llm-2023-code.csv

A discrete-event model in simulated time (no sleeping, no cluster), the same for every policy:

- **Router.** Every request enters one central FIFO queue. The head of the queue goes to the
  ready replica with the fewest requests in flight that has a free slot: fewer than
  `--max-num-seqs` in flight and room in its KV cache for the request's prompt + output tokens
  (reserved until it finishes). With no ready replica the router holds requests (scale from
  zero). A replica being removed takes nothing new and drains what it holds.
- **Engine (H100-like replica of Magistral Small, bf16, TP 1).** KV cache 171,000 tokens,
  256 sequences. Prefill is compute-bound: 2 x 23.6 B parameters ≈ 47 GFLOP per prompt token;
  at ~48 % of the H100 SXM's 989 dense bf16 TFLOP/s that is 10,000 prompt tokens/s, served
  first-come first-served (vLLM's scheduler with chunked prefill continues prefills in arrival
  order). Decode is memory-bound: one step reads the 47.1 GB of weights at ~80 % of 3.35 TB/s
  (17.6 ms) plus the resident KV cache (160 KiB per token: 0.061 ms per 1,000 tokens), fixed
  when the request enters the engine. Decode steps and prefill chunks share the GPU in one
  batch (chunked prefill), so neither slows the other here; prefix caching is not modelled.
- **Times.** Queue wait = arrival → start of the request's prefill (router queue + engine
  queue; vLLM's `request_queue_time` plus the router's). TTFT = arrival → end of prefill (the
  first token is sampled by the last prefill chunk).
- **Replicas.** A new replica is ready `cold start` seconds after the policy asks for it; a
  removed one is a starting one first, else the ready one with the fewest in flight. A replica
  costs GPU time from creation until it has drained.

Policies, each evaluated every pass on what it would see in a cluster:

- `demand`: `autoscale/demand.py` with its defaults, fed by the router every 15 s: queued, in
  flight, the arrival rate over the last 60 s, the trend from the rates of the last two 300 s
  windows, per-replica in flight / waiting / KV usage, token means over the last 5 minutes;
  `startupSeconds` is the run's cold start. `demand, no trend` is the same with maxGrowth 1:
  the difference is what the cold-start headroom costs.
- `keda`: the vLLM production-stack KEDA guide: `vllm:num_requests_waiting` (router queue +
  engine queues) with threshold 5 (AverageValue: desired = ceil(waiting / 5), HPA tolerance
  10 %), polled every 15 s, HPA default behaviour (up: +100 % or +4 pods per 15 s, no
  stabilisation; down: highest recommendation of the last 300 s), and the guide's 360 s
  cooldown read as "no scale-down within 360 s of a scale-up".
- `kubeai`: KubeAI's autoscaler with its defaults: every 10 s, the active requests (in
  flight + held by its proxy) enter a 10-minute simple moving average (60 samples, starting
  at zeros), desired = ceil(average / targetRequests 100), scale-down after 3 consecutive
  signals (scaleDownDelaySeconds 30 / interval 10 s).
- The two baselines are also run with tuned thresholds (`--keda-thresholds`,
  `--kubeai-targets`); the cheapest one meeting the objective is shown (else the closest).
- `fixed N`: the smallest N (searched) whose post-warm-up share of waits ≤ 10 s is ≥ 99 %,
  all ready from the start, and N-1 for comparison.

Runs: the trace at its own load and at 5x (five copies superimposed, shifted by a fifth of
the trace's length each and wrapped, so the length and the burstiness stay), cold starts
120 s and 300 s, autoscalers starting from one ready replica; figures count requests
arriving after the warm-up (`--warmup`, 600 s) and GPU-hours between the warm-up and the last
arrival; every policy within 1..16 replicas (`--min-replicas`, `--max-replicas`). Under
each table, the issue's goal for the demand policy is checked. `--speedup` compresses arrival
times (the old option; 1 by default); `--ramp` thins the load to grow linearly instead.

Trace formats: the Azure CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`) or Mooncake JSONL
(`timestamp` in ms from the first request, `input_length`, `output_length`; `hash_ids` is
ignored), told apart by content.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from magistral_operator.autoscale import demand

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
OBJECTIVE_WAIT_S = 10.0
OBJECTIVE_SHARE = 0.99


# --- the trace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trace:
    """Requests sorted by arrival (seconds from the first), with their token counts."""

    name: str
    arrival: list[float]
    prompt: list[int]
    output: list[int]

    @property
    def span(self) -> float:
        return self.arrival[-1] if self.arrival else 0.0

    def __len__(self) -> int:
        return len(self.arrival)


def _azure_seconds(stamp: str) -> float:
    head, _, frac = stamp.strip().partition(".")
    when = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return when.timestamp() + (float(f"0.{frac}") if frac else 0.0)


def load_trace(path: Path) -> Trace:
    """An Azure CSV or Mooncake JSONL trace (told apart by its first character)."""
    text = path.read_text()
    rows: list[tuple[float, int, int]] = []
    if text.lstrip().startswith("{"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            try:
                rows.append(
                    (float(r["timestamp"]) / 1000, int(r["input_length"]), int(r["output_length"]))
                )
            except KeyError as missing:
                raise SystemExit(f"{path}:{n}: Mooncake record without {missing}") from None
    else:
        for n, r in enumerate(csv.DictReader(text.splitlines()), 2):
            try:
                stamp, ctx, gen = r["TIMESTAMP"], r["ContextTokens"], r["GeneratedTokens"]
            except KeyError as missing:
                raise SystemExit(f"{path}:{n}: Azure CSV row without {missing}") from None
            rows.append((_azure_seconds(stamp), int(ctx), int(gen)))
    if not rows:
        raise SystemExit(f"{path}: no requests")
    rows.sort()
    t0 = rows[0][0]
    return Trace(
        name=path.name,
        arrival=[t - t0 for t, _, _ in rows],
        prompt=[max(1, p) for _, p, _ in rows],
        output=[max(1, o) for _, _, o in rows],
    )


def scale_trace(trace: Trace, copies: int, speedup: float = 1.0) -> Trace:
    """`copies` of the trace superimposed, each shifted by span/copies and wrapped; then time
    compressed by `speedup`."""
    span = trace.span or 1.0
    rows = [
        (((t + k * span / copies) % span if k else t) / speedup, p, o)
        for k in range(copies)
        for t, p, o in zip(trace.arrival, trace.prompt, trace.output, strict=True)
    ]
    rows.sort()
    name = trace.name + (f" x{copies}" if copies > 1 else "")
    name += f" speedup {speedup:g}" if speedup != 1 else ""
    return Trace(
        name=name,
        arrival=[r[0] for r in rows],
        prompt=[r[1] for r in rows],
        output=[r[2] for r in rows],
    )


# --- the engine and router model ------------------------------------------------------------


@dataclass(frozen=True)
class Engine:
    """One replica (see the module docstring for the figures)."""

    kv_tokens: int = 171_000
    max_num_seqs: int = 256
    prefill_tokens_per_s: float = 10_000.0
    decode_step_s: float = 0.0176
    decode_s_per_kv_token: float = 0.061e-6


class Replica:
    __slots__ = (
        "created",
        "draining",
        "ident",
        "in_flight",
        "kv",
        "prefill_free",
        "ready_at",
        "removed_at",
        "starts",
    )

    def __init__(self, ident: int, created: float, ready_at: float) -> None:
        self.ident = ident
        self.created = created
        self.ready_at = ready_at
        self.draining = False
        self.removed_at: float | None = None
        self.in_flight = 0
        self.kv = 0
        self.prefill_free = 0.0
        self.starts: deque[float] = deque()  # prefill start times, FCFS, not yet begun

    def waiting(self, now: float) -> int:
        starts = self.starts
        while starts and starts[0] <= now:
            starts.popleft()
        return len(starts)


@dataclass
class View:
    """What a policy may read at a pass."""

    now: float
    replicas: list[Replica]  # not draining, ready or starting
    queued: int
    in_flight: int
    arrivals: list[float]  # arrival times of requests that reached the router, in order
    arrived: int  # how many of `arrivals` are before now
    trace: Trace
    engine: Engine

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas if r.ready_at <= self.now]


class Controller:
    """A policy: `interval` seconds between passes; `desired(view)` the replicas it wants."""

    label = "policy"
    interval = 15.0

    def desired(self, view: View, current: int) -> int:
        raise NotImplementedError


@dataclass
class RunResult:
    label: str
    waits: list[float]
    ttfts: list[float]
    gpu_hours: float
    peak: int
    scale_events: int
    events: list[str] = field(default_factory=list)

    def share_within(self, seconds: float) -> float:
        if not self.waits:
            return 1.0
        return sum(1 for w in self.waits if w <= seconds) / len(self.waits)

    @property
    def meets_objective(self) -> bool:
        return self.share_within(OBJECTIVE_WAIT_S) >= OBJECTIVE_SHARE


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def simulate(
    trace: Trace,
    controller: Controller | None,
    *,
    engine: Engine,
    cold_start: float,
    initial: int,
    warmup: float,
    max_replicas: int,
) -> RunResult:
    """One run. `controller` None is a fixed fleet of `initial` replicas."""
    arrival, prompt, output = trace.arrival, trace.prompt, trace.output
    n = len(arrival)
    kv_cap, max_seqs = engine.kv_tokens, engine.max_num_seqs
    rate = engine.prefill_tokens_per_s
    step, step_kv = engine.decode_step_s, engine.decode_s_per_kv_token
    waits = [0.0] * n
    ttfts = [0.0] * n
    ids = itertools.count()
    replicas: list[Replica] = [Replica(next(ids), -cold_start, 0.0) for _ in range(initial)]
    active: list[Replica] = list(replicas)  # not draining
    ready: list[Replica] = list(replicas)  # active and ready
    queue: deque[int] = deque()
    heap: list[tuple[float, int, int, object]] = []  # (time, seq, kind, payload)
    seq = itertools.count()
    finish_kind, ready_kind, tick_kind = 0, 1, 2
    in_flight_total = 0
    done = 0
    events: list[str] = []
    peak = initial
    scale_events = 0

    def dispatch(now: float) -> None:
        nonlocal in_flight_total
        while queue:
            i = queue[0]
            need = prompt[i] + output[i]
            best: Replica | None = None
            for r in ready:
                if (
                    r.in_flight < max_seqs
                    and r.kv + need <= kv_cap
                    and (best is None or r.in_flight < best.in_flight)
                ):
                    best = r
            if best is None:
                return
            queue.popleft()
            start = best.prefill_free if best.prefill_free > now else now
            end = start + prompt[i] / rate
            best.prefill_free = end
            best.starts.append(start)
            itl = step + step_kv * best.kv
            best.kv += need
            best.in_flight += 1
            in_flight_total += 1
            waits[i] = start - arrival[i]
            ttfts[i] = end - arrival[i]
            heapq.heappush(heap, (end + output[i] * itl, next(seq), finish_kind, (best, need)))

    def resize(now: float, want: int) -> None:
        nonlocal peak, scale_events
        want = max(0, min(max_replicas, want))
        if want == len(active):
            return
        scale_events += 1
        if len(events) < 200:
            events.append(f"t={now / 60:6.1f} min {len(active)}->{want}")
        while len(active) < want:
            r = Replica(next(ids), now, now + cold_start)
            replicas.append(r)
            active.append(r)
            heapq.heappush(heap, (r.ready_at, next(seq), ready_kind, r))
        while len(active) > want:
            starting = [r for r in active if r.ready_at > now]
            if starting:
                victim = max(starting, key=lambda r: r.created)
            else:
                victim = min(active, key=lambda r: (r.in_flight, -r.ident))
            victim.draining = True
            active.remove(victim)
            if victim in ready:
                ready.remove(victim)
            if victim.in_flight == 0:
                victim.removed_at = now
        peak = max(peak, want)

    if controller is not None:
        heapq.heappush(heap, (0.0, next(seq), tick_kind, None))
    next_arrival = 0
    now = 0.0
    while done < n:
        if next_arrival < n and (not heap or arrival[next_arrival] <= heap[0][0]):
            now = arrival[next_arrival]
            queue.append(next_arrival)
            next_arrival += 1
            if ready:
                dispatch(now)
            continue
        if not heap:  # nothing can ever serve the queue (a fixed fleet of 0)
            break
        now, _, kind, payload = heapq.heappop(heap)
        if kind == finish_kind:
            rep, need = payload  # type: ignore[misc]
            rep.in_flight -= 1
            rep.kv -= need
            in_flight_total -= 1
            done += 1
            if rep.draining:
                if rep.in_flight == 0:
                    rep.removed_at = now
            elif queue:
                dispatch(now)
        elif kind == ready_kind:
            rep = payload  # type: ignore[assignment]
            if not rep.draining:
                ready.append(rep)
                dispatch(now)
        else:
            assert controller is not None
            view = View(
                now=now,
                replicas=active,
                queued=len(queue),
                in_flight=in_flight_total,
                arrivals=arrival,
                arrived=next_arrival,
                trace=trace,
                engine=engine,
            )
            resize(now, controller.desired(view, len(active)))
            if ready and queue:
                dispatch(now)
            heapq.heappush(heap, (now + controller.interval, next(seq), tick_kind, None))
    end = trace.span
    seconds = 0.0
    for r in replicas:
        lo = max(warmup, r.created)
        hi = min(end, r.removed_at if r.removed_at is not None else math.inf)
        seconds += max(0.0, hi - lo)
    kept = [i for i in range(n) if arrival[i] >= warmup]
    return RunResult(
        label=controller.label if controller else f"fixed {initial}",
        waits=[waits[i] for i in kept],
        ttfts=[ttfts[i] for i in kept],
        gpu_hours=seconds / 3600,
        peak=peak,
        scale_events=scale_events,
        events=events,
    )


# --- the policies ---------------------------------------------------------------------------


class DemandPolicy(Controller):
    """autoscale/demand.py fed by the router and the engines."""

    label = "demand (demand.py)"

    def __init__(
        self,
        config: demand.DemandConfig,
        *,
        rate_window: float = 60.0,
        trend_window: float = 300.0,
        token_window: float = 300.0,
    ) -> None:
        self.config = config
        self.rate_window = rate_window
        self.trend_window = trend_window
        self.token_window = token_window
        self.state: demand.DemandState | None = None
        self.interval = 15.0

    def sample(self, view: View) -> demand.DemandSample:
        arrivals, k, now, w = view.arrivals, view.arrived, view.now, self.rate_window
        lo = _first_at_or_after(arrivals, now - w, k)
        tw = self.trend_window
        t1 = _first_at_or_after(arrivals, now - tw, k)
        t0 = _first_at_or_after(arrivals, now - 2 * tw, t1)
        lo_tok = _first_at_or_after(arrivals, now - self.token_window, k)
        count = k - lo_tok
        prompt = sum(view.trace.prompt[lo_tok:k]) / count if count else None
        output = sum(view.trace.output[lo_tok:k]) / count if count else None
        ready = view.ready()
        cap = view.engine.kv_tokens
        return demand.DemandSample(
            router_ok=True,
            queued=view.queued,
            in_flight=view.in_flight,
            arrival_rate=(k - lo) / w,
            trend=demand.ArrivalTrend(
                earlier_rate=(t1 - t0) / tw, recent_rate=(k - t1) / tw, window_seconds=tw
            )
            if now >= 2 * tw
            else None,
            rate_window_seconds=w,
            replicas=[
                demand.ReplicaLoad(
                    in_flight=r.in_flight, waiting=r.waiting(now), kv_usage=r.kv / cap
                )
                for r in ready
            ],
            ready_replicas=len(ready),
            starting_replicas=len(view.replicas) - len(ready),
            mean_prompt_tokens=prompt,
            mean_output_tokens=output,
        )

    def desired(self, view: View, current: int) -> int:
        d = demand.decide(
            current=current,
            sample=self.sample(view),
            config=self.config,
            state=self.state,
            now=EPOCH + timedelta(seconds=view.now),
        )
        self.state = d.state
        return d.desired_replicas


def _first_at_or_after(times: list[float], t: float, hi: int) -> int:
    """Index of the first time ≥ t among times[:hi] (binary search)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if times[mid] < t:
            lo = mid + 1
        else:
            hi = mid
    return lo


class KedaPolicy(Controller):
    """KEDA + HPA on vllm:num_requests_waiting, as the production-stack guide sets it up."""

    label = "KEDA-style"

    def __init__(
        self,
        *,
        min_replicas: int,
        max_replicas: int,
        threshold: float = 5.0,
        interval: float = 15.0,
        stabilisation: float = 300.0,
        cooldown: float = 360.0,
        tolerance: float = 0.1,
    ) -> None:
        self.min, self.max = min_replicas, max_replicas
        self.threshold, self.interval = threshold, interval
        self.stabilisation, self.cooldown, self.tolerance = stabilisation, cooldown, tolerance
        self.history: deque[tuple[float, int]] = deque()
        self.last_up = -math.inf

    def desired(self, view: View, current: int) -> int:
        waiting = view.queued + sum(r.waiting(view.now) for r in view.ready())
        if current and abs(waiting / (self.threshold * current) - 1) <= self.tolerance:
            raw = current
        else:
            raw = math.ceil(waiting / self.threshold)
        raw = max(self.min, min(self.max, raw))
        now = view.now
        self.history.append((now, raw))
        while self.history and self.history[0][0] < now - self.stabilisation:
            self.history.popleft()
        if raw > current:
            want = min(raw, max(2 * current, current + 4))  # HPA default scale-up policies
            self.last_up = now
            return want
        if raw < current:
            if now - self.last_up < self.cooldown:
                return current
            return min(current, max(r for _, r in self.history))
        return current


class KubeAIPolicy(Controller):
    """KubeAI's model autoscaler with its defaults."""

    label = "KubeAI-style"

    def __init__(
        self,
        *,
        min_replicas: int,
        max_replicas: int,
        target_requests: float = 100.0,
        interval: float = 10.0,
        window: float = 600.0,
        scale_down_delay: float = 30.0,
    ) -> None:
        self.min, self.max = min_replicas, max_replicas
        self.target = target_requests
        self.interval = interval
        self.samples: deque[float] = deque([0.0] * math.ceil(window / interval))
        self.required = math.ceil(scale_down_delay / interval)
        self.consecutive = 0

    def desired(self, view: View, current: int) -> int:
        self.samples.popleft()
        self.samples.append(float(view.queued + view.in_flight))
        average = sum(self.samples) / len(self.samples)
        want = max(self.min, min(self.max, math.ceil(average / self.target)))
        if want < current:
            if self.consecutive < self.required:
                self.consecutive += 1
                return current
            return want
        self.consecutive = 0
        return want


# --- the grid -------------------------------------------------------------------------------


def demand_config(
    engine: Engine, *, cold_start: float, min_replicas: int, max_replicas: int, **overrides: float
) -> demand.DemandConfig:
    """The demand policy with its defaults, the engine's capacity and the run's start-up."""
    config = demand.DemandConfig(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        capacity=demand.ReplicaCapacity(
            max_sequences=engine.max_num_seqs,
            kv_tokens=engine.kv_tokens,
            prefill_tokens_per_second=engine.prefill_tokens_per_s,
        ),
        startup_seconds=cold_start,
    )
    return replace(config, **overrides)


def smallest_fixed_fleet(
    run: Callable[[int], RunResult], max_replicas: int
) -> tuple[RunResult | None, RunResult | None]:
    """The smallest N meeting the objective (binary search) and the run at N-1."""
    lo, hi = 1, max_replicas
    results: dict[int, RunResult] = {}
    while lo < hi:
        mid = (lo + hi) // 2
        results[mid] = run(mid)
        if results[mid].meets_objective:
            hi = mid
        else:
            lo = mid + 1
    if lo not in results:
        results[lo] = run(lo)
    if not results[lo].meets_objective:
        return None, None
    below = results.get(lo - 1) or (run(lo - 1) if lo > 1 else None)
    return results[lo], below


def best(results: Sequence[RunResult]) -> RunResult:
    """The cheapest run meeting the objective, else the one closest to it."""
    meeting = [r for r in results if r.meets_objective]
    if meeting:
        return min(meeting, key=lambda r: r.gpu_hours)
    return max(results, key=lambda r: (r.share_within(OBJECTIVE_WAIT_S), -r.gpu_hours))


def row(res: RunResult, note: str = "") -> str:
    return (
        f"| {res.label}{note} | {100 * res.share_within(2):.1f} "
        f"| {100 * res.share_within(10):.2f} "
        f"| {percentile(res.waits, 0.5):.2f} | {percentile(res.waits, 0.99):.1f} "
        f"| {percentile(res.ttfts, 0.5):.2f} | {percentile(res.ttfts, 0.99):.1f} "
        f"| {res.gpu_hours:.2f} | {res.peak} | {res.scale_events} |"
    )


HEADER = (
    "| policy | wait ≤2 s % | wait ≤10 s % | wait p50 s | wait p99 s | TTFT p50 s "
    "| TTFT p99 s | GPU-h | peak | scale events |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def ramp(trace: Trace, floor: float, seed: int = 1) -> Trace:
    """The trace thinned so that its load grows linearly from `floor` to 1 of itself."""
    rng = random.Random(seed)
    span = trace.span or 1.0
    keep = [i for i, t in enumerate(trace.arrival) if rng.random() < floor + (1 - floor) * t / span]
    return Trace(
        name=f"{trace.name} ramp",
        arrival=[trace.arrival[i] for i in keep],
        prompt=[trace.prompt[i] for i in keep],
        output=[trace.output[i] for i in keep],
    )


@dataclass
class Grid:
    """What a run of the grid needs besides the trace."""

    engine: Engine
    warmup: float
    min_replicas: int
    max_replicas: int
    policies: set[str]
    keda_thresholds: list[float]
    kubeai_targets: list[float]
    events: int
    demand_overrides: dict[str, float] = field(default_factory=dict)
    rate_window: float = 60.0
    trend_window: float = 300.0


def run_cold_start(
    trace: Trace, cold: float, grid: Grid, fixed: tuple[RunResult | None, RunResult | None]
) -> list[str]:
    """The table and the goal check for one trace and one cold start."""
    common = {"engine": grid.engine, "warmup": grid.warmup, "max_replicas": grid.max_replicas}
    bounds = {"min_replicas": grid.min_replicas, "max_replicas": grid.max_replicas}

    def run(controller: Controller) -> RunResult:
        return simulate(trace, controller, cold_start=cold, initial=1, **common)

    lines = [f"### {trace.name}, cold start {cold:g} s", "", HEADER]
    shown: list[RunResult] = []
    ours: RunResult | None = None
    if "demand" in grid.policies:
        settings = {**bounds, **grid.demand_overrides}
        windows = {"rate_window": grid.rate_window, "trend_window": grid.trend_window}
        ours = run(DemandPolicy(demand_config(grid.engine, cold_start=cold, **settings), **windows))
        no_trend = DemandPolicy(
            demand_config(grid.engine, cold_start=cold, **{**settings, "max_growth": 1.0}),
            **windows,
        )
        no_trend.label = "demand, no trend (maxGrowth 1)"
        shown += [ours, run(no_trend)]
    baselines: list[RunResult] = []
    for name, thresholds, make in (
        ("keda", grid.keda_thresholds, lambda x: KedaPolicy(threshold=x, **bounds)),
        ("kubeai", grid.kubeai_targets, lambda x: KubeAIPolicy(target_requests=x, **bounds)),
    ):
        if name not in grid.policies:
            continue
        default = run(make(thresholds[0]))
        baselines.append(default)
        shown.append(default)
        tuned = []
        for x in thresholds[1:]:
            policy = make(x)
            policy.label += f", {'threshold' if name == 'keda' else 'targetRequests'} {x:g}"
            tuned.append(run(policy))
        if tuned:
            pick = best(tuned)
            baselines.append(replace(pick))
            pick.label += f" (best of {', '.join(f'{x:g}' for x in thresholds[1:])})"
            shown.append(pick)
    lines += [row(r) for r in shown]
    smallest, below = fixed
    if smallest is not None:
        lines.append(row(smallest, " (smallest meeting the objective)"))
        if below is not None:
            lines.append(row(below))
    elif "fixed" in grid.policies:
        lines.append(f"| no fixed fleet up to {grid.max_replicas} meets the objective |")
    if ours is not None:
        lines += ["", goal_check(ours, baselines, smallest)]
    for res in shown:
        if grid.events and res.events:
            lines += ["", f"{res.label}: first scale events"]
            lines += [f"  {e}" for e in res.events[: grid.events]]
    return lines


def goal_check(ours: RunResult, baselines: list[RunResult], fixed: RunResult | None) -> str:
    """The issue's goal for one run, in words."""
    parts = [
        f"goal: {100 * ours.share_within(OBJECTIVE_WAIT_S):.2f} % ≤ {OBJECTIVE_WAIT_S:g} s "
        f"({'met' if ours.meets_objective else 'MISSED'})"
    ]
    if baselines:
        ratios = ", ".join(
            f"{ours.gpu_hours / r.gpu_hours:.2f}x {r.label}"
            + ("" if r.meets_objective else " (misses the objective)")
            for r in baselines
        )
        parts.append(f"GPU-hours {ratios}")
    if fixed is not None:
        ratio = ours.gpu_hours / fixed.gpu_hours
        parts.append(
            f"{ratio:.2f}x the smallest fixed fleet ({'met' if ratio <= 1.0 else 'MISSED'})"
        )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="Azure CSV or Mooncake JSONL")
    parser.add_argument("--loads", default="1,5", help="copies of the trace superimposed")
    parser.add_argument("--cold-starts", default="120,300", help="seconds, comma-separated")
    parser.add_argument(
        "--startup-seconds", type=float, help="one cold start (overrides --cold-starts)"
    )
    parser.add_argument("--warmup", type=float, default=600.0, help="seconds left out")
    parser.add_argument(
        "--policies",
        default="demand,keda,kubeai,fixed",
        help="any of demand, keda, kubeai, fixed",
    )
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--kv-tokens", type=int, default=171_000)
    parser.add_argument("--prefill-tokens-per-s", type=float, default=10_000.0)
    parser.add_argument(
        "--keda-thresholds", default="5,1,2", help="the default first, then tuned values"
    )
    parser.add_argument(
        "--kubeai-targets", default="100,2,5,10,20", help="the default first, then tuned values"
    )
    parser.add_argument(
        "--demand",
        default="",
        help="demand policy settings other than its defaults, e.g. headroom=1.5,"
        "target_utilisation=1.0 (DemandConfig field names)",
    )
    parser.add_argument(
        "--rate-window", type=float, default=60.0, help="the demand reader's rate window (s)"
    )
    parser.add_argument(
        "--trend-window", type=float, default=300.0, help="each of its two trend windows (s)"
    )
    parser.add_argument("--speedup", type=float, default=1.0, help="compress arrival times")
    parser.add_argument(
        "--ramp", action="store_true", help="thin each load to grow linearly from 1/load to 1"
    )
    parser.add_argument("--events", type=int, default=0, help="scale events to print per run")
    args = parser.parse_args(argv)

    started = time.process_time()
    base = load_trace(args.trace)
    engine = Engine(
        kv_tokens=args.kv_tokens,
        max_num_seqs=args.max_num_seqs,
        prefill_tokens_per_s=args.prefill_tokens_per_s,
    )
    grid = Grid(
        engine=engine,
        warmup=args.warmup,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        policies=set(args.policies.split(",")),
        keda_thresholds=[float(x) for x in args.keda_thresholds.split(",")],
        kubeai_targets=[float(x) for x in args.kubeai_targets.split(",")],
        events=args.events,
        rate_window=args.rate_window,
        trend_window=args.trend_window,
        demand_overrides={
            key.strip(): float(value)
            for key, _, value in (item.partition("=") for item in args.demand.split(",") if item)
        },
    )
    colds = (
        [args.startup_seconds]
        if args.startup_seconds is not None
        else [float(x) for x in args.cold_starts.split(",")]
    )
    print(
        f"trace {base.name}: {len(base)} requests over {base.span / 60:.1f} min; replica: KV "
        f"{engine.kv_tokens} tokens, {engine.max_num_seqs} sequences, prefill "
        f"{engine.prefill_tokens_per_s:g} tokens/s, decode step "
        f"{1000 * engine.decode_step_s:g} ms; replicas {args.min_replicas}..{args.max_replicas}, "
        f"autoscalers start from 1; warm-up {args.warmup:g} s left out; objective "
        f"{100 * OBJECTIVE_SHARE:g} % of waits ≤ {OBJECTIVE_WAIT_S:g} s"
    )
    for load in (int(x) for x in args.loads.split(",")):
        trace = scale_trace(base, load, args.speedup)
        if args.ramp:
            trace = ramp(trace, 1 / load)
        fixed: tuple[RunResult | None, RunResult | None] = (None, None)
        if "fixed" in grid.policies:
            fixed = smallest_fixed_fleet(
                lambda k, t=trace: simulate(
                    t,
                    None,
                    engine=engine,
                    cold_start=0.0,
                    initial=k,
                    warmup=args.warmup,
                    max_replicas=args.max_replicas,
                ),
                args.max_replicas,
            )
        for cold in colds:
            print("\n" + "\n".join(run_cold_start(trace, cold, grid, fixed)))
    print(f"\n(CPU {time.process_time() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
