"""The endpoint status from the plan, the render and the observations (pure).

Its conditions come from endpoint_conditions.py (every rule in one place).
"""

from __future__ import annotations

from ..api.endpoint import Endpoint
from ..api.status import (
    AutoscalerStatus,
    Condition,
    MagistralEndpointStatus,
    PlacementStatus,
    PoolStatus,
    RolloutStatus,
    RouterStatus,
)
from ..plan import EndpointPlan
from .conditions import ConditionUpdate, Transition, merge_conditions
from .observe import PoolObservation


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


__all__ = ["Condition", "build_status", "pool_statuses", "spec_warnings", "status_changed"]
