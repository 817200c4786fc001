"""One level-triggered reconcile of an endpoint: everything derived from current state.

Called from create/update/resume handlers, from a periodic timer and when a child changes;
running it twice in a row changes nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..api.config import OperatorConfig
from ..api.endpoint import Endpoint, parse_endpoint
from ..api.errors import ConfigError
from ..api.labels import ENDPOINT_LABEL
from ..api.status import DEGRADED, READY, AutoscalerStatus, MagistralEndpointStatus
from ..autoscale.policy import Decision, decide, starting_replicas
from ..kube.children import apply_children
from ..kube.client import Kube
from ..kube.events import post_event
from ..kube.metrics import scrape_pods
from ..plan import EndpointPlan
from ..render import render_endpoint
from ..render.hashing import content_hash
from ..status.compute import (
    build_status,
    invalid_spec_updates,
    problem_reason,
    serving_updates,
    spec_warnings,
    status_changed,
)
from ..status.conditions import ConditionUpdate, Transition
from ..status.observe import PoolObservation, observe_pool

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
    decision = autoscale(
        endpoint=endpoint,
        previous=previous,
        pods=kube.list("Pod", namespace=namespace, selector=selector),
    )
    rendered = render_endpoint(
        endpoint,
        config,
        desired_replicas=decision.desired_replicas,
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

    desired = [(obj, content_hash(obj, length=16)) for obj in rendered.objects]
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
            revision=rendered.revision or "",
        )
    if previous.current_revision and previous.current_revision != rendered.revision:
        post_event(
            kube,
            endpoint=body,
            type_="Normal",
            reason="RevisionApplied",
            message=f"revision {rendered.revision} replaces {previous.current_revision}",
            now=utc_now(),
        )
    outcome.status_written = _write_status(
        kube,
        body,
        previous,
        updates=serving_updates(plan=plan, observed=observed),
        generation=generation,
        plan=plan,
        observed=observed,
        revision=rendered.revision,
        url=rendered.url,
        served_model_name=endpoint.served_model_name,
        budget_seconds=rendered.budget.seconds if rendered.budget else None,
        budget=rendered.budget.explanation if rendered.budget else None,
        warnings=spec_warnings(endpoint),
        autoscaler=decision.state,
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
    )
    if not status_changed(previous, status):
        return False
    new_wire = status.to_wire()
    patch: dict[str, Any] = {k: None for k in previous.to_wire() if k not in new_wire}
    patch.update(new_wire)
    meta = body["metadata"]
    kube.patch_status(
        "MagistralEndpoint", namespace=meta["namespace"], name=meta["name"], status=patch
    )
    for transition in transitions:
        _post_transition(kube, body, transition, now=now)
    return True


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
