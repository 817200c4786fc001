"""No rollout deadlocks on GPU capacity (pure; docs/rollout.md, "Capacity").

A pool's Deployment rolls with `maxSurge` (default 1): one more replica's GPUs than the pool
uses. When the pool is full the surge pod stays Pending (`PodScheduled=False`, reason
`Unschedulable`) and the rollout never progresses. The operator never reads Nodes: a pool is
*full* when a pod of the rolling-out revision on it has been Unschedulable for longer than the
pool's overflow delay (placement's rule, docs/placement.md). Per full pool P, in this order:

1. **Surge on P** while it has room: what the Deployment does by itself (nothing here).
2. **Surge elsewhere** (`SurgeElsewhere`): the next usable pool Q in the endpoint's list
   (after P, wrapping around) that is not known to be full gets one extra replica of the
   revision. Once it is available (the Deployment's `availableReplicas`, so Ready for
   `minReadySeconds`), P is **replaced in place** one replica at a time (`maxSurge 0,
   maxUnavailable 1`; `ReplaceWithBorrowed`) while Q's extra replica covers the gap, so the
   endpoint never has fewer Ready replicas than desired. When P's Deployment is complete, Q's
   extra replica is removed. If Q's extra pod is Unschedulable past Q's delay, Q is full too
   and the next pool is tried. Full pools are remembered (`status.rollout.capacity`) for the
   revision.
3. **In place** (`ReplaceInPlace`), only when no pool has room and `spec.rollout.maxUnavailable
   >= 1`: one replica at a time (`maxSurge 0`, so no Pending pod lingers), and only while the
   replica taken down leaves at least what the PDB guarantees (desired - 1) and what the
   current demand recommendation needs (unknown demand counts as needing every replica).
4. **Wait** (`Waiting`): otherwise. P keeps its own strategy: its Pending surge pod is the
   probe that the scheduler places as soon as room appears, and the rollout proceeds by itself.
   Reported as `Progressing=True`, `WaitingForCapacity`, quoting the scheduler; never failed
   (`rollout.deadline_from_capacity`).

One full pool is handled at a time (the first in the endpoint's order); a crash-looping
revision still fails as before (rollout.py judges it first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from .api.labels import POOL_LABEL, REVISION_LABEL
from .api.spec import RolloutSpec
from .api.status import CapacityMode, RolloutCapacity, RolloutPhase, RolloutStatus
from .api.timestamps import parse_time, rfc3339
from .plan import EndpointPlan
from .rollout import EventNote, RolloutDecision

PDB_MAX_UNAVAILABLE = 1
"""The engines' PodDisruptionBudget (render/network.render_pdb): at most one replica down."""

IN_PLACE = (0, 1)
"""(maxSurge, maxUnavailable) of a pool replaced in place: one replica at a time."""


@dataclass(frozen=True)
class CapacityPool:
    """One usable pool, in the endpoint's order: its planned replicas, its overflow delay, its
    Deployment as the cluster shows it and its pods (terminating ones included)."""

    name: str
    replicas: int
    delay_seconds: int
    deployment: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class CapacityDecision:
    """What the capacity rules change this pass."""

    state: RolloutCapacity | None = None
    extra: dict[str, int] = field(default_factory=dict)
    """Replicas added to a pool's Deployment (the borrowed one)."""
    strategies: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(maxSurge, maxUnavailable) replacing a pool's rendered strategy."""
    events: tuple[EventNote, ...] = ()
    revision: str | None = None
    """The revision rolling out (None: no rollout to help)."""
    handled: frozenset[str] = frozenset()
    """Pools the rules handle (the full pool, the lending ones): their pending pods of the
    revision are the rollout's own."""


# --- observations ------------------------------------------------------------------------


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _unschedulable(pod: Mapping[str, Any]) -> tuple[datetime | None, str] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return parse_time(cond.get("lastTransitionTime")), str(cond.get("message") or "")
    return None


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _ready(pod: Mapping[str, Any]) -> bool:
    if _terminating(pod):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _template_revision(pool: CapacityPool) -> str | None:
    template = ((pool.deployment or {}).get("spec") or {}).get("template") or {}
    return _labels(template).get(REVISION_LABEL)


