"""One level-triggered reconcile of an endpoint: everything derived from current state.

Called from create/update/resume handlers, from a periodic timer and when a child changes;
running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..api.config import OperatorConfig
from ..api.endpoint import parse_endpoint
from ..api.errors import ConfigError
from ..api.labels import ENDPOINT_LABEL
from ..api.status import (
    AutoscalerStatus,
    MagistralEndpointStatus,
    PendingEvent,
    PlacementStatus,
    RolloutStatus,
    RouterStatus,
)
from ..kube.children import apply_children
from ..kube.client import Kube
from ..kube.demand import DemandReader
from ..plan import EndpointPlan, plan_endpoint
from ..references import endpoint_references, missing_references
from ..render import render_endpoint
from ..render.hashing import content_hash
from ..render.metadata import COMPONENT, COMPONENT_LABEL
from ..render.router import ROUTER_COMPONENT, router_name
from ..rollout_capacity import (  # capacity: no rollout deadlocks on GPUs (docs/rollout.md)
    capacity_pass,
    owns_pending,
    placement_pods,
    with_capacity,
    with_capacity_state,
)
from ..status.announcements import Note, owed, transition_note
from ..status.compute import build_status, spec_warnings, status_changed
from ..status.conditions import ConditionUpdate, Transition, merge_conditions
from ..status.endpoint_conditions import ConditionInputs, endpoint_conditions, problem_reason
from ..status.observe import PoolObservation, observe_pool, observe_router
from ..status.patch import merge_patch
from .announce import flush, placement_notes, utc_now
from .decisions import (
    autoscale,
    place_replicas,
    read_references,
    rollout_pass,
    with_canary,
    with_restored_templates,
)
from .refusals import RefusalBook

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a reconcile did; `problem` is set when the spec cannot be served as written."""

    problem: str | None = None
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    status_written: bool = False


def previous_status(body: dict[str, Any]) -> MagistralEndpointStatus:
    """The status as stored; an unreadable one counts as empty (it will be rewritten)."""
    try:
        return MagistralEndpointStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return MagistralEndpointStatus()


def _cache_warm(previous: MagistralEndpointStatus) -> bool:
    # A shared cache is warm once a replica of this endpoint has been ready on it.
    return previous.ready_replicas > 0


