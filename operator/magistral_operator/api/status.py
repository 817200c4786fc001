"""The MagistralEndpoint status: what the operator observed and decided."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import ApiModel

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)


class Condition(ApiModel):
    """A condition in the Kubernetes API conventions' shape."""

    type: str = Field(description="Condition type: Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(
        description="When status last changed (RFC 3339); unchanged when only the message does."
    )
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


class PoolStatus(ApiModel):
    """What the operator decided and observed for one GPU pool of the endpoint."""

    name: str = Field(description="Pool name from the operator config.")
    tier: str = Field(description="Capacity tier: reserved, on-demand or spot.")
    gpu_product: str = Field(description="GPU product of the pool's nodes.")
    fits: bool = Field(description="Whether the model fits this pool's GPUs.")
    tensor_parallel_size: int | None = Field(default=None, description="GPUs per replica here.")
    kv_cache_tokens: int | None = Field(
        default=None, description="Estimated KV-cache capacity per replica, in tokens."
    )
    max_full_length_sequences: float | None = Field(
        default=None,
        description="Estimated concurrent maxModelLen-long sequences one replica's KV holds.",
    )
    replicas: int = Field(default=0, description="Desired replicas on this pool.")
    ready_replicas: int = Field(default=0, description="Ready replicas on this pool.")
    message: str = Field(default="", description="Sizing explanation, with the numbers.")


ScaleDirection = Literal["Up", "Down"]


ReadStatus = Literal["ok", "partial", "failed"]


class RecommendationEntry(ApiModel):
    """One step of the scale-down window's record: `replicas` recommended until `time`."""

    time: str = Field(description="When this recommendation was last made (RFC 3339).")
    replicas: int = Field(ge=0, description="The recommended replicas.")


class DemandSnapshot(ApiModel):
    """The demand the autoscaler read when it last scaled (not refreshed every pass)."""

    queued: int = Field(default=0, ge=0, description="Requests waiting in the routers.")
    in_flight: int = Field(default=0, ge=0, description="Requests sent to engines, not finished.")
    arrival_rate: str = Field(
        default="0", description="Requests per second reaching the routers (decimal text)."
    )
    ready_replicas: int = Field(default=0, ge=0, description="Ready engine replicas then.")


class AutoscalerStatus(ApiModel):
    """The demand autoscaler's persisted state (see docs/autoscaling.md).

    Kept in status so that an operator restart resumes from the last decision instead of
    collapsing to minReplicas. Only values that change on a decision, a change of the
    recommendation or a change of the read are stored, so an endpoint whose load is steady
    writes no status.
    """

    desired_replicas: int = Field(
        ge=0, description="Replicas the autoscaler last decided on (the reconcile's start point)."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed desiredReplicas (RFC 3339)."
    )
    last_scale_reason: str | None = Field(
        default=None, description="Why it last scaled, with the demand and capacity it used."
    )
    last_scale_demand: DemandSnapshot | None = Field(
        default=None, description="The demand read when it last scaled."
    )
    up_since: str | None = Field(
        default=None,
        description="When a recommendation above desiredReplicas was first seen, while it waits "
        "out scaleUpWindowSeconds (RFC 3339); unset otherwise.",
    )
    window_since: str | None = Field(
        default=None,
        description="When the scale-down window's record began (it restarts after a failed or "
        "partial read). A scale-down needs a record covering scaleDownWindowSeconds.",
    )
    window: list[RecommendationEntry] = Field(
        default_factory=list,
        max_length=1001,
        description="The recommendations of the scale-down window as a staircase (each above "
        "every later one): the fleet is never below the highest of them.",
    )
    read: ReadStatus | None = Field(
        default=None,
        description="The last demand read: ok, partial (some ready engines did not answer: no "
        "scale-down) or failed (no router answered: replicas held).",
    )
    read_error: str | None = Field(
        default=None, description="Why the last read was partial or failed."
    )
    held_requests: int = Field(
        default=0,
        ge=0,
        description="Requests the routers hold because no replica is ready (scale from zero).",
    )


