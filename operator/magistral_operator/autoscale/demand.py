"""The demand autoscaling policy (pure): a router's demand sample + capacity + state → replicas.

Made for the router data plane (issue #10): the router holds every request that is not yet in
an engine, so the demand is read in one place instead of being summed from per-pod gauges.
`policy.py` stays the operator's rule until the router and its reader are wired in.

Inputs, every pass: the replicas decided last (`current`, replicas still starting included),
a `DemandSample`, a `DemandConfig`, the `DemandState` persisted in status, and the time.

**DemandSample** (what a reader collects from the router and the engines):

- `router_ok`: the router answered. False is a *failed read* (see Reads); `error` says why.
- `queued`: requests held in the router's queue, not yet sent to an engine; at zero replicas,
  the requests held until a replica is Ready.
- `in_flight`: requests sent to engines and not finished (the router's per-worker loads,
  summed).
- `arrival_rate`: requests per second that reached the router over the last
  `rate_window_seconds` (60 s in the benchmark): the level the fleet is sized for.
- `trend` (`ArrivalTrend`): the arrival rates over two consecutive longer windows, the last
  ending now (300 s each in the benchmark: long enough that bursts within a minute do not read
  as a ramp); None when the reader has no history yet (after an operator restart): no trend.
- `replicas`: one `ReplicaLoad` per Ready replica whose engine answered: requests in flight,
  waiting in the engine (`vllm:num_requests_waiting`) and KV-cache usage
  (`vllm:kv_cache_usage_perc`, 0 to 1).
- `ready_replicas`: Ready replicas that exist; fewer `replicas` than that is a *partial read*.
- `unreachable`: the Ready replicas the reader judges unreachable (kube/demand.py: silent on
  consecutive reads); the policy ignores it, the reconcile's status does not count them ready.
- `starting_replicas`: replicas created and not yet Ready. They are part of `current`, so
  demand they will serve buys nothing twice, and a backlog is planned to be drained by them
  (over `startup_seconds + drain_seconds`) rather than by yet more replicas.
- `mean_prompt_tokens`, `mean_output_tokens`: tokens per request over the reader's window
  (deltas of `vllm:prompt_tokens_total` and `vllm:generation_tokens_total` over
  `vllm:request_success_total`); None when unknown, then the config's typical values apply.

**DemandConfig** (the endpoint's spec and what sizing knows about one replica):

- `min_replicas`, `max_replicas`: the bounds; `min_replicas` 0 allows scale to zero.
- `capacity` (`ReplicaCapacity`, from configuration, never from one snapshot):
  `max_sequences` (vLLM's `--max-num-seqs`), `kv_tokens` (tokens the KV cache holds, from
  sizing) and `prefill_tokens_per_second` (prompt tokens one replica processes per second when
  busy: sizing's FLOP/s times an efficiency, or a measured figure).
- `target_utilisation` (default 0.8): the share of `prefill_tokens_per_second` the arrivals
  may use on average over the rate window.
- `headroom` (default 1.0): square-root safety staffing: `headroom · √load` replicas on top
  of the load `load` (in replicas). Arrivals are bursty within the window; the spare capacity
  a burst needs grows with the square root of the load, so a large endpoint runs hotter than
  a small one for the same queue wait.
- `target_fill` (default 0.8): the share of `max_sequences` and of `kv_tokens` the fleet is
  sized to use (the llm-d variant autoscaler's KV saturation is 0.8).
- `startup_seconds` (default 300): a replica's start-up budget (status.startupBudgetSeconds or a
  measured start-up time). It is the forecast horizon: the fleet is sized for the arrival rate
  expected one start-up ahead, and a scale-up goes at once to that recommendation.
- `max_growth` (default 2.0): the forecast is at most this multiple of the current rate (a
  trend read from two windows is not extrapolated without limit). 1 turns the trend off.
- `drain_seconds` (default 60): requests already waiting (router queue and engine queues) are
  planned to be cleared within this time on top of the arrivals.
- `typical_prompt_tokens` (default 2048), `typical_output_tokens` (default 256): token means
  used when the sample has none.
- `scale_up_window_seconds` (default 0): how long a recommendation above `current` must hold
  before it acts; it then goes to the *current* recommendation, never the smallest seen.
- `scale_down_window_seconds` (default 600): the fleet is never below any recommendation made
  during the last window (the HPA's scale-down stabilisation, a moving maximum). A scale-down
  therefore needs a whole window of lower recommendations, and goes to the highest of them.
  The record of the window restarts after a failed or partial read and when the state is
  lost, so neither ever reads as low demand.

**Recommendation.** With the rate λ and the trend's slope `s = (recent - earlier) / window`,
the forecast is `λ⁺ = min(λ + max(0, s) · startup_seconds, max_growth · λ)`; with prompt
tokens `p`, tokens per sequence `k = p + o`, queued `Q`, waiting in the engines `W`, in
flight `F`, the start-up aware drain time `d` (`drain_seconds`, plus `startup_seconds` while
replicas are starting) and the queued requests that would hold a slot within `d`,
`Q' = Q · min(1, (F / λ) / d)` (Little's law: F / λ is how long a request holds a slot):

    load     = λ⁺ · p / (prefill_tokens_per_second · target_utilisation)
    compute  = load + headroom · √load + (Q + W) · p / (prefill_tokens_per_second · d)
    seqs     = (F + Q') / (max_sequences · target_fill)
    kv       = (Σ kv_usage · kv_tokens + Q' · k) / (kv_tokens · target_fill)
    recommended = clamp(ceil(max(compute, seqs, kv)), min_replicas, max_replicas)

Each term rises before the engines saturate (a router's queue stays at 0 until every replica
is full), capacity is what the configuration says a replica holds, and a backlog counts
wherever it waits. With no arrivals, nothing in flight and nothing queued the recommendation
is 0, i.e. `min_replicas`.

**Reads.** A failed read (router unreachable) holds `current`, says so in the reason, and is
never taken as low demand. A partial read (some Ready engines did not answer) may scale up —
missing engines can only hide demand — but never down. At zero replicas with requests held in
the router (`queued` > 0) the policy scales to at least one replica at once, whatever the up
window (`scaled_from_zero`).

**Reserved capacity** is placement's business: the policy outputs a count; `fill_order()`
lists the endpoint's pools with the `reserved` ones first, and placement adds replicas to the
most preferred pool and removes them from the least preferred one, so capacity that is paid
for anyway is filled first and released last.

The result is always within [min_replicas, max_replicas]; a change of the bounds applies at
once. `DemandState.to_status()` and `from_status()` map the state to and from camelCase fields
for `status.autoscaler`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..api.config import CapacityTier
from ..api.status import (
    AutoscalerStatus,
    DemandSnapshot,
    ReadStatus,
    RecommendationEntry,
    ScaleDirection,
)
from ..api.timestamps import parse_time, rfc3339
from ..sizing.throughput import ReplicaThroughput

# What one replica holds, from its configuration (sizing/throughput.py), never observed.
ReplicaCapacity = ReplicaThroughput


@dataclass(frozen=True)
class DemandConfig:
    """The policy's parameters (the module docstring describes each)."""

    min_replicas: int
    max_replicas: int
    capacity: ReplicaCapacity
    target_utilisation: float = 0.8
    headroom: float = 1.0
    target_fill: float = 0.8
    startup_seconds: float = 300.0
    max_growth: float = 2.0
    drain_seconds: float = 60.0
    typical_prompt_tokens: float = 2048.0
    typical_output_tokens: float = 256.0
    scale_up_window_seconds: float = 0.0
    scale_down_window_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        for name in ("target_utilisation", "target_fill"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        if self.max_growth < 1:
            raise ValueError("max_growth must be at least 1")
        if self.drain_seconds <= 0:
            raise ValueError("drain_seconds must be positive")
        for name in (
            "headroom",
            "startup_seconds",
            "typical_prompt_tokens",
            "typical_output_tokens",
            "scale_up_window_seconds",
            "scale_down_window_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def clamp(self, replicas: int) -> int:
        """`replicas` within the bounds."""
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class ReplicaLoad:
    """One Ready replica's engine, as it answered."""

    in_flight: int
    waiting: int = 0
    kv_usage: float = 0.0


@dataclass(frozen=True)
class ArrivalTrend:
    """Arrival rates (req/s) over two consecutive windows of `window_seconds`, the last one
    ending now."""

    earlier_rate: float
    recent_rate: float
    window_seconds: float

    @property
    def slope(self) -> float:
        """Requests per second gained per second (0 for a window of 0)."""
        if self.window_seconds <= 0:
            return 0.0
        return (self.recent_rate - self.earlier_rate) / self.window_seconds


@dataclass(frozen=True)
class DemandSample:
    """One read of the router and the engines (the module docstring describes each field)."""

    router_ok: bool
    queued: int = 0
    in_flight: int = 0
    arrival_rate: float = 0.0
    rate_window_seconds: float = 60.0
    trend: ArrivalTrend | None = None
    replicas: Sequence[ReplicaLoad] = ()
    ready_replicas: int = 0
    starting_replicas: int = 0
    mean_prompt_tokens: float | None = None
    mean_output_tokens: float | None = None
    silent_routers: int = 0
    error: str | None = None
    unreachable: tuple[str, ...] = ()
    """Ready engine pods judged unreachable (kube/demand.py): the status does not count them."""

    @property
    def read(self) -> ReadStatus:
        """ok, partial (some ready engines or router pods did not answer) or failed (no
        router answered)."""
        if not self.router_ok:
            return "failed"
        if len(self.replicas) < self.ready_replicas or self.silent_routers > 0:
            return "partial"
        return "ok"

    def gaps(self) -> tuple[str, ...]:
        """What a partial read missed, in words."""
        out = []
        missing = self.ready_replicas - len(self.replicas)
        if missing > 0:
            out.append(f"{missing} of {self.ready_replicas} ready engines did not answer")
        if self.silent_routers > 0:
            out.append(f"{self.silent_routers} ready router pods did not answer")
        if self.error:
            out.append(self.error)
        return tuple(out)


Recommendation = tuple[datetime, int]


@dataclass(frozen=True)
class DemandState:
    """What the policy persists between passes (for status.autoscaler).

    `window` is the moving maximum of the recommendations over the scale-down window, kept
    as a staircase: each entry's replicas exceed every later entry's, so it holds at most one
    entry per replica count. `window_since` is when that record began (a complete record
    covers the whole scale-down window).
    """

    desired_replicas: int
    last_scale_time: datetime | None = None
    last_scale_reason: str | None = None
    last_scale_demand: DemandSnapshot | None = None
    up_since: datetime | None = None
    window_since: datetime | None = None
    window: tuple[Recommendation, ...] = ()

    def to_status(
        self,
        *,
        read: ReadStatus | None = None,
        read_error: str | None = None,
        held_requests: int = 0,
    ) -> AutoscalerStatus:
        """The state as status.autoscaler, with the last read's outcome."""
        return AutoscalerStatus(
            desired_replicas=self.desired_replicas,
            last_scale_time=rfc3339(self.last_scale_time) if self.last_scale_time else None,
            last_scale_reason=self.last_scale_reason,
            last_scale_demand=self.last_scale_demand,
            up_since=rfc3339(self.up_since) if self.up_since else None,
            window_since=rfc3339(self.window_since) if self.window_since else None,
            window=[RecommendationEntry(time=rfc3339(t), replicas=n) for t, n in self.window],
            read=read,
            read_error=read_error,
            held_requests=held_requests,
        )

    @classmethod
    def from_status(cls, status: AutoscalerStatus | None, *, default: int = 0) -> DemandState:
        """The inverse of to_status(). Unreadable times are dropped: the windows restart."""
        if status is None:
            return cls(desired_replicas=default)

        def when(value: str | None) -> datetime | None:
            return parse_time(value) if value else None

        window: list[Recommendation] = []
        for entry in status.window:
            stamp = when(entry.time)
            if stamp is None:
                window = []
                break
            window.append((stamp, entry.replicas))
        since = when(status.window_since)
        return cls(
            desired_replicas=status.desired_replicas,
            last_scale_time=when(status.last_scale_time),
            last_scale_reason=status.last_scale_reason,
            last_scale_demand=status.last_scale_demand,
            up_since=when(status.up_since),
            window_since=since,
            window=tuple(window) if since else (),
        )


@dataclass(frozen=True)
class Needed:
    """The recommendation's terms, in replicas (fractions), and the forecast rate."""

    load: float
    compute: float
    sequences: float
    kv: float
    forecast_rate: float

    @property
    def replicas(self) -> float:
        return max(self.compute, self.sequences, self.kv)


@dataclass(frozen=True)
class DemandDecision:
    """The policy's answer: replicas, the state to persist, and why."""

    desired_replicas: int
    state: DemandState
    read: ReadStatus
    reason: str
    error: str | None = None
    recommended: int | None = None
    needed: Needed | None = None
    scaled: ScaleDirection | None = None
    scaled_from_zero: bool = False
    previous_replicas: int = 0
    held_requests: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    unreachable: tuple[str, ...] = ()
    """The sample's unreachable Ready engine pods (set by handlers/decisions.autoscale)."""

    def status(self) -> AutoscalerStatus:
        """status.autoscaler after this pass."""
        return self.state.to_status(
            read=self.read, read_error=self.error, held_requests=self.held_requests
        )


def forecast_rate(sample: DemandSample, config: DemandConfig) -> float:
    """The arrival rate expected one start-up ahead (never below the current rate)."""
    rate = max(0.0, sample.arrival_rate)
    if sample.trend is None or sample.trend.slope <= 0:
        return rate
    return min(rate + sample.trend.slope * config.startup_seconds, config.max_growth * rate)


def needed(sample: DemandSample, config: DemandConfig) -> Needed:
    """The recommendation's terms for one sample."""
    cap = config.capacity
    prompt = sample.mean_prompt_tokens or config.typical_prompt_tokens
    output = sample.mean_output_tokens or config.typical_output_tokens
    rate = forecast_rate(sample, config)
    queued = max(0, sample.queued)
    # The router's total, or the engines' own count if they hold more (e.g. a replica the
    # router already dropped while it drains).
    in_flight = max(0, sample.in_flight, sum(r.in_flight for r in sample.replicas))
    waiting = queued + sum(max(0, r.waiting) for r in sample.replicas)
    kv_used = sum(min(1.0, max(0.0, r.kv_usage)) for r in sample.replicas) * cap.kv_tokens
    # Replicas already starting will drain a backlog once Ready: plan it over their start-up.
    drain = config.drain_seconds + (config.startup_seconds if sample.starting_replicas else 0.0)
    # A queued request needs a slot only for as long as one is held (Little's law: in flight
    # over the arrival rate); clearing the queue within `drain` takes that share of it.
    holding = in_flight / sample.arrival_rate if sample.arrival_rate > 0 else math.inf
    admitted = queued * min(1.0, holding / drain)
    load = rate * prompt / (cap.prefill_tokens_per_second * config.target_utilisation)
    backlog = waiting * prompt / (cap.prefill_tokens_per_second * drain)
    return Needed(
        load=load,
        compute=load + config.headroom * math.sqrt(load) + backlog,
        sequences=(in_flight + admitted) / (cap.max_sequences * config.target_fill),
        kv=(kv_used + admitted * (prompt + output)) / (cap.kv_tokens * config.target_fill),
        forecast_rate=rate,
    )


def recommend(sample: DemandSample, config: DemandConfig) -> int:
    """The fewest replicas for the demand expected one start-up ahead, within the bounds."""
    wanted = needed(sample, config).replicas
    # Round away float noise (e.g. 3.0000000001) before the ceiling.
    return config.clamp(math.ceil(round(wanted, 9)))


def fill_order(pools: Sequence[tuple[str, CapacityTier | str]]) -> list[str]:
    """Pool names in the order placement should fill them: reserved first, then as listed.

    Placement adds replicas to the most preferred pool and removes them from the least
    preferred one, so this order fills paid-for capacity first and releases it last.
    """
    reserved = [name for name, tier in pools if tier == CapacityTier.RESERVED]
    return reserved + [name for name, tier in pools if tier != CapacityTier.RESERVED]


def _record(
    window: tuple[Recommendation, ...], now: datetime, replicas: int, seconds: float
) -> tuple[Recommendation, ...]:
    """The staircase with `replicas` recommended at `now`, entries older than the window gone.

    Every entry but the last holds when its count was last recommended; the last one is the
    current recommendation (it never expires) and holds when it began, so a recommendation
    that repeats changes nothing to store. When it changes, the last entry is stamped `now`
    (it held until this pass: a conservative end) before the staircase is cut.
    """
    oldest = now - timedelta(seconds=seconds)
    if window and window[-1][1] == replicas:
        return (*[(t, n) for t, n in window[:-1] if t >= oldest], window[-1])
    ended = (*window[:-1], (now, window[-1][1])) if window else ()
    kept = [(t, n) for t, n in ended if n > replicas and t >= oldest]
    return (*kept, (now, replicas))


def _why(sample: DemandSample, need: Needed) -> str:
    return (
        f"{sample.queued} queued, {sample.in_flight} in flight, {sample.arrival_rate:.2f} req/s "
        f"(forecast {need.forecast_rate:.2f}) on {sample.ready_replicas} ready + "
        f"{sample.starting_replicas} starting replicas; needs {need.compute:.2f} by compute "
        f"({need.load:.2f} load), {need.sequences:.2f} by sequences, {need.kv:.2f} by KV cache"
    )


def decide(
    *,
    current: int,
    sample: DemandSample,
    config: DemandConfig,
    state: DemandState | None,
    now: datetime,
) -> DemandDecision:
    """One autoscaler pass. `current` is the replicas decided last (starting ones included)."""
    bounded = config.clamp(current)
    previous = state or DemandState(desired_replicas=bounded)
    last_scale = now if bounded != current else previous.last_scale_time
    read = sample.read
    held = max(0, sample.queued)

    if read == "failed":
        return DemandDecision(
            desired_replicas=bounded,
            state=replace(
                previous,
                desired_replicas=bounded,
                last_scale_time=last_scale,
                up_since=None,
                window_since=None,
                window=(),
            ),
            read=read,
            error=sample.error or "no router answered",
            reason=f"holding {bounded} replicas: the demand read failed"
            + (f" ({sample.error})" if sample.error else "")
            + "; the scale-down window restarts",
            previous_replicas=current,
            held_requests=held,
        )

    need = needed(sample, config)
    recommended = recommend(sample, config)
    why = _why(sample, need)
    notes: tuple[str, ...] = ()
    down_window = config.scale_down_window_seconds
    window: tuple[Recommendation, ...]
    if read == "partial":
        notes = sample.gaps()
        why += f"; partial read ({'; '.join(notes)}): no scale-down, the window restarts"
        since, window = now, ((now, recommended),)
    else:
        since = previous.window_since or now
        window = _record(previous.window, now, recommended, down_window)
    recorded = replace(
        previous,
        desired_replicas=bounded,
        last_scale_time=last_scale,
        up_since=None,
        window_since=since,
        window=window,
    )

    def scaled_to(target: int, direction: ScaleDirection, detail: str) -> DemandDecision:
        reason = f"scaled {direction.lower()} from {bounded} to {target} replicas: {why}{detail}"
        snapshot = DemandSnapshot(
            queued=max(0, sample.queued),
            in_flight=max(0, sample.in_flight),
            arrival_rate=f"{max(0.0, sample.arrival_rate):.3f}",
            ready_replicas=sample.ready_replicas,
        )
        return DemandDecision(
            desired_replicas=target,
            state=replace(
                recorded,
                desired_replicas=target,
                last_scale_time=now,
                last_scale_reason=reason[:1024],
                last_scale_demand=snapshot,
            ),
            read=read,
            error="; ".join(notes) or None,
            reason=reason,
            recommended=recommended,
            needed=need,
            scaled=direction,
            scaled_from_zero=bounded == 0 and target > 0,
            previous_replicas=bounded,
            held_requests=held,
            notes=notes,
        )

    def holding(new_state: DemandState, detail: str = "") -> DemandDecision:
        return DemandDecision(
            desired_replicas=bounded,
            state=new_state,
            read=read,
            error="; ".join(notes) or None,
            reason=f"holding {bounded} replicas: {why}{detail}",
            recommended=recommended,
            needed=need,
            previous_replicas=current,
            held_requests=held,
            notes=notes,
        )

    # Scale from zero: requests are held and nothing can serve them.
    if bounded == 0 and held > 0 and config.max_replicas > 0:
        return scaled_to(max(1, recommended), "Up", f"; {held} requests held at zero replicas")

    if recommended > bounded:
        up_since = previous.up_since or now
        elapsed = (now - up_since).total_seconds()
        if elapsed >= config.scale_up_window_seconds:
            return scaled_to(recommended, "Up", "")
        return holding(
            replace(recorded, up_since=up_since),
            f"; up to {recommended} pending for {elapsed:.0f}s of "
            f"{config.scale_up_window_seconds:g}s",
        )

    # Down only to the most recommended over a whole window of complete reads.
    highest = config.clamp(max(n for _, n in window))
    covered = (now - since).total_seconds()
    if read == "ok" and highest < bounded and covered >= down_window:
        return scaled_to(highest, "Down", f"; the most recommended over the last {down_window:g}s")
    if highest < bounded and read == "ok":
        return holding(
            recorded,
            f"; down to {highest} once the record covers {down_window:g}s ({covered:.0f}s so far)",
        )
    return holding(recorded)