def replacing(pool: CapacityPool, revision: str) -> bool:
    """The pool rolls to `revision` (the rollout is Progressing): older pods remain (its
    Deployment may not carry the revision yet: this pass applies it)."""
    return any(_labels(p).get(REVISION_LABEL) != revision for p in pool.pods)


def _stepping(pool: CapacityPool) -> bool:
    """A replica of the pool is down: a step of a replacement in progress."""
    return sum(1 for p in pool.pods if _ready(p)) < pool.replicas


def pending(pool: CapacityPool, revision: str | None, *, now: datetime) -> str | None:
    """The scheduler's message on a pod (of `revision`, if given) Unschedulable for longer
    than the pool's delay: the pool is full. A pod without a readable time counts as old."""
    for pod in pool.pods:
        if _terminating(pod):
            continue
        if revision is not None and _labels(pod).get(REVISION_LABEL) != revision:
            continue
        found = _unschedulable(pod)
        if found is None:
            continue
        since, message = found
        if since is None or since <= now - timedelta(seconds=pool.delay_seconds):
            return message.strip() or "no capacity"
    return None


def _any_unschedulable(pool: CapacityPool, revision: str | None = None) -> bool:
    return any(
        not _terminating(p)
        and _unschedulable(p) is not None
        and (revision is None or _labels(p).get(REVISION_LABEL) == revision)
        for p in pool.pods
    )


def complete(pool: CapacityPool, revision: str) -> bool:
    """The pool's Deployment runs `revision` only, every replica updated and available."""
    dep = pool.deployment
    if dep is None or _template_revision(pool) != revision:
        return False
    spec, status, meta = dep.get("spec") or {}, dep.get("status") or {}, dep.get("metadata") or {}
    replicas = int(spec.get("replicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= replicas
        and int(status.get("availableReplicas") or 0) >= replicas
        and int(status.get("replicas") or 0) == replicas
        and all(_labels(p).get(REVISION_LABEL) == revision for p in pool.pods)
    )


def extra_available(pool: CapacityPool) -> bool:
    """The pool's Deployment runs its planned replicas plus the borrowed one, all available."""
    dep = pool.deployment
    if dep is None:
        return False
    spec, status, meta = dep.get("spec") or {}, dep.get("status") or {}, dep.get("metadata") or {}
    wanted = pool.replicas + 1
    return (
        int(spec.get("replicas") or 0) >= wanted
        and int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("availableReplicas") or 0) >= wanted
    )


# --- the policy --------------------------------------------------------------------------


def _in_place_or_wait(
    *,
    rollout: RolloutSpec,
    pool: CapacityPool,
    stepping: bool,
    ready: int,
    desired: int,
    needed: int | None,
) -> tuple[CapacityMode, str]:
    """Rule 3 or 4 for a full pool with nowhere to surge: the mode and why."""
    if rollout.max_unavailable < 1:
        return "Waiting", "spec.rollout.maxUnavailable is 0, so no replica is replaced in place"
    # During a step the replica being replaced is already down; otherwise one would go now.
    after = ready if stepping else ready - 1
    if needed is None:
        return "Waiting", "the current demand is unknown, so no replica is taken down"
    if after < needed:
        return "Waiting", (
            f"the current demand needs {needed} ready replicas and {ready} are ready, so none "
            "is taken down"
        )
    if after < desired - PDB_MAX_UNAVAILABLE:
        return "Waiting", (
            f"{ready}/{desired} replicas are ready: the PodDisruptionBudget allows "
            f"{PDB_MAX_UNAVAILABLE} unavailable, so none more is taken down"
        )
    return "ReplaceInPlace", (
        f"spec.rollout.maxUnavailable {rollout.max_unavailable} allows it: one replica of "
        f"{pool.name} at a time ({ready}/{desired} ready, demand needs {needed})"
    )


