"""The decisions of one reconcile pass: autoscaling, placement and rollout.

Each gathers what its pure policy needs (pods, Deployments, ReplicaSets) and calls it; nothing
here writes to the cluster.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ..api.config import OperatorConfig
from ..api.endpoint import Endpoint
from ..api.labels import ENDPOINT_LABEL, POOL_LABEL, REVISION_LABEL
from ..api.status import MagistralEndpointStatus, RolloutStatus
from ..autoscale.demand import DemandConfig, DemandDecision, DemandState, fill_order
from ..autoscale.demand import decide as decide_demand
from ..kube.client import Kube
from ..kube.demand import DemandReader
from ..kube.metrics import pod_ready
from ..placement import Placement, PlacementPool, place
from ..plan import EndpointPlan, plan_endpoint, replica_capacity
from ..references import READ_BEFORE_PODS, Reference
from ..render.canary import canary_deployment, canary_name
from ..render.metadata import deployment_name, is_engine_deployment
from ..rollout import (
    CANARY_POOL,
    PoolRollout,
    RolloutDecision,
    restore_template,
)
from ..rollout import decide as decide_rollout
from ..rollout_analysis import Verdict, judge
from ..sizing.throughput import ReplicaThroughput
from ..status.observe import pending_since, pool_load

DEFAULT_STARTUP_SECONDS = 300.0


def demand_config(
    endpoint: Endpoint, *, capacity: ReplicaThroughput, startup_seconds: float | None
) -> DemandConfig:
    """The policy's parameters from spec.scaling and what one replica holds."""
    scaling = endpoint.spec.scaling
    return DemandConfig(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        capacity=capacity,
        target_utilisation=scaling.target_utilization,
        headroom=scaling.headroom,
        startup_seconds=startup_seconds or DEFAULT_STARTUP_SECONDS,
        scale_up_window_seconds=scaling.scale_up_window_seconds,
        scale_down_window_seconds=scaling.scale_down_window_seconds,
    )


def autoscale(
    *,
    endpoint: Endpoint,
    config: OperatorConfig,
    previous: MagistralEndpointStatus,
    engines: list[dict[str, Any]],
    routers: list[dict[str, Any]],
    reader: DemandReader,
    now: float,
) -> DemandDecision | None:
    """One autoscaler pass: read the demand (kube/demand.py), apply autoscale/demand.py.

    None when the spec cannot be planned (nothing to size a replica from): the reconcile then
    reports the plan's problem and leaves the replicas alone.
    """
    capacity = replica_capacity(endpoint, plan_endpoint(endpoint, config))
    if capacity is None:
        return None
    scaling = endpoint.spec.scaling
    start = previous.autoscaler.desired_replicas if previous.autoscaler else None
    if start is None:
        start = previous.replicas or scaling.min_replicas
    sample = reader.read(
        (endpoint.namespace, endpoint.name), routers=routers, engines=engines, now=now
    )
    decision = decide_demand(
        current=start,
        sample=sample,
        config=demand_config(
            endpoint, capacity=capacity, startup_seconds=previous.startup_budget_seconds
        ),
        state=DemandState.from_status(previous.autoscaler, default=start),
        now=datetime.now(UTC),
    )
    return replace(decision, unreachable=sample.unreachable)


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def canary_verdict(
    *,
    endpoint: Endpoint,
    state: RolloutStatus,
    pods: list[dict[str, Any]],
    routers: list[dict[str, Any]],
    reader: DemandReader,
    now: float,
) -> Verdict:
    """The canary analysis so far: the window read (kube/demand.py), judged
    (rollout_analysis.judge). Pending while the canary replica is not Ready."""
    revision = state.current_revision
    canary = [
        p
        for p in pods
        if _labels(p).get(POOL_LABEL) == CANARY_POOL and _labels(p).get(REVISION_LABEL) == revision
    ]
    ready = [p for p in canary if pod_ready(p)]
    if not ready:
        why = next((w for p in canary if (w := pod_waiting_reason(p))), None)
        return Verdict(
            "Pending",
            "the canary replica is not ready yet" + (f": {why}" if why else ""),
        )
    baseline = [
        p
        for p in pods
        if pod_ready(p)
        and _labels(p).get(POOL_LABEL) != CANARY_POOL
        and _labels(p).get(REVISION_LABEL) == state.last_healthy_revision
    ]
    pod = ready[0]["metadata"]["name"]
    reading = reader.read_window(
        (endpoint.namespace, endpoint.name),
        window=f"{revision}/{pod}",
        canary=ready[:1],
        baseline=baseline,
        routers=routers,
        now=now,
    )
    previous = state.analysis
    if isinstance(reading, str):
        if previous is None or previous.phase == "Pending":  # the window has not started
            return Verdict("Pending", reading, pod=pod)
        return Verdict(
            previous.phase,
            f"the window could not be read this pass: {reading}",
            canary_requests=previous.canary_requests if previous else 0,
            baseline_requests=previous.baseline_requests if previous else 0,
            pod=pod,
        )
    return replace(judge(endpoint.spec.rollout.canary, reading), pod=pod)


