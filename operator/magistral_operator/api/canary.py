"""`spec.rollout.canary`: the SLO analysis a new revision passes before it replaces the old one.

The vocabulary follows Argo Rollouts' AnalysisRun and Flagger's canary analysis, which platform
teams know: an analysis *window* (Flagger's `interval` times `iterations`), a *minimum of requests*
below which a measurement is *inconclusive* (Argo's `Inconclusive`, Flagger's "no values found"),
thresholds on success rate and latency relative to the baseline (Argo's `successCondition`), and
a bounded wait (Argo's `inconclusiveLimit`, Flagger's `progressDeadlineSeconds`). docs/rollout.md
explains each default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .base import ApiModel

WAIT_SHORTER_THAN_WINDOW = "maxWaitSeconds must be at least analysisSeconds"


class CanarySpec(ApiModel):
    """One replica of the new revision beside the healthy ones, judged on the engines' metrics."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.maxWaitSeconds >= self.analysisSeconds",
                    "message": WAIT_SHORTER_THAN_WINDOW,
                }
            ]
        }
    )

    enabled: bool | None = Field(
        default=None,
        description="Run the analysis before a new revision replaces a healthy one. Unset: on "
        "for every revision after the first healthy one (the first has nothing to compare with).",
    )
    analysis_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="Length of the analysis window, from the canary replica turning Ready.",
    )
    min_requests: int = Field(
        default=20,
        ge=1,
        le=1_000_000,
        description="Requests the canary must finish in the window for a verdict; fewer is "
        "inconclusive and the analysis waits for more.",
    )
    max_wait_seconds: int = Field(
        default=1800,
        ge=10,
        le=604800,
        description="How long an inconclusive analysis (too little traffic) may wait, from the "
        "start of the window, before `inconclusive` decides.",
    )
    inconclusive: Literal["RollBack", "Promote"] = Field(
        default="RollBack",
        description="What an analysis that never saw minRequests does at maxWaitSeconds: roll "
        "back (the default: an unproven revision does not replace a proven one) or promote.",
    )
    quantile: float = Field(
        default=0.9,
        ge=0.5,
        le=0.99,
        description="The latency quantile compared (time to first token, inter-token latency).",
    )
    max_ttft_ratio: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="Fail when the canary's time-to-first-token quantile exceeds the baseline's "
        "by more than this factor.",
    )
    max_ttft_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Fail when the canary's time-to-first-token quantile exceeds this (absolute).",
    )
    max_itl_ratio: float = Field(
        default=1.5,
        ge=1.0,
        le=100.0,
        description="Fail when the canary's inter-token-latency quantile exceeds the baseline's "
        "by more than this factor.",
    )
    max_itl_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Fail when the canary's inter-token-latency quantile exceeds this (absolute).",
    )
    max_error_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Fail when more than this share of the canary's requests finish with "
        "`error` or `abort` (vllm:request_success_total by finished_reason).",
    )
    max_error_rate_increase: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Fail when the canary's error share exceeds the baseline's by more than this.",
    )
    max_router_error_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Fail when more than this share of the endpoint's responses in the window "
        "are 5xx from the router (what clients saw).",
    )

    @model_validator(mode="after")
    def _wait_covers_window(self) -> CanarySpec:
        if self.max_wait_seconds < self.analysis_seconds:
            raise ValueError(WAIT_SHORTER_THAN_WINDOW)
        return self