def rollouts_own_pending(
    pods: Sequence[Mapping[str, Any]], revision: str | None, handled: frozenset[str]
) -> bool:
    """Whether every Unschedulable pod is the rollout's own: a pod of the rolling-out revision
    on a pool being replaced (a surge pod, or a replacement waiting for an old pod's GPUs) or
    on a pool the capacity rules handle. False when none is Unschedulable."""
    if revision is None:
        return False
    rolling = {
        _labels(p).get(POOL_LABEL) for p in pods if _labels(p).get(REVISION_LABEL) != revision
    }
    found = False
    for pod in pods:
        if _terminating(pod) or _unschedulable(pod) is None:
            continue
        found = True
        pool = _labels(pod).get(POOL_LABEL)
        if _labels(pod).get(REVISION_LABEL) != revision or not (pool in handled or pool in rolling):
            return False
    return found


def decide(
    *,
    revision: str,
    phase: RolloutPhase,
    pools: Sequence[CapacityPool],
    rollout: RolloutSpec,
    state: RolloutCapacity | None,
    ready: int,
    desired: int,
    needed: int | None,
    now: datetime,
) -> CapacityDecision:
    """One pass of the capacity rules (module docstring). `ready`: the endpoint's Ready engine
    pods; `needed`: the replicas the current demand recommends (None: unknown)."""
    if phase != "Progressing" or not pools:
        released = (
            state is not None
            and state.revision == revision
            and phase == "Healthy"
            and state.pool is not None
            and state.borrow_pool is not None
        )
        if released and state is not None:
            note = EventNote(
                "Normal",
                "CapacityReleased",
                f"pool {state.pool} runs revision {revision}: the extra replica on "
                f"{state.borrow_pool} is removed",
            )
            return CapacityDecision(events=(note,))
        return CapacityDecision()
    prev = state if state is not None and state.revision == revision else None
    by_name = {p.name: p for p in pools}
    names = [p.name for p in pools]
    full = [n for n in (prev.full_pools if prev else []) if n in by_name]
    active = prev.pool if prev and prev.pool in by_name else None
    mode: CapacityMode | None = prev.mode if active and prev else None
    borrow = prev.borrow_pool if active and prev and prev.borrow_pool in by_name else None
    message = prev.message if active and prev else ""
    scheduler = prev.scheduler if active and prev else ""
    events: list[EventNote] = []

    def mark_full(name: str) -> None:
        if name not in full:
            full.append(name)

    def candidate(after: str) -> str | None:
        i = names.index(after)
        for name in names[i + 1 :] + names[:i]:
            if name in full:
                continue
            if pending(by_name[name], None, now=now):
                mark_full(name)
                continue
            if _any_unschedulable(by_name[name]):
                continue  # the scheduler is still deciding there
            return name
        return None

    def no_surge(pool: CapacityPool, scheduler: str, stepping: bool) -> tuple[CapacityMode, str]:
        chosen, why = _in_place_or_wait(
            rollout=rollout,
            pool=pool,
            stepping=stepping,
            ready=ready,
            desired=desired,
            needed=needed,
        )
        others = [n for n in full if n != pool.name]
        where = f"; full too: {', '.join(others)}" if others else ""
        if len(names) == 1:
            where = "; the endpoint has no other pool"
        head = f"pool {pool.name} is full for revision {revision} (the scheduler: {scheduler})"
        if chosen == "ReplaceInPlace":
            return chosen, f"{head}{where}: replacing its replicas in place, {why}"
        return chosen, (
            f"{head}{where}; {why}. The healthy revision keeps serving; the rollout proceeds "
            "when room appears"
        )

    # A pool being handled: follow it through.
    if active is not None:
        p = by_name[active]
        scheduler = pending(p, revision, now=now) or scheduler or "no capacity"
        if complete(p, revision) or _template_revision(p) != revision:
            if borrow:
                events.append(
                    EventNote(
                        "Normal",
                        "CapacityReleased",
                        f"pool {active} runs revision {revision}: the extra replica on {borrow} "
                        "is removed",
                    )
                )
            active = mode = borrow = None
            message = scheduler = ""
        elif mode == "SurgeElsewhere" and borrow is not None:
            lender = by_name[borrow]
            if pending(lender, revision, now=now):
                mark_full(borrow)
                borrow = candidate(active)
                if borrow is None:
                    mode, message = no_surge(p, scheduler, stepping=_stepping(p))
                else:
                    message = _surge_message(active, borrow, revision, scheduler, full)
            elif extra_available(lender):
                mode = "ReplaceWithBorrowed"
                message = (
                    f"pool {active} is full for revision {revision} (the scheduler: {scheduler})"
                    f": the extra replica on {borrow} is available; replacing {active}'s "
                    "replicas in place, one at a time"
                )
        elif mode in ("ReplaceInPlace", "Waiting"):
            if mode == "Waiting" and not _any_unschedulable(p, revision):
                active = mode = borrow = None  # room appeared: the Deployment proceeds by itself
                message = scheduler = ""
            else:
                mode, message = no_surge(p, scheduler, stepping=_stepping(p))

    # A new full pool: the first being replaced whose revision's pod waited out the delay.
    if active is None:
        for p in pools:
            if not replacing(p, revision):
                continue
            found = pending(p, revision, now=now)
            if found is None:
                continue
            active, scheduler = p.name, found
            mark_full(active)
            borrow = candidate(active)
            if borrow is not None:
                mode = "SurgeElsewhere"
                message = _surge_message(active, borrow, revision, scheduler, full)
            else:
                mode, message = no_surge(p, scheduler, stepping=_stepping(p))
            break

    if active is None and not full:
        new_state = None
    else:
        unchanged = (
            prev is not None
            and prev.pool == active
            and prev.mode == mode
            and prev.borrow_pool == borrow
        )
        new_state = RolloutCapacity(
            revision=revision,
            full_pools=full,
            pool=active,
            borrow_pool=borrow if active else None,
            mode=mode if active else None,
            since=prev.since if unchanged and prev else rfc3339(now),
            scheduler=scheduler if active else "",
            message=message if active else "",
        )
        if not unchanged and active is not None and mode is not None:
            events.append(_event(mode, message))
    extra: dict[str, int] = {}
    strategies: dict[str, tuple[int, int]] = {}
    if (
        active is not None
        and borrow is not None
        and mode in ("SurgeElsewhere", "ReplaceWithBorrowed")
    ):
        extra[borrow] = 1
    if active is not None and mode in ("ReplaceWithBorrowed", "ReplaceInPlace"):
        strategies[active] = IN_PLACE
    # maxUnavailable is an allowance, granted per step: a pool being replaced holds its
    # replicas (maxUnavailable 0) while taking one down would leave fewer than the PDB
    # guarantees or the current demand needs.
    if rollout.max_unavailable >= 1:
        for p in pools:
            if p.name in strategies or not replacing(p, revision):
                continue
            allowed, _ = _in_place_or_wait(
                rollout=rollout,
                pool=p,
                stepping=_stepping(p),
                ready=ready,
                desired=desired,
                needed=needed,
            )
            if allowed == "Waiting":
                strategies[p.name] = (max(1, rollout.max_surge), 0)
    handled = {active, borrow, prev.borrow_pool if prev else None} if active else set()
    return CapacityDecision(
        state=new_state,
        extra=extra,
        strategies=strategies,
        events=tuple(events),
        revision=revision,
        handled=frozenset(n for n in handled if n is not None),
    )


