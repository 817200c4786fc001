"""The decisions of one reconcile pass: autoscaling, placement and rollout.

Each gathers what its pure policy needs (pods, Deployments, ReplicaSets) and calls it; nothing
here writes to the cluster.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..api.config import OperatorConfig
from ..api.endpoint import Endpoint
from ..api.labels import ENDPOINT_LABEL, POOL_LABEL
from ..api.status import MagistralEndpointStatus, RolloutStatus
from ..autoscale.demand import DemandConfig, DemandDecision, DemandState, fill_order
from ..autoscale.demand import decide as decide_demand
from ..kube.client import Kube
from ..kube.demand import DemandReader
from ..placement import Placement, PlacementPool, place
from ..plan import EndpointPlan, plan_endpoint, replica_capacity
from ..references import READ_BEFORE_PODS, Reference
from ..rollout import (
    PoolRollout,
    RolloutDecision,
    condition_overrides,
    restore_template,
)
from ..rollout import decide as decide_rollout
from ..sizing.throughput import ReplicaThroughput
from ..status.conditions import ConditionUpdate
from ..status.observe import PoolObservation, pool_load

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
    return decide_demand(
        current=start,
        sample=sample,
        config=demand_config(
            endpoint, capacity=capacity, startup_seconds=previous.startup_budget_seconds
        ),
        state=DemandState.from_status(previous.autoscaler, default=start),
        now=datetime.now(UTC),
    )


def rollout_pass(
    kube: Kube,
    *,
    endpoint: Endpoint,
    plan: EndpointPlan,
    revision: str,
    previous: RolloutStatus | None,
    deployments: dict[str, dict[str, Any]],
    pods: list[dict[str, Any]],
) -> RolloutDecision:
    """Judge the rollout (rollout.py) from the Deployments, ReplicaSets and pods as they are."""
    name, namespace = endpoint.name, endpoint.namespace
    selector = f"{ENDPOINT_LABEL}={name}"
    replica_sets = kube.list("ReplicaSet", namespace=namespace, selector=selector)
    pools = [
        PoolRollout(
            pool=p.pool.name,
            deployment=deployments.get(f"{name}-{p.pool.name}"),
            replica_sets=replica_sets,
            pods=pods,
        )
        for p in plan.usable_pools
    ]
    return decide_rollout(
        revision=revision,
        pools=pools,
        rollout=endpoint.spec.rollout,
        state=previous,
        now=datetime.now(UTC),
        desired_replicas=plan.desired_replicas,
    )


def with_restored_templates(
    objects: list[dict[str, Any]], rollout: RolloutDecision
) -> list[dict[str, Any]]:
    """The rendered children, with a rolled-back pool's Deployment on its healthy template."""
    out = []
    for obj in objects:
        pool = (obj["metadata"].get("labels") or {}).get(POOL_LABEL)
        template = rollout.templates.get(pool or "") if obj["kind"] == "Deployment" else None
        out.append(
            obj
            if template is None
            else restore_template(obj, template=template, revision=rollout.applied_revision)
        )
    return out


def with_rollout_conditions(
    updates: list[ConditionUpdate],
    *,
    rollout: RolloutDecision,
    observed: dict[str, PoolObservation],
    desired: int,
) -> list[ConditionUpdate]:
    """The observed conditions, with Progressing/Degraded as the rollout state has them."""
    current_ready = sum(o.current_revision_ready for o in observed.values())
    overrides = {
        o.type: ConditionUpdate(o.type, o.status, o.reason, o.message)
        for o in condition_overrides(rollout, current_ready=current_ready, desired=desired)
    }
    return [overrides.get(u.type, u) for u in updates]


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
            found[(ref.kind, ref.name)] = kube.get(ref.kind, namespace=namespace, name=ref.name)
    return found
