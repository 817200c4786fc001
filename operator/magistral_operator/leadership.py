"""Leader election on a coordination.k8s.io Lease: the pure decisions (no I/O, no clock).

client-go's algorithm (`tools/leaderelection`), which controller-runtime and KubeAI use:

- A candidate reads the Lease every `retry_period`. It remembers *when it last saw the record
  change* on its own monotonic clock (`Observation.observed_at`), so clocks of different
  machines never get compared: a record that has not changed for `leaseDurationSeconds` of
  the reader's own time is expired.
- No Lease → create it; an expired record or an empty holder → take it (update with the read
  resourceVersion, so of two candidates only one wins); our own record → renew it; otherwise
  wait.
- The leader counts itself leader only until `renewed_at + renew_deadline`, where `renewed_at`
  is when the last successful renewal *started*. A standby takes over no sooner than
  `lease_duration` after it saw that renewal, which happened after it started, so the old
  leader stops acting at least `lease_duration - renew_deadline` before anyone else may start.

Bounds (`takeover_bound`): a leader that dies is replaced within
`lease_duration + 2 x retry_period` (its last renewal is seen up to one retry period late, and
the takeover happens at the next try after expiry), 19 s with the defaults 15 s/10 s/2 s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's three durations, in seconds."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration}/{self.renew_deadline}/{self.retry_period}"
            )

    @property
    def fencing_margin(self) -> float:
        """How long before a standby may acquire the old leader has stopped acting."""
        return self.lease_duration - self.renew_deadline

    @property
    def takeover_bound(self) -> float:
        """The longest a dead leader stays unreplaced (from its death to the new term)."""
        return self.lease_duration + 2 * self.retry_period


@dataclass(frozen=True)
class LeaseRecord:
    """The parts of a Lease's spec the algorithm reads (`None` holder: released or never held)."""

    holder: str | None
    lease_duration_seconds: int
    renew_time: str | None
    acquire_time: str | None
    transitions: int
    resource_version: str = ""

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        """Read a Lease object as the API server serves it."""
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        return cls(
            holder=spec.get("holderIdentity") or None,
            lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            renew_time=spec.get("renewTime"),
            acquire_time=spec.get("acquireTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=str(meta.get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class Observation:
    """A record and when (the reader's monotonic clock) it was first seen as it is."""

    record: LeaseRecord
    observed_at: float


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """Keep the first sighting of an unchanged record; a changed record restarts the clock.

    A renewal changes `renewTime` (and the resourceVersion), so a live leader's record keeps
    changing and a dead leader's stops.
    """
    if previous is not None and _same(previous.record, record):
        return previous
    return Observation(record, now)


def _same(a: LeaseRecord, b: LeaseRecord) -> bool:
    return (a.holder, a.renew_time, a.acquire_time, a.transitions, a.lease_duration_seconds) == (
        b.holder,
        b.renew_time,
        b.acquire_time,
        b.transitions,
        b.lease_duration_seconds,
    )


class Decision(enum.Enum):
    """What a candidate does with the Lease it just read."""

    CREATE = "create"  # no Lease yet
    ACQUIRE = "acquire"  # expired or released: take it (a new term)
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another holder's, still valid


def decide(
    identity: str, observation: Observation | None, now: float, timing: LeaseTiming
) -> Decision:
    """The decision for `identity` given the last observation (None: no Lease) at `now`."""
    if observation is None:
        return Decision.CREATE
    record = observation.record
    if record.holder == identity:
        return Decision.RENEW
    if record.holder is None:
        return Decision.ACQUIRE
    duration = record.lease_duration_seconds or timing.lease_duration
    if now >= observation.observed_at + duration:
        return Decision.ACQUIRE
    return Decision.WAIT


def lease_spec(
    identity: str,
    decision: Decision,
    current: LeaseRecord | None,
    wall_now: str,
    timing: LeaseTiming,
) -> dict[str, object]:
    """The Lease spec to write for a CREATE, ACQUIRE or RENEW decision (`wall_now`: RFC 3339)."""
    if decision is Decision.WAIT:
        raise ValueError("nothing to write while waiting")
    renewing = decision is Decision.RENEW and current is not None
    transitions = current.transitions if current is not None else 0
    return {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(timing.lease_duration)),
        "acquireTime": current.acquire_time if renewing and current else wall_now,
        "renewTime": wall_now,
        "leaseTransitions": transitions if renewing or current is None else transitions + 1,
    }


def release_spec(current: LeaseRecord, wall_now: str) -> dict[str, object]:
    """The spec a leader that stops writes so that a standby takes over at its next try."""
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": current.acquire_time,
        "renewTime": wall_now,
        "leaseTransitions": current.transitions,
    }


def still_leading(renewed_at: float | None, now: float, timing: LeaseTiming) -> bool:
    """Fencing: the leader acts only before `renew_deadline` after its last renewal started."""
    return renewed_at is not None and now < renewed_at + timing.renew_deadline
