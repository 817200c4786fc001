"""Placement across GPU pools (pure): desired replicas + observations + state → replicas per pool.

Inputs, every pass: N, the replicas the autoscaler wants; the endpoint's usable pools in order
of preference (from the plan: reserved, then on-demand, then spot, as the endpoint lists them)
with each pool's overflow delay; per pool what the cluster shows (pods, ready pods, and when
each Unschedulable pod's `PodScheduled=False` began); the state persisted in
`status.placement`; and the time. The operator only sees its own pods, never nodes, so free
capacity is learnt from the scheduler's verdict on those pods.

Rules, applied in this order in one pass (docs/placement.md has the reasoning):

1. **Start on the most preferred pool.** Replicas the count lacks go to the most preferred pool
   that is not blocked (no Unschedulable replica now and no probe back-off pending), else to
   the most preferred pool. Replicas in excess are removed first from pools with Unschedulable
   replicas, then from the least preferred pool. A change of N cancels a running probe.
2. **Probe result.** A probe is a surge replica on a more preferred pool P while the replica it
   should replace keeps serving on a less preferred pool Q. When P has as many Ready pods as
   replicas assigned, Q gives one up (`Consolidated`) and P's back-off is reset. When a pod on
   P stays Unschedulable past P's delay, the probe is given up: P goes back to its replicas and
   is not probed again for its back-off, which starts at its delay (at least 10 s) and doubles
   with each failed probe up to 30 minutes.
3. **Overflow.** When a pool's Unschedulable replicas have waited longer than its delay
   (`overflowAfterSeconds`, default 60 s; `elasticOverflowAfterSeconds`, default 600 s, on an
   `elastic` pool whose pending pods make a cluster autoscaler add nodes), counted from the
   oldest, all of them move to the next pool (`Overflow`); the pool is then not probed before
   its back-off. A spot node that disappears leaves its pods Pending, so spot loss takes this
   same path. The last pool has nowhere to overflow: its replicas stay Pending.
4. **Consolidation.** When nothing else happened, and every pool runs exactly its replicas,
   all Ready and none Pending, one probe starts: one replica is added to the most preferred
   pool, not backing off, that is more preferred than the least preferred pool holding
   replicas.

Invariants: replicas go only to usable pools; they sum to N, or N+1 while a probe runs; moves
never remove a Ready replica before its replacement is Ready; and a second pass over the same
inputs changes nothing. Pods in excess of a pool's assigned replicas (not yet removed by the
ReplicaSet) count against its Unschedulable pods, so stale observations do not move replicas
twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from .api.status import PlacementStatus, PoolPlacement
from .api.timestamps import parse_time, rfc3339

MIN_BACKOFF_SECONDS = 10
MAX_BACKOFF_SECONDS = 1800


@dataclass(frozen=True)
class PlacementPool:
    """A usable pool, in order of preference, with its overflow delay."""

    name: str
    overflow_after_seconds: int


@dataclass(frozen=True)
class PoolLoad:
    """What the cluster shows on one pool: its pods (not being deleted) and the Pending ones."""

    pods: int = 0
    ready: int = 0
    pending_since: tuple[datetime, ...] = ()
    """When each Unschedulable pod's PodScheduled condition turned False."""
    message: str | None = None
    """The scheduler's message on one Unschedulable pod."""


@dataclass(frozen=True)
class Move:
    """Replicas moved from one pool to another, and why."""

    replicas: int
    source: str
    target: str
    message: str


@dataclass(frozen=True)
class Placement:
    """The answer: replicas per pool, the state to persist and what happened."""

    replicas: dict[str, int]
    state: PlacementStatus
    reason: str
    overflowed: tuple[Move, ...] = ()
    consolidated: tuple[Move, ...] = ()
    notes: tuple[str, ...] = field(default=())


def _stamp(when: datetime | None) -> str | None:
    return rfc3339(when) if when is not None else None


def _backoff(*, previous: int | None, delay: int, failed: bool) -> int:
    base = max(MIN_BACKOFF_SECONDS, delay)
    if previous is None:
        return base
    return min(MAX_BACKOFF_SECONDS, max(base, previous * 2 if failed else previous))


