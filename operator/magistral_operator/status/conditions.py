"""Condition bookkeeping in the Kubernetes API conventions (pure).

`lastTransitionTime` changes only when a condition's status flips; reason and message may
change without moving it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.status import Condition, ConditionStatus


@dataclass(frozen=True)
class ConditionUpdate:
    """A condition as computed now, before merging with the previous one."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """A condition whose status flipped (or that appeared): worth an Event."""

    type: str
    old_status: str | None
    new: Condition


def merge_conditions(
    previous: list[Condition],
    updates: list[ConditionUpdate],
    *,
    now: str,
    generation: int,
) -> tuple[list[Condition], list[Transition]]:
    """New condition list (in the order of `updates`) and the transitions it contains."""
    old = {c.type: c for c in previous}
    merged: list[Condition] = []
    transitions: list[Transition] = []
    for update in updates:
        before = old.get(update.type)
        flipped = before is None or before.status != update.status
        condition = Condition(
            type=update.type,
            status=update.status,
            reason=update.reason,
            message=update.message,
            last_transition_time=now if flipped or before is None else before.last_transition_time,
            observed_generation=generation,
        )
        merged.append(condition)
        if flipped:
            transitions.append(
                Transition(
                    type=update.type,
                    old_status=None if before is None else before.status,
                    new=condition,
                )
            )
    return merged, transitions