def _surge_message(pool: str, borrow: str, revision: str, scheduler: str, full: list[str]) -> str:
    others = [n for n in full if n != pool]
    also = f" ({', '.join(others)} full too)" if others else ""
    return (
        f"pool {pool} is full for revision {revision} (the scheduler: {scheduler}): surging on "
        f"{borrow}{also} with one extra replica; {pool} is replaced in place once it is "
        "available"
    )


EVENT_REASONS: dict[str, tuple[str, str]] = {
    "SurgeElsewhere": ("Normal", "SurgingElsewhere"),
    "ReplaceWithBorrowed": ("Normal", "ReplacingInPlace"),
    "ReplaceInPlace": ("Normal", "ReplacingInPlace"),
    "Waiting": ("Warning", "WaitingForCapacity"),
}


def _event(mode: CapacityMode, message: str) -> EventNote:
    type_, reason = EVENT_REASONS[mode]
    return EventNote(type_, reason, message)


# --- a fact for the conditions (status/endpoint_conditions.py) -------------------------


def owns_pending(decision: CapacityDecision, pods: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every Unschedulable engine pod is the rollout's own (`rollouts_own_pending`
    for the revision and pools this decision handles): then `Degraded` stays `AsExpected`."""
    return rollouts_own_pending(pods, decision.revision, decision.handled)


# --- wiring helpers (called by handlers/reconcile.py) ------------------------------------


def capacity_pass(
    *,
    name: str,
    plan: EndpointPlan,
    rollout: RolloutDecision,
    previous: RolloutStatus | None,
    rollout_spec: RolloutSpec,
    deployments: Mapping[str, Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    needed: int | None,
    now: datetime,
) -> CapacityDecision:
    """Gather the pools (the plan's usable ones, in the endpoint's order) and decide."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    pools = [
        CapacityPool(
            name=p.pool.name,
            replicas=p.replicas,
            delay_seconds=p.pool.overflow_delay_seconds,
            deployment=deployments.get(f"{name}-{p.pool.name}"),
            # Terminating pods too: an old one still holds the GPUs its replacement waits for.
            pods=[q for q in pods if _labels(q).get(POOL_LABEL) == p.pool.name],
        )
        for p in plan.usable_pools
    ]
    return decide(
        revision=rollout.state.current_revision,
        phase=rollout.state.phase,
        pools=pools,
        rollout=rollout_spec,
        state=previous.capacity if previous else None,
        ready=sum(1 for p in live if _ready(p)),
        desired=plan.desired_replicas,
        needed=needed,
        now=now,
    )