def split_pods(pods: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The endpoint's pods as (engine pods, router pods), by their component label."""
    engines, routers = [], []
    for pod in pods:
        component = (pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL)
        if component == COMPONENT:
            engines.append(pod)
        elif component == ROUTER_COMPONENT:
            routers.append(pod)
    return engines, routers


def reconcile(
    kube: Kube,
    config: OperatorConfig,
    body: dict[str, Any],
    *,
    demand: DemandReader,
    refusals: RefusalBook | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Bring the endpoint's children and status in line with its spec and the cluster.

    `demand` reads the routers and engines for the autoscaler (kube/demand.py; it keeps the
    arrival record of each endpoint, so one per operator process). `refusals` remembers
    children the API server refused, so that they are retried with back-off rather than on
    every pass (one book per operator process).
    """
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    generation = int(meta.get("generation") or 0)
    # Events a crash kept from being posted after the last status write, first.
    previous = flush(kube, body, previous_status(body))
    outcome = Outcome()
    try:
        endpoint = parse_endpoint(body)
    except ConfigError as exc:
        outcome.problem = str(exc)
        _write_status(
            kube,
            body,
            previous,
            updates=endpoint_conditions(ConditionInputs(problem=str(exc))),
            generation=generation,
        )
        return outcome

    refs = endpoint_references(endpoint)
    missing = missing_references(refs, read_references(kube, namespace=namespace, refs=refs))
    if missing:  # no pod is created that could only wait for what does not exist
        outcome.problem = "; ".join(missing)
        _write_status(
            kube,
            body,
            previous,
            updates=endpoint_conditions(
                ConditionInputs(problem=outcome.problem, problem_reason="ReferenceNotFound")
            ),
            generation=generation,
        )
        return outcome

    selector = f"{ENDPOINT_LABEL}={name}"
    pods_before, routers_before = split_pods(
        kube.list("Pod", namespace=namespace, selector=selector)
    )
    decision = autoscale(
        endpoint=endpoint,
        config=config,
        previous=previous,
        engines=pods_before,
        routers=routers_before,
        reader=demand,
        now=float(clock()),
    )
    desired_replicas = decision.desired_replicas if decision else None
    unplaced = plan_endpoint(endpoint, config, desired_replicas=desired_replicas)
    placement = (
        place_replicas(
            plan=unplaced, previous=previous, pods=placement_pods(pods_before, previous.rollout)
        )
        if unplaced.ok
        else None
    )
    rendered = render_endpoint(
        endpoint,
        config,
        desired_replicas=desired_replicas,
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
            updates=endpoint_conditions(
                ConditionInputs(problem=outcome.problem, problem_reason=problem_reason(plan))
            ),
            generation=generation,
            plan=plan,
        )
        return outcome

    deployments = {
        d["metadata"]["name"]: d
        for d in kube.list("Deployment", namespace=namespace, selector=selector)
    }
    rollout = rollout_pass(
        kube,
        endpoint=endpoint,
        plan=plan,
        revision=rendered.revision or "",
        previous=previous.rollout,
        deployments=deployments,
        pods=pods_before,
        routers=routers_before,
        reader=demand,
        now=float(clock()),
    )
    # --- capacity: a full GPU pool never deadlocks the rollout (rollout_capacity.py) ---
    capacity = capacity_pass(
        name=name,
        plan=plan,
        rollout=rollout,
        previous=previous.rollout,
        rollout_spec=endpoint.spec.rollout,
        deployments=deployments,
        pods=pods_before,
        needed=decision.recommended if decision else None,
        now=datetime.now(UTC),
    )
    rollout = with_capacity_state(rollout, capacity)
    # --- end capacity ---
    objects = with_canary(
        with_capacity(with_restored_templates(rendered.objects, rollout, deployments), capacity),
        rendered=rendered.objects,
        rollout=rollout,
        endpoint=endpoint,
        plan=plan,
    )
    desired = [(obj, content_hash(obj, length=16)) for obj in objects]
    book = refusals if refusals is not None else RefusalBook()
    key, now = (namespace, name), float(clock())
    report = apply_children(
        kube, namespace=namespace, endpoint=name, desired=desired, held=book.held(key, now=now)
    )
    for refused in book.record(key, report, now=now):
        log.warning(
            "%s/%s: the API server refused %s (%s): %s",
            namespace,
            name,
            refused.label,
            refused.status,
            refused.message,
        )
    outcome.applied, outcome.deleted = report.applied, report.deleted
    outcome.refused = [r.label for r in report.refused]
    if report.applied or report.deleted:
        log.info("%s/%s: applied %s, deleted %s", namespace, name, report.applied, report.deleted)

    # The conditions come from the pods the rollout was judged on (one snapshot per pass: a
    # pod that turned crash-looping since would otherwise flip Degraded to ReplicasFailing one
    # pass before the rollout fails on it). What the apply changes comes with the pods' own
    # events, and their pass.
    pods, routers = pods_before, routers_before
    router = observe_router(deployments.get(router_name(endpoint)), routers, endpoint=endpoint)
    observed: dict[str, PoolObservation] = {}
    for pool_plan in plan.usable_pools:
        dep_name = f"{name}-{pool_plan.pool.name}"
        observed[pool_plan.pool.name] = observe_pool(
            pool=pool_plan.pool.name,
            deployment=deployments.get(dep_name),
            pods=pods,
            revision=rollout.applied_revision,
            unreachable=decision.unreachable if decision else (),
        )
    probe = placement.state.probe_pool if placement else None
    if probe in observed:  # a probe waiting for capacity does not degrade the endpoint
        observed[probe] = replace(observed[probe], unschedulable=None)
    # Announced once the state is persisted (recorded by the same write, announce.py).
    notes = placement_notes(body, placement) if placement is not None else []
    for note in rollout.events:
        log.info("%s/%s: %s: %s", namespace, name, note.reason, note.message)
        notes.append((note.type, note.reason, note.message))
    if decision is not None and decision.scaled:
        log.info("%s/%s: %s", namespace, name, decision.reason)
        reason = "ScaledFromZero" if decision.scaled_from_zero else f"Scaled{decision.scaled}"
        notes.append(("Normal", reason, decision.reason))
    # Conditions: the facts gathered above, every rule in status/endpoint_conditions.py.
    outcome.status_written = _write_status(
        kube,
        body,
        previous,
        updates=endpoint_conditions(
            ConditionInputs(
                desired=plan.desired_replicas,
                observed=observed,
                can_scale_from_zero=endpoint.spec.scaling.max_replicas > 0,
                rollout=rollout,
                capacity=capacity.state,
                rollouts_own_pending=owns_pending(capacity, pods),
                router=router,
                refused=[(r.label, r.message) for r in report.refused],
                secret_refs=refs,
            )
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
        autoscaler=decision.status() if decision else None,
        router=router,
        rollout=rollout.state,
        placement=placement.state if placement else None,
        notes=notes,
    )
    return outcome


def report_failure(kube: Kube, body: dict[str, Any], error: Exception) -> bool:
    """Degraded=True, ReconcileError, naming the error, when a pass failed unexpectedly.

    Only the conditions are written (the rest of status stays as the last good pass left it),
    and only when they change, so a failure that repeats writes once.
    """
    meta = body["metadata"]
    previous = previous_status(body)
    updates = endpoint_conditions(ConditionInputs(reconcile_error=str(error)))
    now = utc_now()
    conditions, transitions = merge_conditions(
        previous.conditions, updates, now=now, generation=int(meta.get("generation") or 0)
    )
    if conditions == previous.conditions:
        return False
    status = previous.model_copy(
        update={
            "conditions": conditions,
            "pending_events": _owed(body, previous, transitions, [], now=now),
        }
    )
    patch = merge_patch(previous.to_wire(), status.to_wire())
    kube.patch_status(
        "MagistralEndpoint", namespace=meta["namespace"], name=meta["name"], status=patch
    )
    flush(kube, body, status)
    return True


def _owed(
    body: dict[str, Any],
    previous: MagistralEndpointStatus,
    transitions: list[Transition],
    notes: list[Note],
    *,
    now: str,
) -> list[PendingEvent]:
    """The Events the status write about to be made owes: the previous ones not yet posted,
    the conditions' flips, then `notes`."""
    meta = body["metadata"]
    flips = [n for t in transitions if (n := transition_note(t)) is not None]
    return owed(
        previous.pending_events,
        [*flips, *notes],
        now=now,
        salt=f"{meta.get('uid', '')}/{meta.get('resourceVersion', '')}",
    )


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
    router: RouterStatus | None = None,
    rollout: RolloutStatus | None = None,
    placement: PlacementStatus | None = None,
    notes: list[Note] | None = None,
) -> bool:
    """Write the status when it changed, recording the Events it owes in the same write, and
    post them (announce.flush)."""
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
        router=router,
        rollout=rollout,
        placement=placement,
    )
    status = status.model_copy(
        update={"pending_events": _owed(body, previous, transitions, notes or [], now=now)}
    )
    if not status_changed(previous, status):
        return False
    patch = merge_patch(previous.to_wire(), status.to_wire())
    meta = body["metadata"]
    kube.patch_status(
        "MagistralEndpoint", namespace=meta["namespace"], name=meta["name"], status=patch
    )
    flush(kube, body, status)
    return True
