"""The endpoint status from the plan, the render and the observations (pure)."""

from __future__ import annotations

from ..api.endpoint import Endpoint
from ..api.status import (
    DEGRADED,
    PROGRESSING,
    READY,
    AutoscalerStatus,
    Condition,
    MagistralEndpointStatus,
    PlacementStatus,
    PoolStatus,
    RolloutStatus,
    RouterStatus,
)
from ..plan import EndpointPlan
from ..references import Reference, secret_problem
from .conditions import ConditionUpdate, Transition, merge_conditions
from .observe import PoolObservation


def _reason_for_problem(problem: str) -> str:
    if "unknown pool" in problem:
        return "UnknownPool"
    if "fits on none" in problem:
        return "InsufficientGPUMemory"
    if "spec.model.profile" in problem:
        return "UnknownModel"
    return "InvalidSpec"


REMEDIES = {
    "ReferenceNotFound": "Create the object (or fix the reference); the operator checks again "
    "on its next pass and then creates the endpoint's pods.",
    "InsufficientGPUMemory": "Use a pool with more GPU memory, allow a larger "
    "spec.gpu.tensorParallelSize (or 'auto'), serve the FP8 checkpoint, set "
    "spec.runtime.kvCacheDtype fp8, or lower spec.runtime.maxModelLen.",
    "UnknownPool": "Use a pool the operator config defines (see the message) or ask the "
    "platform team to add one.",
    "UnknownModel": "Set spec.model.profile with the model's architecture numbers.",
}


def invalid_spec_updates(message: str, *, reason: str = "InvalidSpec") -> list[ConditionUpdate]:
    """Conditions for a spec the operator cannot serve: the user must change it."""
    remedy = REMEDIES.get(reason)
    if remedy:
        message = f"{message}. {remedy}"
    return [
        ConditionUpdate(READY, "False", reason, message),
        ConditionUpdate(PROGRESSING, "False", "Blocked", "waiting for a valid spec"),
        ConditionUpdate(DEGRADED, "True", reason, message),
    ]


def serving_updates(
    *,
    plan: EndpointPlan,
    observed: dict[str, PoolObservation],
    can_scale_from_zero: bool = False,
) -> list[ConditionUpdate]:
    """Ready / Progressing / Degraded for a plan that can be served.

    At zero replicas the endpoint is Ready when it can scale from zero (maxReplicas above 0:
    the routers hold a request and the autoscaler starts a replica); paused otherwise.
    """
    desired = plan.desired_replicas
    ready = sum(o.ready_replicas for o in observed.values())
    current_ready = sum(o.current_revision_ready for o in observed.values())
    pods = sum(o.pods for o in observed.values())
    unschedulable = next((o.unschedulable for o in observed.values() if o.unschedulable), None)
    failing = next((o.failing for o in observed.values() if o.failing), None)

    if desired == 0 and can_scale_from_zero:
        ready_update = ConditionUpdate(
            READY,
            "True",
            "ScaledToZero",
            "no replica runs: the router holds the next request and a replica starts for it",
        )
    elif desired == 0:
        ready_update = ConditionUpdate(READY, "False", "ScaledToZero", "maxReplicas is 0 (paused)")
    elif ready > 0:
        ready_update = ConditionUpdate(
            READY, "True", "ReplicasReady", f"{ready}/{desired} replicas ready"
        )
    else:
        why = unschedulable or failing or "replicas are starting (loading weights)"
        ready_update = ConditionUpdate(
            READY, "False", "NoReplicasReady", f"0/{desired} replicas ready: {why}"
        )

    if current_ready < desired:
        reason = "RollingOut" if ready > current_ready else "WaitingForReplicas"
        progressing = ConditionUpdate(
            PROGRESSING,
            "True",
            reason,
            f"{current_ready}/{desired} replicas of the current revision ready",
        )
    elif pods > desired:
        progressing = ConditionUpdate(
            PROGRESSING, "True", "ScalingDown", f"{pods} pods, {desired} desired"
        )
    else:
        progressing = ConditionUpdate(
            PROGRESSING, "False", "Stable", f"{desired} replicas of the current revision ready"
        )

    if unschedulable:
        degraded = ConditionUpdate(
            DEGRADED,
            "True",
            "Unschedulable",
            f"replicas cannot be scheduled: {unschedulable.rstrip('. ')}. Free or add GPU "
            "nodes in the endpoint's pools, add a pool to spec.gpu.pools, or lower "
            "spec.scaling.minReplicas or spec.gpu.tensorParallelSize.",
        )
    elif failing:
        degraded = ConditionUpdate(DEGRADED, "True", "ReplicasFailing", failing)
    else:
        degraded = ConditionUpdate(DEGRADED, "False", "AsExpected", "no problems observed")
    return [ready_update, progressing, degraded]


REFUSAL_MESSAGE_LIMIT = 2000


def with_router(updates: list[ConditionUpdate], router: RouterStatus) -> list[ConditionUpdate]:
    """Ready=False, RouterUnavailable, while no router pod is ready.

    Every request goes through the routers: with none ready the endpoint serves nothing,
    whatever its replicas. Only a Ready=True is overridden (a reason the replicas give for not
    being ready stays); Degraded is left to what the pods show (a router pod that crash-loops
    or cannot be scheduled is reported there by the kubelet's reasons).
    """
    if router.replicas == 0 or router.ready_replicas > 0:
        return updates
    message = (
        f"0/{router.replicas} router pods ready: requests to the endpoint's Service fail "
        "until one is (see status.router and the router pods' events)"
    )
    return [
        ConditionUpdate(READY, "False", "RouterUnavailable", message)
        if u.type == READY and u.status == "True"
        else u
        for u in updates
    ]


