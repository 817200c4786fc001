"""Kubernetes Events announcing what a reconcile pass decided, recoverably.

The status write that persists a decision also records the Events it owes
(`status.pendingEvents`, status/announcements.py); `flush` then posts them under names
derived from the record and removes them from status. A pass starts with `flush` too, so an
Event lost to a crash after the write is posted one pass late, and one already posted before
a crash answers AlreadyExists: never twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ..api.status import MagistralEndpointStatus
from ..api.timestamps import rfc3339
from ..kube.client import Kube
from ..kube.events import post_event
from ..placement import Placement
from ..status.announcements import Note, event_name, expired
from ..status.patch import merge_patch

log = logging.getLogger(__name__)


def utc_now() -> str:
    """Now, as metav1.Time stores it."""
    return rfc3339(datetime.now(UTC))


def placement_notes(body: dict[str, Any], placement: Placement) -> list[Note]:
    """The Events of placement's moves (its notes are logged)."""
    meta = body["metadata"]
    for note in placement.notes:
        log.info("%s/%s: placement: %s", meta["namespace"], meta["name"], note)
    moves = [("Warning", "Overflow", m) for m in placement.overflowed] + [
        ("Normal", "Consolidated", m) for m in placement.consolidated
    ]
    for _, reason, move in moves:
        log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, move.message)
    return [(type_, reason, move.message) for type_, reason, move in moves]


def flush(
    kube: Kube, body: dict[str, Any], status: MagistralEndpointStatus
) -> MagistralEndpointStatus:
    """Post the Events `status` (as stored) owes, then remove the posted (or expired) ones
    from status; the status as stored afterwards. One not posted stays for the next pass."""
    if not status.pending_events:
        return status
    meta = body["metadata"]
    now = datetime.now(UTC)
    remaining = []
    for event in status.pending_events:
        if expired(event, now=now):
            log.warning("%s/%s: Event %s dropped: too old", meta["namespace"], meta["name"], event)
            continue
        posted = post_event(
            kube,
            endpoint=body,
            name=event_name(meta["name"], event),
            type_=event.type,
            reason=event.reason,
            message=event.message,
            now=event.time,
        )
        if not posted:
            remaining.append(event)
    if remaining == status.pending_events:
        return status
    flushed = status.model_copy(update={"pending_events": remaining})
    kube.patch_status(
        "MagistralEndpoint",
        namespace=meta["namespace"],
        name=meta["name"],
        status=merge_patch(status.to_wire(), flushed.to_wire()),
    )
    return flushed
