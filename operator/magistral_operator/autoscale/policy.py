"""The queue-depth autoscaling policy (pure): samples + spec.scaling + state → replicas.

Inputs, every pass: the replicas the autoscaler last decided on, one sample per ready replica
that answered its `/metrics` (`vllm:num_requests_waiting` W_i, `vllm:num_requests_running`
R_i), `spec.scaling`, the state persisted in `status.autoscaler`, and the time.

**Recommendation.** A replica holds `s` running sequences and, by the spec, may keep
`q = targetQueueDepth` waiting. The demand is every request in the engines, `D = ΣR_i + ΣW_i`,
and the recommendation is the fewest replicas that hold it:

    recommended = clamp(ceil(D / (s + q)), minReplicas, maxReplicas)

`s` is estimated from the samples as the largest running count of any replica (at least 1):
a replica with a queue runs as many sequences as its `--max-num-seqs` or KV cache allows, so
`s` never over-estimates a replica's capacity and the policy errs toward more replicas.

- Up: when every replica is saturated (R_i = s) and the average queue exceeds `q`,
  `recommended > N`: this is the production-stack / KEDA rule (scale on
  `vllm:num_requests_waiting` above a per-replica target, 5 in its guide) with the new
  replicas' own slots counted, so it adds ceil(excess / (s + q)) replicas rather than one per
  `q` waiting requests.
- Down: `recommended < N` exactly when N-1 replicas hold the demand with at most `q` waiting
  each: llm-d's variant autoscaler's "scale down only if N-1 replicas would hold the load".
  An empty queue alone is not a down-signal while the replicas are busy, which is what keeps a
  steady load from flapping.

**Windows** (KubeAI's consecutive signals, the HPA's stabilisation window): a direction must
hold for `scaleUpWindowSeconds` (up) or `scaleDownWindowSeconds` (down) before it acts. While it
waits, `pendingReplicas` keeps the most conservative recommendation seen (the fewest for up, the
most for down) and that is what the scale goes to. A recommendation equal to the current
replicas, a flip of direction, or a pass without samples resets the signal.

**Safety.** No samples (no ready replica answered) → hold: the policy never scales on missing
metrics, so scaling from zero needs something on the request path and is not done here. The
result is always within [minReplicas, maxReplicas]; a spec change of the bounds applies at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..api.spec import ScalingSpec
from ..api.status import AutoscalerStatus, ScaleDirection
from ..api.timestamps import parse_time, rfc3339


@dataclass(frozen=True)
class ReplicaSample:
    """One ready replica's engine gauges, summed over its engines."""

    waiting: float
    running: float


@dataclass(frozen=True)
class Decision:
    """The policy's answer: replicas to run, the state to persist and why."""

    desired_replicas: int
    state: AutoscalerStatus
    reason: str
    scaled: ScaleDirection | None = None
    previous_replicas: int = 0


def clamp(replicas: int, scaling: ScalingSpec) -> int:
    """`replicas` within the spec's bounds."""
    return max(scaling.min_replicas, min(scaling.max_replicas, replicas))


def starting_replicas(
    *, state: AutoscalerStatus | None, status_replicas: int | None, scaling: ScalingSpec
) -> int:
    """Where a pass starts: the last decision, else the replicas in status, else minReplicas."""
    if state is not None:
        return clamp(state.desired_replicas, scaling)
    if status_replicas:
        return clamp(status_replicas, scaling)
    return scaling.min_replicas


def replica_capacity(samples: Sequence[ReplicaSample]) -> float:
    """Running sequences one replica holds, as observed (at least 1)."""
    return max(1.0, *(s.running for s in samples)) if samples else 1.0


def recommend(*, samples: Sequence[ReplicaSample], scaling: ScalingSpec) -> int:
    """The fewest replicas that hold the observed demand, within the bounds."""
    demand = sum(s.waiting + s.running for s in samples)
    per_replica = replica_capacity(samples) + scaling.target_queue_depth
    # Round away float noise (e.g. 6.000000001) before the ceiling.
    return clamp(math.ceil(round(demand / per_replica, 9)), scaling)


def decide(
    *,
    current: int,
    samples: Sequence[ReplicaSample],
    scaling: ScalingSpec,
    state: AutoscalerStatus | None,
    now: datetime,
) -> Decision:
    """One autoscaler pass. `current` is the replicas decided last (see starting_replicas)."""
    bounded = clamp(current, scaling)
    stamp = rfc3339(now)
    previous = state or AutoscalerStatus(desired_replicas=bounded)
    last_scale = previous.last_scale_time
    if bounded != current:
        last_scale = stamp  # the bounds moved: applied at once
    idle = AutoscalerStatus(
        desired_replicas=bounded,
        last_scale_time=last_scale,
        observed_queue=previous.observed_queue,
    )
    if not samples:
        return Decision(
            desired_replicas=bounded,
            state=idle,
            reason=f"holding {bounded} replicas: no replica metrics",
            previous_replicas=current,
        )

    waiting = sum(s.waiting for s in samples)
    queue = round(waiting)
    recommended = recommend(samples=samples, scaling=scaling)
    capacity = replica_capacity(samples)
    why = (
        f"{queue} waiting and {round(sum(s.running for s in samples))} running on "
        f"{len(samples)} ready replicas; a replica holds {capacity:g} running + "
        f"{scaling.target_queue_depth:g} waiting"
    )
    if recommended == bounded:
        return Decision(
            desired_replicas=bounded,
            state=idle,
            reason=f"holding {bounded} replicas: {why}",
            previous_replicas=current,
        )

    direction: ScaleDirection = "Up" if recommended > bounded else "Down"
    window = (
        scaling.scale_up_window_seconds if direction == "Up" else scaling.scale_down_window_seconds
    )
    since = parse_time(previous.pending_since)
    if previous.pending_direction == direction and since is not None:
        held = previous.pending_replicas if previous.pending_replicas is not None else recommended
        # The most conservative recommendation, still a move in the signal's direction.
        if direction == "Up":
            pending = max(min(held, recommended), bounded + 1)
        else:
            pending = min(max(held, recommended), bounded - 1)
        observed = previous.observed_queue
        pending_since = previous.pending_since
    else:
        since, pending, observed, pending_since = now, recommended, queue, stamp

    elapsed = (now - since).total_seconds()
    if elapsed >= window:
        target = clamp(pending, scaling)
        return Decision(
            desired_replicas=target,
            state=AutoscalerStatus(
                desired_replicas=target, last_scale_time=stamp, observed_queue=queue
            ),
            reason=f"scaled {direction.lower()} from {bounded} to {target} replicas: {why}; "
            f"the signal held {elapsed:.0f}s (window {window}s)",
            scaled=direction,
            previous_replicas=bounded,
        )
    return Decision(
        desired_replicas=bounded,
        state=AutoscalerStatus(
            desired_replicas=bounded,
            last_scale_time=last_scale,
            pending_direction=direction,
            pending_since=pending_since,
            pending_replicas=pending,
            observed_queue=observed,
        ),
        reason=f"{direction.lower()} to {pending} replicas pending for {elapsed:.0f}s of "
        f"{window}s: {why}",
        previous_replicas=current,
    )