def place(
    *,
    desired: int,
    pools: Sequence[PlacementPool],
    observed: Mapping[str, PoolLoad],
    state: PlacementStatus | None,
    now: datetime,
) -> Placement:
    """One placement pass (see the module docstring for the rules)."""
    if not pools:
        return Placement(replicas={}, state=PlacementStatus(), reason="no usable pool")
    names = [p.name for p in pools]
    delay = {p.name: p.overflow_after_seconds for p in pools}
    prev = state or PlacementStatus()
    kept = {p.name: p for p in prev.pools if p.name in delay}
    assigned = {n: kept[n].replicas if n in kept else 0 for n in names}
    applied = dict(assigned)  # what the Deployments were last given
    basis = applied  # the replicas the observed pods are measured against
    backoff = {n: kept[n].backoff_seconds if n in kept else None for n in names}
    retry = {n: parse_time(kept[n].retry_after) if n in kept else None for n in names}
    probe = (
        prev.probe_pool
        if prev.probe_pool in delay
        and prev.probe_from in delay
        and names.index(prev.probe_pool) < names.index(prev.probe_from)
        else None
    )
    probe_from = prev.probe_from if probe else None
    probe_since = prev.probe_since if probe else None
    load = {n: observed.get(n, PoolLoad()) for n in names}
    notes: list[str] = []
    overflowed: list[Move] = []
    consolidated: list[Move] = []

    def pending(name: str) -> tuple[datetime, ...]:
        # Pods beyond the applied replicas are on their way out; count them against the
        # Pending ones (the oldest), so a move is never made twice on stale observations.
        obs = load[name]
        extra = max(0, obs.pods - basis[name])
        times = sorted(obs.pending_since)
        return tuple(times[extra:])

    def overdue(name: str) -> int:
        # Once the oldest Pending pod has waited out the delay the pool is full: its Pending
        # replicas move, and so do replicas whose pods do not exist yet.
        times = pending(name)
        if times and times[0] <= now - timedelta(seconds=delay[name]):
            return len(times) + max(0, basis[name] - load[name].pods)
        return 0

    def backing_off(name: str) -> bool:
        when = retry[name]
        return when is not None and when > now

    # 1. The count: cancel a probe the count moved under, then add or remove replicas.
    if probe is not None and probe_from is not None:
        base = sum(assigned.values()) - 1
        if base != desired or assigned[probe] < 1 or assigned[probe_from] < 1:
            if assigned[probe] >= 1:
                assigned[probe] -= 1
            notes.append(f"probe on {probe} cancelled: the replica count changed")
            probe = probe_from = probe_since = None
    total = sum(assigned.values()) - (1 if probe else 0)
    if total < desired:
        target = next((n for n in names if not pending(n) and not backing_off(n)), names[0])
        assigned[target] += desired - total
        notes.append(f"{desired - total} replicas added on {target}")
    elif total > desired:
        excess = total - desired
        for n in reversed(names):  # Pending replicas first, least preferred first
            take = min(excess, len(pending(n)), assigned[n])
            assigned[n] -= take
            excess -= take
        for n in reversed(names):
            take = min(excess, assigned[n])
            assigned[n] -= take
            excess -= take
        notes.append(f"{total - desired} replicas removed")
    changed = bool(notes)

    # 2. A running probe: Ready → consolidate; Unschedulable past the delay → give up.
    probed = probe  # its Pending pod is the probe's: never overflowed in this pass
    if probe is not None and probe_from is not None:
        if load[probe].ready >= assigned[probe]:
            assigned[probe_from] -= 1
            backoff[probe], retry[probe] = None, None
            consolidated.append(
                Move(
                    replicas=1,
                    source=probe_from,
                    target=probe,
                    message=f"1 replica moved back from {probe_from} to {probe}: the probe "
                    f"replica on {probe} is Ready",
                )
            )
            probe = probe_from = probe_since = None
            changed = True
        elif overdue(probe):
            assigned[probe] -= 1
            backoff[probe] = _backoff(previous=backoff[probe], delay=delay[probe], failed=True)
            retry[probe] = now + timedelta(seconds=backoff[probe] or 0)
            notes.append(
                f"probe on {probe} given up: Unschedulable for over {delay[probe]}s "
                f"({load[probe].message or 'no capacity'}); next probe in {backoff[probe]}s"
            )
            probe = probe_from = probe_since = None
            changed = True

    # 3. Overflow: a pool's Pending replicas past its delay move to the next pool.
    # Measured against the replicas as they stand, moves of this pass included: a pool that
    # receives replicas and is full passes them on.
    basis = assigned
    for i, n in enumerate(names[:-1]):
        if n == probed:
            continue
        moving = min(overdue(n), assigned[n])
        if moving <= 0:
            continue
        target = names[i + 1]
        assigned[n] -= moving
        assigned[target] += moving
        backoff[n] = _backoff(previous=backoff[n], delay=delay[n], failed=False)
        retry[n] = now + timedelta(seconds=backoff[n] or 0)
        why = (load[n].message or "no capacity").rstrip(". ")
        overflowed.append(
            Move(
                replicas=moving,
                source=n,
                target=target,
                message=f"{moving} replicas moved from {n} to {target}: Unschedulable on {n} "
                f"for over {delay[n]}s ({why})",
            )
        )
        changed = True

    # 4. Consolidation: on a settled endpoint, probe a more preferred pool with one surge replica.
    settled = all(
        load[n].pods == applied[n] == assigned[n]
        and load[n].ready >= assigned[n]
        and not load[n].pending_since
        for n in names
    )
    if not changed and probe is None and settled:
        holders = [i for i, n in enumerate(names) if assigned[n] > 0]
        if holders:
            q = holders[-1]
            p = next((i for i in range(q) if not backing_off(names[i])), None)
            if p is not None:
                probe, probe_from, probe_since = names[p], names[q], rfc3339(now)
                assigned[probe] += 1
                notes.append(f"probing {probe} with a surge replica to replace one on {names[q]}")

    new_state = PlacementStatus(
        pools=[
            PoolPlacement(
                name=n,
                replicas=assigned[n],
                backoff_seconds=backoff[n],
                retry_after=_stamp(retry[n]),
            )
            for n in names
        ],
        probe_pool=probe,
        probe_from=probe_from,
        probe_since=probe_since,
    )
    split = ", ".join(f"{assigned[n]} on {n}" for n in names if assigned[n]) or "no replicas"
    events = [m.message for m in (*overflowed, *consolidated)]
    reason = "; ".join([split, *notes, *events])
    return Placement(
        replicas=assigned,
        state=new_state,
        reason=reason,
        overflowed=tuple(overflowed),
        consolidated=tuple(consolidated),
        notes=tuple(notes),
    )