def with_refused_children(
    updates: list[ConditionUpdate], refused: list[tuple[str, str]]
) -> list[ConditionUpdate]:
    """Degraded=True, ChildRefused, quoting the API server, when it refused some children.

    `refused` holds (Kind/name, the API server's message). The other conditions stay as
    observed: the children that were applied keep serving.
    """
    if not refused:
        return updates
    quoted = "; ".join(f"the API server refused {label}: {message}" for label, message in refused)
    if len(quoted) > REFUSAL_MESSAGE_LIMIT:
        quoted = quoted[: REFUSAL_MESSAGE_LIMIT - 1] + "…"
    message = (
        f"{quoted}. Fix the endpoint's spec (the message names the field); the operator "
        "retries with back-off and at once when the spec changes."
    )
    kept = [u for u in updates if u.type != DEGRADED]
    return [*kept, ConditionUpdate(DEGRADED, "True", "ChildRefused", message)]


def with_secret_problems(
    updates: list[ConditionUpdate], *, refs: list[Reference]
) -> list[ConditionUpdate]:
    """Degraded=True, ReferenceNotFound, naming the field, when the kubelet reports that a
    Secret the endpoint names (or its key) does not exist (CreateContainerConfigError)."""
    for update in updates:
        if update.type == DEGRADED and update.reason == "ReplicasFailing":
            problem = secret_problem(update.message, refs)
            if problem is not None:
                kept = [u for u in updates if u.type != DEGRADED]
                message = f"{problem}. Create the Secret (or fix the reference)."
                return [*kept, ConditionUpdate(DEGRADED, "True", "ReferenceNotFound", message)]
    return updates


def pool_statuses(plan: EndpointPlan, observed: dict[str, PoolObservation]) -> list[PoolStatus]:
    """Per-pool sizing decisions with their numbers, and observed readiness."""
    out = []
    for p in plan.pools:
        chosen = p.sizing.chosen
        obs = observed.get(p.pool.name)
        out.append(
            PoolStatus(
                name=p.pool.name,
                tier=str(p.pool.tier),
                gpu_product=p.pool.gpu_product,
                fits=p.sizing.fits,
                tensor_parallel_size=p.sizing.tp,
                kv_cache_tokens=chosen.kv_cache_tokens if chosen else None,
                max_full_length_sequences=(
                    round(chosen.full_length_sequences, 2) if chosen else None
                ),
                replicas=p.replicas,
                ready_replicas=obs.ready_replicas if obs else 0,
                message=p.sizing.message,
            )
        )
    return out


def spec_warnings(endpoint: Endpoint) -> list[str]:
    """Valid but risky choices, reported in status.warnings."""
    spec = endpoint.spec
    warnings = []
    if spec.model.source.hub is not None and not spec.model.revision:
        warnings.append(
            "spec.model.revision is not set: replicas started at different times may load "
            "different weights if the repository changes; pin a commit sha"
        )
    if spec.auth.disabled:
        warnings.append("spec.auth.disabled: anyone who can reach the Service can use it")
    if spec.runtime.max_model_len > 40960:
        warnings.append(
            f"spec.runtime.maxModelLen {spec.runtime.max_model_len} exceeds 40960: the model "
            "card says quality may degrade beyond it"
        )
    return warnings


def build_status(
    *,
    previous: MagistralEndpointStatus,
    generation: int,
    now: str,
    updates: list[ConditionUpdate],
    plan: EndpointPlan | None,
    observed: dict[str, PoolObservation],
    revision: str | None,
    url: str | None,
    served_model_name: str | None,
    startup_budget_seconds: int | None,
    startup_budget: str | None,
    warnings: list[str] | None = None,
    autoscaler: AutoscalerStatus | None = None,
    router: RouterStatus | None = None,
    rollout: RolloutStatus | None = None,
    placement: PlacementStatus | None = None,
) -> tuple[MagistralEndpointStatus, list[Transition]]:
    """The full status, with conditions merged against the previous status.

    `autoscaler`, `rollout` and `placement` default to the previous state: a pass that cannot
    decide keeps them.
    """
    conditions, transitions = merge_conditions(
        previous.conditions, updates, now=now, generation=generation
    )
    primary = plan.primary if plan else None
    status = MagistralEndpointStatus(
        observed_generation=generation,
        conditions=conditions,
        tensor_parallel_size=primary.tp if primary else None,
        gpus_per_replica=primary.tp if primary else None,
        gpu_product=primary.pool.gpu_product if primary else None,
        replicas=plan.desired_replicas if plan else 0,
        ready_replicas=sum(o.ready_replicas for o in observed.values()),
        url=url,
        served_model_name=served_model_name,
        current_revision=revision,
        startup_budget_seconds=startup_budget_seconds,
        startup_budget=startup_budget,
        pools=pool_statuses(plan, observed) if plan else [],
        warnings=warnings or [],
        autoscaler=autoscaler if autoscaler is not None else previous.autoscaler,
        router=router if router is not None else previous.router,
        rollout=rollout if rollout is not None else previous.rollout,
        placement=placement if placement is not None else previous.placement,
    )
    return status, transitions


def status_changed(old: MagistralEndpointStatus, new: MagistralEndpointStatus) -> bool:
    """Whether writing `new` would change anything (so unchanged status is never patched)."""
    return old.to_wire() != new.to_wire()


def problem_reason(plan: EndpointPlan) -> str:
    """CamelCase reason for the first problem of a plan that cannot be served."""
    return _reason_for_problem(plan.problems[0]) if plan.problems else "AsExpected"


__all__ = [
    "Condition",
    "build_status",
    "invalid_spec_updates",
    "problem_reason",
    "serving_updates",
    "status_changed",
    "with_refused_children",
    "with_router",
    "with_secret_problems",
]