def with_capacity_state(rollout: RolloutDecision, capacity: CapacityDecision) -> RolloutDecision:
    """The rollout's decision with the capacity state persisted and its Events to post."""
    state = rollout.state.model_copy(update={"capacity": capacity.state})
    return replace(rollout, state=state, events=(*rollout.events, *capacity.events))


def with_capacity(
    objects: list[dict[str, Any]], capacity: CapacityDecision
) -> list[dict[str, Any]]:
    """The children with a borrowed replica added and a replaced pool's strategy set."""
    if not capacity.extra and not capacity.strategies:
        return objects
    out = []
    for obj in objects:
        pool = _labels(obj).get(POOL_LABEL) if obj.get("kind") == "Deployment" else None
        if pool is None or (pool not in capacity.extra and pool not in capacity.strategies):
            out.append(obj)
            continue
        spec = dict(obj["spec"])
        spec["replicas"] = int(spec.get("replicas") or 0) + capacity.extra.get(pool, 0)
        if pool in capacity.strategies:
            surge, unavailable = capacity.strategies[pool]
            spec["strategy"] = {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
            }
        out.append({**obj, "spec": spec})
    return out


def placement_pods(
    pods: list[dict[str, Any]], previous: RolloutStatus | None
) -> list[dict[str, Any]]:
    """The pods placement judges capacity from, without the Unschedulable pods of a rollout in
    progress (its surge pods, and replacements waiting for the GPUs of the pods they replace):
    the capacity rules handle those; placement must not overflow the pool's replicas for them.
    """
    if previous is None or previous.phase != "Progressing":
        return pods
    revision = previous.current_revision
    rolling = {
        _labels(p).get(POOL_LABEL) for p in pods if _labels(p).get(REVISION_LABEL) != revision
    }
    if previous.capacity is not None and previous.capacity.pool is not None:
        rolling.add(previous.capacity.pool)
    return [
        p
        for p in pods
        if not (
            _labels(p).get(POOL_LABEL) in rolling
            and _labels(p).get(REVISION_LABEL) == revision
            and _unschedulable(p) is not None
        )
    ]
