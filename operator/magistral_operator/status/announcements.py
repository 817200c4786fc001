"""The Events a status write owes (pure): recorded in `status.pendingEvents` by the write
that persists the decision they announce, posted after it under a name derived from the
record, and dropped from status once posted.

A crash between the write and the Event leaves the Event in status, so the next pass posts
it (one pass late); a crash between the Event and its removal leaves it too, and the re-post
answers AlreadyExists (the name is the record's), so nothing is announced twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..api.status import DEGRADED, READY, PendingEvent
from ..api.timestamps import parse_time
from .conditions import Transition

Note = tuple[str, str, str]
"""(type, reason, message) of an Event to announce."""

MAX_PENDING = 32
"""The most announcements status holds (the oldest go first); a pass owes a handful."""

MAX_MESSAGE = 1024
"""An Event's message is cut to this (as the Event itself was)."""

PENDING_TTL = timedelta(hours=1)
"""An announcement not posted within this is dropped (the API server's default Event TTL:
an Event posted later would be news about a state long gone)."""


def transition_note(transition: Transition) -> Note | None:
    """The Event a condition's flip posts; None for a condition appearing False (no news)."""
    cond = transition.new
    if transition.old_status is None and cond.status != "True" and cond.type != READY:
        return None
    bad = (cond.type == DEGRADED and cond.status == "True") or (
        cond.type == READY and cond.status == "False" and transition.old_status == "True"
    )
    return (
        "Warning" if bad else "Normal",
        cond.reason,
        f"{cond.type}={cond.status}: {cond.message}",
    )


def owed(
    pending: Iterable[PendingEvent], notes: Iterable[Note], *, now: str, salt: str
) -> list[PendingEvent]:
    """What status must hold after a write: the still-pending announcements, then this
    write's `notes` (recorded at `now`). `salt` (the endpoint's uid and resourceVersion
    before the write) makes the keys of two writes differ even with the same text and second;
    the same note twice in one write is one announcement."""
    out: dict[str, PendingEvent] = {p.key: p for p in pending}
    for type_, reason, message in notes:
        text = message[:MAX_MESSAGE]
        key = event_key(salt=salt, type_=type_, reason=reason, message=text, time=now)
        out.setdefault(
            key, PendingEvent(key=key, type=type_, reason=reason, message=text, time=now)
        )
    return list(out.values())[-MAX_PENDING:]


def event_key(*, salt: str, type_: str, reason: str, message: str, time: str) -> str:
    """16 hex digits naming one announcement (deterministic: the same record, the same key)."""
    raw = json.dumps([salt, type_, reason, message, time])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def event_name(endpoint: str, event: PendingEvent) -> str:
    """The Event's metadata.name."""
    return f"{endpoint}.{event.key}"


def expired(event: PendingEvent, *, now: datetime) -> bool:
    """Whether the announcement is too old to post (or its time is unreadable)."""
    when = parse_time(event.time)
    return when is None or now - when > PENDING_TTL


__all__ = [
    "MAX_PENDING",
    "PENDING_TTL",
    "Note",
    "event_key",
    "event_name",
    "expired",
    "owed",
    "transition_note",
]
