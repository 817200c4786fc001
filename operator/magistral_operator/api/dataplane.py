"""The data plane's spec: replica bounds, the demand autoscaler and the router in front.

See docs/autoscaling.md for what each scaling parameter does, and docs/architecture.md for the
data plane (router pods → engine pods).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from .base import ApiModel


class ScalingSpec(ApiModel):
    """Replica bounds and the demand autoscaling policy (docs/autoscaling.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must be less than or equal to maxReplicas",
                },
            ]
        }
    )

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas. 0 scales to zero after scaleDownWindowSeconds without "
        "demand; the router then holds the first request until a replica is Ready.",
    )
    max_replicas: int = Field(
        default=1, ge=0, le=1000, description="Most replicas; 0 pauses the endpoint."
    )
    scale_up_window_seconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="How long a recommendation above the current replicas must hold before "
        "it acts (it then goes to the current recommendation). 0: at once.",
    )
    scale_down_window_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="The fleet is never below the highest recommendation of this window: a "
        "scale-down needs this long of lower demand (and of complete reads).",
    )
    target_utilization: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of a replica's prefill throughput the arrivals may use on average.",
    )
    headroom: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="Spare replicas for bursts: headroom x sqrt(load) on top of the load (in "
        "replicas). 0 sizes for the mean.",
    )
    prefill_tokens_per_second: float | None = Field(
        default=None,
        gt=0,
        le=10_000_000,
        description="Prompt tokens one replica processes per second when busy (measure it on "
        "your GPU). Unset: estimated from the GPU's dense BF16 FLOP/s and the model size.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must be less than or equal to "
                f"maxReplicas ({self.max_replicas})"
            )
        return self


class RoutingPolicy(StrEnum):
    """vllm-router's worker selection policies the operator offers (docs/router-facts.md)."""

    POWER_OF_TWO = "power_of_two"
    CACHE_AWARE = "cache_aware"
    ROUND_ROBIN = "round_robin"


class RouterSpec(ApiModel):
    """The router pods in front of the engine replicas: vllm-router behind the front that
    holds requests at zero replicas and admits at most a replica's sequences per replica."""

    replicas: int = Field(
        default=2, ge=1, le=10, description="Router pods (2 keeps the endpoint up in a drain)."
    )
    policy: RoutingPolicy = Field(
        default=RoutingPolicy.POWER_OF_TWO,
        description="How vllm-router picks a replica: power_of_two (the less loaded of two, "
        "by the router's own in-flight count), cache_aware (prefix reuse; it asks every "
        "replica to tokenize each request) or round_robin.",
    )
    hold_timeout_seconds: int = Field(
        default=600,
        ge=1,
        le=3600,
        description="How long a request may wait in the router for a replica (scale from "
        "zero, or every replica full) before it gets 503 with Retry-After.",
    )
    retry_after_seconds: int = Field(
        default=30, ge=1, le=3600, description="Retry-After of that 503."
    )
