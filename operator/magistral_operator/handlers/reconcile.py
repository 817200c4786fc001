"""One level-triggered reconcile of an endpoint: everything derived from current state.

Called from create/update/resume handlers, from a periodic timer and when a child changes;
running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..api.config import OperatorConfig
from ..api.endpoint import Endpoint, parse_endpoint
from ..api.errors import ConfigError
from ..api.labels import ENDPOINT_LABEL, POOL_LABEL
from ..api.status import (
    DEGRADED,
    READY,
    AutoscalerStatus,
    MagistralEndpointStatus,
    PlacementStatus,
    RolloutStatus,
)
from ..autoscale.policy import Decision, decide, starting_replicas
from ..kube.children import apply_children
from ..kube.client import Kube
from ..kube.events import post_event
from ..kube.metrics import scrape_pods
from ..placement import Placement, PlacementPool, place
from ..plan import EndpointPlan, plan_endpoint
from ..render import render_endpoint
from ..render.hashing import content_hash
from ..rollout import (
    PoolRollout,
    RolloutDecision,
    condition_overrides,
    restore_template,
)
from ..rollout import decide as decide_rollout
from ..status.compute import (
    build_status,
    invalid_spec_updates,
    problem_reason,
    serving_updates,
    spec_warnings,
    status_changed,
)
from ..status.conditions import ConditionUpdate, Transition
from ..status.observe import PoolObservation, observe_pool, pool_load

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did; `problem` is set when the spec cannot be served as written."""

    problem: str | None = None
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    status_written: bool = False


def utc_now() -> str:
    """RFC 3339 time, second precision (what metav1.Time stores)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def previous_status(body: dict[str, Any]) -> MagistralEndpointStatus:
    """The status as stored; an unreadable one counts as empty (it will be rewritten)."""
    try:
        return MagistralEndpointStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return MagistralEndpointStatus()


def _cache_warm(previous: MagistralEndpointStatus) -> bool:
    # A shared cache is warm once a replica of this endpoint has been ready on it.
    return previous.ready_replicas > 0


def autoscale(
    *, endpoint: Endpoint, previous: MagistralEndpointStatus, pods: list[dict[str, Any]]
) -> Decision:
    """One autoscaler pass: scrape the ready pods, apply the policy (autoscale/policy.py)."""
    scaling = endpoint.spec.scaling
    return decide(
        current=starting_replicas(
            state=previous.autoscaler, status_replicas=previous.replicas, scaling=scaling
        ),
        samples=scrape_pods(pods),
        scaling=scaling,
        state=previous.autoscaler,
        now=datetime.now(UTC),
    )


def rollout_pass(
    kube: Kube,
    *,
    endpoint: Endpoint,
    plan: EndpointPlan,
    revision: str,
    previous: RolloutStatus | None,
    pods: list[dict[str, Any]],
) -> RolloutDecision:
    """Judge the rollout (rollout.py) from the Deployments, ReplicaSets and pods as they are."""
    name, namespace = endpoint.name, endpoint.namespace
    selector = f"{ENDPOINT_LABEL}={name}"
    deployments = {
        d["metadata"]["name"]: d
        for d in kube.list("Deployment", namespace=namespace, selector=selector)
    }
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
    """One placement pass over the plan's usable pools (placement.py)."""
    return place(
        desired=plan.desired_replicas,
        pools=[
            PlacementPool(name=p.pool.name, overflow_after_seconds=p.pool.overflow_delay_seconds)
            for p in plan.usable_pools
        ],
        observed={p.pool.name: pool_load(pool=p.pool.name, pods=pods) for p in plan.usable_pools},
        state=previous.placement,
        now=datetime.now(UTC),
    )


