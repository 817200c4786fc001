"""The operator config: platform-owned settings, one YAML file rendered from Helm values.

A bad file stops the operator at start-up with a message naming the field
(`load_operator_config`).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from .base import ApiModel
from .errors import ConfigError, format_validation_error
from .spec import DNS_LABEL

# CUDA compute capability, major.minor: 7.0 (V100) ... 10.0 (B200), 12.0 (RTX 50xx).
COMPUTE_CAPABILITY = r"^[1-9][0-9]?\.[0-9]$"


class CapacityTier(StrEnum):
    """How GPU capacity is bought; placement prefers reserved, then on-demand, then spot."""

    RESERVED = "reserved"
    ON_DEMAND = "on-demand"
    SPOT = "spot"


class Toleration(ApiModel):
    """A Kubernetes toleration added to pods placed on a pool."""

    key: str | None = Field(default=None, description="Taint key.")
    operator: str = Field(default="Equal", pattern="^(Equal|Exists)$", description="Operator.")
    value: str | None = Field(default=None, description="Taint value.")
    effect: str | None = Field(
        default=None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$", description="Effect."
    )


class GPUPool(ApiModel):
    """A pool of identical GPU nodes."""

    name: str = Field(pattern=DNS_LABEL, max_length=20, description="Pool name endpoints use.")
    tier: CapacityTier = Field(description="Capacity tier: reserved, on-demand or spot.")
    gpu_product: str = Field(min_length=1, description="GPU product (nvidia.com/gpu.product).")
    gpu_memory_gib: float = Field(
        alias="gpuMemoryGiB", gt=0, le=1024, description="Memory of one GPU, in GiB."
    )
    gpus_per_node: int = Field(ge=1, le=64, description="GPUs on one node (TP stays in a node).")
    compute_capability: str | None = Field(
        default=None,
        pattern=COMPUTE_CAPABILITY,
        description="CUDA compute capability of the pool's GPUs, 'major.minor' as "
        "`nvidia-smi --query-gpu=compute_cap` prints it (a string: quote it in YAML). Unset: "
        "looked up from gpuProduct (H100/H200/H20/GH200 9.0, L40S/L40/L4/RTX 4090/RTX 6000 Ada "
        "8.9, A100/A30 8.0, A10/A10G/A40/RTX 3090 8.6, T4 7.5, V100 7.0, B200/GB200 10.0), "
        "unknown for other products. Sizing refuses fp8 weights below 7.5 and an fp8 KV cache "
        "below 8.0 (vLLM's kernels); with an unknown capability it does not check.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels that select the pool's nodes."
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [
            Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
        ],
        description="Tolerations for the pool's taints.",
    )
    overflow_after_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        description="Seconds a replica may stay Unschedulable on this pool before it moves to "
        "the endpoint's next pool (see docs/placement.md).",
    )
    elastic: bool = Field(
        default=False,
        description="The pool is a node group a cluster autoscaler grows: pending pods there "
        "trigger new nodes, so overflow waits elasticOverflowAfterSeconds instead.",
    )
    elastic_overflow_after_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="Overflow delay of an elastic pool: how long a new node may take to join.",
    )

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _capability_is_a_string(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"must be a string such as '8.9' (quote {value} in YAML)")
        return value

    @property
    def overflow_delay_seconds(self) -> int:
        """How long a replica may stay Unschedulable here before it overflows."""
        return self.elastic_overflow_after_seconds if self.elastic else self.overflow_after_seconds


class StartupModel(ApiModel):
    """Numbers the start-up probe budget is derived from (measure them on your cluster)."""

    image_pull_seconds: float = Field(
        default=300, ge=0, description="Pulling the runtime image onto a node that lacks it."
    )
    hub_download_mbps: float = Field(
        alias="hubDownloadMBps",
        default=400,
        gt=0,
        description="Weights download speed from the Hub, in MB/s.",
    )
    volume_read_mbps: float = Field(
        alias="volumeReadMBps",
        default=1000,
        gt=0,
        description="Weights read speed from a local or PVC cache, MB/s.",
    )
    engine_init_seconds: float = Field(
        default=240,
        ge=0,
        description="torch.compile, CUDA-graph capture and engine start after loading.",
    )
    safety_factor: float = Field(default=1.5, ge=1, le=10, description="Multiplier on the sum.")


class SizingModel(ApiModel):
    """Numbers the GPU sizing uses besides the model and GPU."""

    per_gpu_overhead_gib: float = Field(
        alias="perGpuOverheadGiB",
        default=2.0,
        ge=0,
        description="Memory per GPU that is neither weights nor KV cache: CUDA context, "
        "activations, CUDA graphs.",
    )


DEFAULT_ROUTER_IMAGE = "ghcr.io/magistral-operator/router:0.1.0-vllm-router0.1.17"
ROUTER_POOL_NAME = "router"
CANARY_POOL_NAME = "canary"
RESERVED_POOL_NAMES = {
    ROUTER_POOL_NAME: "the endpoint's router Deployment is called <endpoint>-router",
    CANARY_POOL_NAME: "a rollout's canary Deployment is called <endpoint>-canary",
}


class OperatorConfig(ApiModel):
    """Platform-owned operator settings."""

    default_image: str = Field(
        min_length=1, description="Runtime image used when an endpoint sets none."
    )
    router_image: str = Field(
        default=DEFAULT_ROUTER_IMAGE,
        min_length=1,
        description="Image of the router pods (vllm-router and the runtime's front, "
        "router/Dockerfile).",
    )
    pools: list[GPUPool] = Field(min_length=1, description="GPU pools endpoints may use.")
    startup: StartupModel = Field(default_factory=StartupModel, description="Start-up budgets.")
    sizing: SizingModel = Field(default_factory=SizingModel, description="Sizing constants.")
    cluster_domain: str = Field(default="cluster.local", description="Cluster DNS domain.")

    @field_validator("pools")
    @classmethod
    def _unique_names(cls, pools: list[GPUPool]) -> list[GPUPool]:
        names = [p.name for p in pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(dupes)}")
        for reserved, why in RESERVED_POOL_NAMES.items():
            if reserved in names:
                raise ValueError(f"pool name {reserved!r} is reserved: {why}")
        return pools

    def pool(self, name: str) -> GPUPool | None:
        """The pool called `name`, if configured."""
        return next((p for p in self.pools if p.name == name), None)


def parse_operator_config(data: Any, *, source: str = "operator config") -> OperatorConfig:
    """Validate parsed YAML as an OperatorConfig; raise ConfigError naming the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="", source=source)) from exc


def load_operator_config(path: Path) -> OperatorConfig:
    """Read and validate the operator config file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read operator config: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_operator_config(data, source=str(path))