def pod_waiting_reason(pod: dict[str, Any]) -> str | None:
    """Why a pod is not running yet, as the scheduler or the kubelet says."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".strip()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return None


def rollout_pass(
    kube: Kube,
    *,
    endpoint: Endpoint,
    plan: EndpointPlan,
    revision: str,
    previous: RolloutStatus | None,
    deployments: dict[str, dict[str, Any]],
    pods: list[dict[str, Any]],
    routers: list[dict[str, Any]],
    reader: DemandReader,
    now: float,
) -> RolloutDecision:
    """Judge the rollout (rollout.py) from the Deployments, ReplicaSets and pods as they are,
    and during a canary, from the analysis of its window (read through `reader`)."""
    name, namespace = endpoint.name, endpoint.namespace
    selector = f"{ENDPOINT_LABEL}={name}"
    replica_sets = kube.list("ReplicaSet", namespace=namespace, selector=selector)
    verdict = None
    if (
        previous is not None
        and previous.phase == "Canary"
        and previous.current_revision == revision
    ):
        verdict = canary_verdict(
            endpoint=endpoint, state=previous, pods=pods, routers=routers, reader=reader, now=now
        )
    canary_pools = fill_order([(p.pool.name, p.pool.tier) for p in plan.usable_pools])
    canary_full = None
    if verdict is not None and previous is not None and previous.analysis is not None:
        canary_full = canary_pool_full(
            pods=pods,
            revision=revision,
            pool=previous.analysis.pool,
            plan=plan,
            now=datetime.now(UTC),
        )
    # A pool whose Deployment was never created because it runs nothing (kube/children.py,
    # deferred_create) has nothing to roll out, prove healthy or restore.
    named = [(p, deployment_name(endpoint, p.pool.name)) for p in plan.usable_pools]
    pools = [
        PoolRollout(
            pool=p.pool.name, deployment=deployments.get(dep), replica_sets=replica_sets, pods=pods
        )
        for p, dep in named
        if p.replicas > 0 or dep in deployments
    ]
    return decide_rollout(
        revision=revision,
        pools=pools,
        rollout=endpoint.spec.rollout,
        state=previous,
        now=datetime.now(UTC),
        desired_replicas=plan.desired_replicas,
        canary=PoolRollout(
            pool=CANARY_POOL,
            deployment=deployments.get(canary_name(name)),
            replica_sets=replica_sets,
            pods=pods,
        ),
        verdict=verdict,
        canary_pools=canary_pools,
        canary_full=canary_full,
    )


def canary_pool_full(
    *,
    pods: list[dict[str, Any]],
    revision: str,
    pool: str | None,
    plan: EndpointPlan,
    now: datetime,
) -> str | None:
    """`pool`, when the canary replica's pod has stayed Unschedulable there past the pool's
    overflow delay (placement's rule for a full pool)."""
    delay = next(
        (p.pool.overflow_delay_seconds for p in plan.usable_pools if p.pool.name == pool), None
    )
    if pool is None or delay is None:
        return None
    for pod in pods:
        labels = _labels(pod)
        if labels.get(POOL_LABEL) != CANARY_POOL or labels.get(REVISION_LABEL) != revision:
            continue
        since = pending_since(pod)
        if since is not None and (now - since).total_seconds() >= delay:
            return pool
    return None


def with_canary(
    objects: list[dict[str, Any]],
    *,
    rendered: list[dict[str, Any]],
    rollout: RolloutDecision,
    endpoint: Endpoint,
    plan: EndpointPlan,
) -> list[dict[str, Any]]:
    """`objects`, plus the canary Deployment while the rollout runs one: the rendered
    revision's Deployment of the first pool in fill order (reserved first), as one replica."""
    if not rollout.canary:
        return objects
    by_pool = {_labels(o).get(POOL_LABEL): o for o in rendered if is_engine_deployment(o)}
    order = fill_order([(p.pool.name, p.pool.tier) for p in plan.usable_pools])
    pool = rollout.canary_pool if rollout.canary_pool in by_pool else None
    pool = pool or next((p for p in order if p in by_pool), None)
    if pool is None:
        return objects
    return [*objects, canary_deployment(by_pool[pool], endpoint=endpoint.name)]


def with_restored_templates(
    objects: list[dict[str, Any]],
    rollout: RolloutDecision,
    existing: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The rendered children, with a rolled-back pool's Deployment on its healthy template.

    While templates are restored, a pool Deployment that does not exist yet (`existing`: the
    names of the endpoint's Deployments) and has no healthy template is held at zero replicas:
    the pool never ran the healthy revision, so no ReplicaSet keeps its template, and creating
    it would start the failed revision (the rollout reports the pool, restore_problems)."""
    out = []
    for rendered in objects:
        pool = (rendered["metadata"].get("labels") or {}).get(POOL_LABEL)
        template = rollout.templates.get(pool or "") if rendered["kind"] == "Deployment" else None
        obj = rendered
        if template is not None:
            obj = restore_template(rendered, template=template, revision=rollout.applied_revision)
        elif (
            rollout.templates
            and pool
            and is_engine_deployment(rendered)
            and rendered["metadata"]["name"] not in existing
        ):
            obj = {**rendered, "spec": {**rendered["spec"], "replicas": 0}}
        out.append(obj)
    return out


def place_replicas(
    *, plan: EndpointPlan, previous: MagistralEndpointStatus, pods: list[dict[str, Any]]
) -> Placement:
    """One placement pass over the plan's usable pools (placement.py), reserved ones first
    (autoscale/demand.fill_order: paid-for capacity is filled first and released last)."""
    by_name = {p.pool.name: p for p in plan.usable_pools}
    ordered = [
        by_name[n] for n in fill_order([(p.pool.name, p.pool.tier) for p in by_name.values()])
    ]
    return place(
        desired=plan.desired_replicas,
        pools=[
            PlacementPool(name=p.pool.name, overflow_after_seconds=p.pool.overflow_delay_seconds)
            for p in ordered
        ],
        observed={p.pool.name: pool_load(pool=p.pool.name, pods=pods) for p in plan.usable_pools},
        state=previous.placement,
        now=datetime.now(UTC),
    )


def read_references(
    kube: Kube, *, namespace: str, refs: list[Reference]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """The referenced objects the operator may read (ConfigMaps, PVCs), by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any] | None] = {}
    for ref in refs:
        if ref.kind in READ_BEFORE_PODS and (ref.kind, ref.name) not in found:
            # From the API: the caches hold only the operator's own objects (kube/cached.py).
            found[(ref.kind, ref.name)] = kube.get_fresh(
                ref.kind, namespace=namespace, name=ref.name, live=True
            )
    return found
