"""Summaries of observed children (plain dicts as the API returns them), per pool (pure)."""

from __future__ import annotations

from collections.abc import Collection
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
    unreachable: tuple[str, ...] = ()
    """Pods the cluster shows Ready that the demand read judged unreachable (not counted in
    `ready_replicas` nor `current_revision_ready`), and pods whose node Kubernetes shows lost
    (`node_lost`: not Ready either)."""


def _pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def node_lost(pod: dict[str, Any]) -> bool:
    """Kubernetes shows the pod's node lost: the node lifecycle controller set its Ready False
    while the containers stayed ready (no kubelet reports any more), its reason is `NodeLost`,
    or the taint manager marked it for eviction (`DisruptionTarget`,
    `DeletionByTaintManager`). Only a Running pod counts (not one being deleted)."""
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    if status.get("reason") == "NodeLost":
        return True
    disruption = _condition(pod, "DisruptionTarget")
    if disruption.get("status") == "True" and disruption.get("reason") == "DeletionByTaintManager":
        return True
    return (
        _condition(pod, "Ready").get("status") == "False"
        and _condition(pod, "ContainersReady").get("status") == "True"
    )


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
    *,
    pool: str,
    deployment: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    revision: str,
    unreachable: Collection[str] = (),
) -> PoolObservation:
    """Summarise one pool; `pods` may include other pools' pods (they are filtered).

    `unreachable` names pods the demand read judged unreachable (kube/demand.py): Ready ones
    among them are reported in `unreachable` instead of `ready_replicas`."""
    mine = [
        p
        for p in pods
        if (p.get("metadata", {}).get("labels") or {}).get(POOL_LABEL) == pool
        and not p.get("metadata", {}).get("deletionTimestamp")
    ]
    lost = set(unreachable)
    cluster_ready = [p for p in mine if _pod_ready(p)]
    ready = [p for p in cluster_ready if p["metadata"].get("name") not in lost]
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
        unreachable=tuple(
            sorted(
                str(p["metadata"]["name"])
                for p in mine
                if (p in cluster_ready and p not in ready) or (not _pod_ready(p) and node_lost(p))
            )
        ),
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