class PoolPlacement(ApiModel):
    """The replicas placement assigns to one pool, and when it may next probe it."""

    name: str = Field(description="Pool name from the operator config.")
    replicas: int = Field(
        default=0, ge=0, description="Replicas assigned to this pool (a surge probe included)."
    )
    backoff_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Wait before the next consolidation probe onto this pool; set when replicas "
        "overflowed from it, doubled by each failed probe (up to 30 minutes).",
    )
    retry_after: str | None = Field(
        default=None, description="No consolidation probe onto this pool before this time."
    )


class PlacementStatus(ApiModel):
    """Placement's persisted state: the split of replicas over pools (docs/placement.md).

    Changes only on a placement decision (overflow, probe, consolidation, a new replica count),
    so a steady endpoint writes no status.
    """

    pools: list[PoolPlacement] = Field(
        default_factory=list, description="Per usable pool, in order of preference."
    )
    probe_pool: str | None = Field(
        default=None,
        description="The pool holding a surge replica that probes for capacity, if any.",
    )
    probe_from: str | None = Field(
        default=None,
        description="The less preferred pool that gives up a replica when the probe is Ready.",
    )
    probe_since: str | None = Field(default=None, description="When the probe began (RFC 3339).")

    def assigned(self) -> dict[str, int]:
        """Replicas per pool name."""
        return {p.name: p.replicas for p in self.pools}


RolloutPhase = Literal["Canary", "Progressing", "Healthy", "RolledBack", "Failed"]
AnalysisPhase = Literal["Pending", "Running", "Inconclusive", "Successful", "Failed"]


class AnalysisStatus(ApiModel):
    """The canary analysis of the current revision (Argo Rollouts' AnalysisRun phases)."""

    phase: AnalysisPhase = Field(
        description="Pending (the canary replica is starting), Running, Inconclusive (too "
        "little traffic so far: waiting), Successful or Failed."
    )
    canary_pod: str | None = Field(default=None, description="The canary replica's pod.")
    started_at: str | None = Field(
        default=None, description="When the window started (the canary replica Ready)."
    )
    canary_requests: int = Field(default=0, ge=0, description="Requests the canary finished.")
    baseline_requests: int = Field(
        default=0, ge=0, description="Requests the healthy replicas finished in the window."
    )
    message: str = Field(default="", description="The measurements and the verdict, in words.")
    pool: str | None = Field(
        default=None, description="The pool the canary replica runs on (reserved first)."
    )
    full_pools: list[str] = Field(
        default_factory=list,
        description="Pools where the canary replica stayed Unschedulable past the pool's "
        "overflow delay, in the order found; the canary moves to the next pool with room.",
    )


CapacityMode = Literal["SurgeElsewhere", "ReplaceWithBorrowed", "ReplaceInPlace", "Waiting"]


class RolloutCapacity(ApiModel):
    """How a rollout gets past a full GPU pool (rollout_capacity.py; docs/rollout.md, Capacity).

    Written only when the mode, the pools or the full pools change.
    """

    revision: str = Field(description="The revision rolling out when this was decided.")
    full_pools: list[str] = Field(
        default_factory=list,
        description="Pools the scheduler found full for this revision (an Unschedulable surge "
        "or borrowed replica), in the order found; not tried again for this revision.",
    )
    pool: str | None = Field(
        default=None, description="The full pool whose replicas are being replaced, if any."
    )
    borrow_pool: str | None = Field(
        default=None,
        description="The pool running one extra replica of the revision while `pool` is "
        "replaced in place.",
    )
    mode: CapacityMode | None = Field(
        default=None,
        description="SurgeElsewhere (the extra replica on borrowPool is starting), "
        "ReplaceWithBorrowed (it is available: pool is replaced in place, one at a time), "
        "ReplaceInPlace (no pool has room; spec.rollout.maxUnavailable allows it), or Waiting "
        "(no room and no in-place replacement allowed).",
    )
    since: str | None = Field(default=None, description="When the mode was entered (RFC 3339).")
    scheduler: str = Field(
        default="", description="The scheduler's message on the full pool's Unschedulable pod."
    )
    message: str = Field(default="", description="What the rollout does about it, and why.")


