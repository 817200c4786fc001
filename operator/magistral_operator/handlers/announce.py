"""Kubernetes Events announcing what a reconcile pass did (after its status is written)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ..api.status import DEGRADED, READY
from ..api.timestamps import rfc3339
from ..kube.client import Kube
from ..kube.events import post_event
from ..placement import Placement
from ..status.conditions import Transition

log = logging.getLogger(__name__)


def utc_now() -> str:
    """Now, as metav1.Time stores it."""
    return rfc3339(datetime.now(UTC))


def post_transition(kube: Kube, body: dict[str, Any], transition: Transition, *, now: str) -> None:
    cond = transition.new
    if transition.old_status is None and cond.status != "True" and cond.type != READY:
        return  # a condition appearing False is not news
    bad = (cond.type == DEGRADED and cond.status == "True") or (
        cond.type == READY and cond.status == "False" and transition.old_status == "True"
    )
    post_event(
        kube,
        endpoint=body,
        type_="Warning" if bad else "Normal",
        reason=cond.reason,
        message=f"{cond.type}={cond.status}: {cond.message}",
        now=now,
    )


def post_placement_events(kube: Kube, body: dict[str, Any], placement: Placement) -> None:
    meta = body["metadata"]
    for note in placement.notes:
        log.info("%s/%s: placement: %s", meta["namespace"], meta["name"], note)
    moves = [("Warning", "Overflow", m) for m in placement.overflowed] + [
        ("Normal", "Consolidated", m) for m in placement.consolidated
    ]
    for type_, reason, move in moves:
        log.info("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, move.message)
        post_event(
            kube, endpoint=body, type_=type_, reason=reason, message=move.message, now=utc_now()
        )
