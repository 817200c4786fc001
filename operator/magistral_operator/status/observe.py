"""Summaries of observed children (plain dicts as the API returns them), per pool (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..api.endpoint import Endpoint
from ..api.labels import POOL_LABEL, REVISION_LABEL
from ..api.status import RouterStatus
from ..api.timestamps import parse_time
from ..placement import PoolLoad

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FAILING_WAIT_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "InvalidImageName",
    }
)


@dataclass(frozen=True)
class PoolObservation:
    """What the cluster shows for one pool's Deployment and pods."""

    pool: str
    replicas: int = 0
    ready_replicas: int = 0
    current_revision_ready: int = 0
    pods: int = 0
    unschedulable: str | None = None
    failing: str | None = None


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _unschedulable(pod: dict[str, Any]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return str(cond.get("message") or "unschedulable")
    return None


def _failing(pod: dict[str, Any]) -> str | None:
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"pod {pod['metadata']['name']} failed: {status.get('reason') or 'Error'}"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS:
            detail = waiting.get("message") or ""
            return f"pod {pod['metadata']['name']}: {waiting['reason']} {detail}".strip()
    return None


def observe_pool(
    *, pool: str, deployment: dict[str, Any] | None, pods: list[dict[str, Any]], revision: str
) -> PoolObservation:
    """Summarise one pool; `pods` may include other pools' pods (they are filtered)."""
    mine = [
        p
        for p in pods
        if (p.get("metadata", {}).get("labels") or {}).get(POOL_LABEL) == pool
        and not p.get("metadata", {}).get("deletionTimestamp")
    ]
    ready = [p for p in mine if _pod_ready(p)]
    current_ready = [
        p for p in ready if (p["metadata"].get("labels") or {}).get(REVISION_LABEL) == revision
    ]
    unschedulable = next((m for m in map(_unschedulable, mine) if m), None)
    failing = next((m for m in map(_failing, mine) if m), None)
    replicas = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
    return PoolObservation(
        pool=pool,
        replicas=replicas,
        ready_replicas=len(ready),
        current_revision_ready=len(current_ready),
        pods=len(mine),
        unschedulable=unschedulable,
        failing=failing,
    )


def pending_since(pod: dict[str, Any]) -> datetime | None:
    """Since when the scheduler has found no node for the pod (None: it is not Unschedulable)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return parse_time(cond.get("lastTransitionTime")) or EPOCH
    return None


def pool_load(*, pool: str, pods: list[dict[str, Any]]) -> PoolLoad:
    """What placement needs from one pool's pods: counts, and since when each is Unschedulable.

    A pod without a readable lastTransitionTime counts as Unschedulable since long ago.
    """
    mine = [
        p
        for p in pods
        if (p.get("metadata", {}).get("labels") or {}).get(POOL_LABEL) == pool
        and not p.get("metadata", {}).get("deletionTimestamp")
    ]
    since = tuple(t for t in map(pending_since, mine) if t is not None)
    return PoolLoad(
        pods=len(mine),
        ready=sum(1 for p in mine if _pod_ready(p)),
        pending_since=since,
        message=next((m for m in map(_unschedulable, mine) if m), None),
    )


def observe_router(
    deployment: dict[str, Any] | None, pods: list[dict[str, Any]], *, endpoint: Endpoint
) -> RouterStatus:
    """The router Deployment's desired pods (the spec's, before it exists) and ready ones."""
    wanted = (deployment or {}).get("spec", {}).get("replicas")
    replicas = wanted if isinstance(wanted, int) else endpoint.spec.router.replicas
    ready = sum(1 for p in pods if _pod_ready(p))
    return RouterStatus(replicas=replicas, ready_replicas=ready, ready=f"{ready}/{replicas}")