class RolloutStatus(ApiModel):
    """The revision rollout's persisted state (see docs/rollout.md).

    Written only when the phase or a revision changes, so a settled endpoint writes no status.
    """

    current_revision: str = Field(description="The revision the spec renders now.")
    phase: RolloutPhase = Field(
        description="Canary (one replica of the revision under analysis beside the healthy "
        "ones), Progressing (proving health), Healthy, RolledBack (the last healthy "
        "revision was restored) or Failed (no rollback: autoRollback is off or nothing to "
        "restore)."
    )
    since: str = Field(description="When the phase was entered (RFC 3339).")
    last_healthy_revision: str | None = Field(
        default=None, description="The newest revision that proved healthy."
    )
    failed_revision: str | None = Field(
        default=None, description="The revision whose rollout failed, while the spec renders it."
    )
    message: str = Field(default="", description="Why the rollout failed, and what was done.")
    analysis: AnalysisStatus | None = Field(
        default=None, description="The canary analysis of currentRevision (spec.rollout.canary)."
    )
    capacity: RolloutCapacity | None = Field(
        default=None,
        description="How the rollout gets past a full GPU pool, while it has to (see "
        "docs/rollout.md, Capacity).",
    )


class RouterStatus(ApiModel):
    """The router Deployment in front of the engine replicas."""

    replicas: int = Field(default=0, ge=0, description="Desired router pods.")
    ready_replicas: int = Field(default=0, ge=0, description="Ready router pods.")
    ready: str = Field(default="0/0", description="Ready/desired router pods (for kubectl).")


class PendingEvent(ApiModel):
    """An Event a status write decided on and that is not known to be posted yet.

    Recorded in the same write as the decision it announces, posted under the name
    `<endpoint>.<key>` (so a re-post answers AlreadyExists) and removed once posted.
    """

    key: str = Field(pattern=r"^[0-9a-f]{16}$", description="Names the Event: `<endpoint>.<key>`.")
    type: Literal["Normal", "Warning"] = Field(description="Normal or Warning.")
    reason: str = Field(description="The Event's reason.")
    message: str = Field(default="", description="The Event's message.")
    time: str = Field(description="When the decision was written (RFC 3339).")


class MagistralEndpointStatus(ApiModel):
    """Observed state of a MagistralEndpoint."""

    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Progressing and Degraded."
    )
    tensor_parallel_size: int | None = Field(
        default=None, description="GPUs per replica on the preferred usable pool."
    )
    gpus_per_replica: int | None = Field(
        default=None, description="nvidia.com/gpu requested by each replica."
    )
    gpu_product: str | None = Field(default=None, description="GPU of the preferred usable pool.")
    replicas: int = Field(default=0, description="Desired replicas across pools.")
    ready_replicas: int = Field(default=0, description="Ready replicas across pools.")
    url: str | None = Field(default=None, description="In-cluster base URL of the OpenAI API.")
    served_model_name: str | None = Field(default=None, description="Model name clients send.")
    current_revision: str | None = Field(
        default=None, description="Hash of the pod template the operator applies now."
    )
    startup_budget_seconds: int | None = Field(
        default=None, description="Start-up probe budget of a replica, and how it was derived."
    )
    startup_budget: str | None = Field(
        default=None, description="How the start-up budget was derived."
    )
    pools: list[PoolStatus] = Field(default_factory=list, description="Per-pool decisions.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Risky but valid choices in the spec (e.g. an unpinned model revision).",
    )
    autoscaler: AutoscalerStatus | None = Field(
        default=None, description="The demand autoscaler's state (spec.scaling)."
    )
    router: RouterStatus | None = Field(
        default=None, description="The endpoint's routers (the Service's pods)."
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The revision rollout's state (spec.rollout)."
    )
    placement: PlacementStatus | None = Field(
        default=None, description="How replicas are spread over the GPU pools, and why."
    )
    pending_events: list[PendingEvent] = Field(
        default_factory=list,
        description="Events decided by a status write and not yet known to be posted "
        "(posted first on the next pass; never twice).",
    )
