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


class AutoscalerStatus(ApiModel):
    """The queue-depth autoscaler's persisted state (see docs/autoscaling.md).

    Kept in status so that an operator restart resumes from the last decision instead of
    collapsing to minReplicas. Only values that change on a decision are stored, so an endpoint
    whose load is steady writes no status.
    """

    desired_replicas: int = Field(
        ge=0, description="Replicas the autoscaler last decided on (the reconcile's start point)."
    )
    last_scale_time: str | None = Field(
        default=None, description="When the autoscaler last changed desiredReplicas (RFC 3339)."
    )
    pending_direction: ScaleDirection | None = Field(
        default=None,
        description="Up or Down while a scale signal is waiting out its window; unset otherwise.",
    )
    pending_since: str | None = Field(
        default=None, description="When the pending signal was first seen (RFC 3339)."
    )
    pending_replicas: int | None = Field(
        default=None,
        ge=0,
        description="The most conservative recommendation seen since pendingSince (the fewest "
        "for Up, the most for Down): what the autoscaler scales to when the window has passed.",
    )
    observed_queue: int | None = Field(
        default=None,
        ge=0,
        description="Requests waiting across ready replicas (vllm:num_requests_waiting) when "
        "the pending signal began or the last scale was decided; not refreshed every pass.",
    )


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
        default=None, description="The queue-depth autoscaler's state (spec.scaling)."
    )