def reconcile(kube: Kube, config: OperatorConfig, body: dict[str, Any]) -> Outcome:
    """Bring the endpoint's children and status in line with its spec and the cluster."""
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 0)
    previous = previous_status(body)
    outcome = Outcome()
    try:
        endpoint = parse_endpoint(body)
    except ConfigError as exc:
        outcome.problem = str(exc)
        _write_status(
            kube, body, previous, updates=invalid_spec_updates(str(exc)), generation=generation
        )
        return outcome

    selector = f"{ENDPOINT_LABEL}={name}"
    pods_before = kube.list("Pod", namespace=namespace, selector=selector)
    decision = autoscale(endpoint=endpoint, previous=previous, pods=pods_before)
    unplaced = plan_endpoint(endpoint, config, desired_replicas=decision.desired_replicas)
    placement = (
        place_replicas(plan=unplaced, previous=previous, pods=pods_before) if unplaced.ok else None
    )
    rendered = render_endpoint(
        endpoint,
        config,
        desired_replicas=decision.desired_replicas,
        placement=placement.replicas if placement else None,
        cache_warm=_cache_warm(previous),
    )
    plan = rendered.plan
    if not plan.ok:
        outcome.problem = "; ".join(plan.problems)
        _write_status(
            kube,
            body,
            previous,
            updates=invalid_spec_updates(outcome.problem, reason=problem_reason(plan)),
            generation=generation,
            plan=plan,
        )
        return outcome

    rollout = rollout_pass(
        kube,
        endpoint=endpoint,
        plan=plan,
        revision=rendered.revision or "",
        previous=previous.rollout,
        pods=pods_before,
    )
    objects = with_restored_templates(rendered.objects, rollout)
    desired = [(obj, content_hash(obj, length=16)) for obj in objects]
    report = apply_children(kube, namespace=namespace, endpoint=name, desired=desired)
    outcome.applied, outcome.deleted = report.applied, report.deleted
    if report.applied or report.deleted:
        log.info("%s/%s: applied %s, deleted %s", namespace, name, report.applied, report.deleted)

    deployments = {
        d["metadata"]["name"]: d
        for d in kube.list("Deployment", namespace=namespace, selector=selector)
    }
    pods = kube.list("Pod", namespace=namespace, selector=selector)
    observed: dict[str, PoolObservation] = {}
    for pool_plan in plan.usable_pools:
        dep_name = f"{name}-{pool_plan.pool.name}"
        observed[pool_plan.pool.name] = observe_pool(
            pool=pool_plan.pool.name,
            deployment=deployments.get(dep_name),
            pods=pods,
            revision=rollout.applied_revision,
        )
    probe = placement.state.probe_pool if placement else None
    if probe in observed:  # a probe waiting for capacity does not degrade the endpoint
        observed[probe] = replace(observed[probe], unschedulable=None)
    outcome.status_written = _write_status(
        kube,
        body,
        previous,
        updates=with_rollout_conditions(
            serving_updates(plan=plan, observed=observed),
            rollout=rollout,
            observed=observed,
            desired=plan.desired_replicas,
        ),
        generation=generation,
        plan=plan,
        observed=observed,
        revision=rollout.applied_revision,
        url=rendered.url,
        served_model_name=endpoint.served_model_name,
        budget_seconds=rendered.budget.seconds if rendered.budget else None,
        budget=rendered.budget.explanation if rendered.budget else None,
        warnings=spec_warnings(endpoint),
        autoscaler=decision.state,
        rollout=rollout.state,
        placement=placement.state if placement else None,
    )
    if placement is not None:  # announced once the state is persisted
        _post_placement_events(kube, body, placement)
    for note in rollout.events:  # announced once the state is persisted
        log.info("%s/%s: %s: %s", namespace, name, note.reason, note.message)
        post_event(
            kube,
            endpoint=body,
            type_=note.type,
            reason=note.reason,
            message=note.message,
            now=utc_now(),
        )
    if decision.scaled:  # announced once the decision is persisted
        log.info("%s/%s: %s", namespace, name, decision.reason)
        post_event(
            kube,
            endpoint=body,
            type_="Normal",
            reason=f"Scaled{decision.scaled}",
            message=decision.reason,
            now=utc_now(),
        )
    return outcome


def _write_status(
    kube: Kube,
    body: dict[str, Any],
    previous: MagistralEndpointStatus,
    *,
    updates: list[ConditionUpdate],
    generation: int,
    plan: EndpointPlan | None = None,
    observed: dict[str, PoolObservation] | None = None,
    revision: str | None = None,
    url: str | None = None,
    served_model_name: str | None = None,
    budget_seconds: int | None = None,
    budget: str | None = None,
    warnings: list[str] | None = None,
    autoscaler: AutoscalerStatus | None = None,
    rollout: RolloutStatus | None = None,
    placement: PlacementStatus | None = None,
) -> bool:
    now = utc_now()
    status, transitions = build_status(
        previous=previous,
        generation=generation,
        now=now,
        updates=updates,
        plan=plan,
        observed=observed or {},
        revision=revision,
        url=url,
        served_model_name=served_model_name,
        startup_budget_seconds=budget_seconds,
        startup_budget=budget,
        warnings=warnings,
        autoscaler=autoscaler,
        rollout=rollout,
        placement=placement,
    )
    if not status_changed(previous, status):
        return False
    patch = merge_patch(previous.to_wire(), status.to_wire())
    meta = body["metadata"]
    kube.patch_status(
        "MagistralEndpoint", namespace=meta["namespace"], name=meta["name"], status=patch
    )
    for transition in transitions:
        _post_transition(kube, body, transition, now=now)
    return True


def _post_placement_events(kube: Kube, body: dict[str, Any], placement: Placement) -> None:
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


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new`: fields gone from `new` (at any depth) are nulled.

    Nested objects merge, so a field dropped from e.g. `status.rollout` must be sent as null.
    """
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    return patch


def _post_transition(kube: Kube, body: dict[str, Any], transition: Transition, *, now: str) -> None:
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
