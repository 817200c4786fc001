"""The MagistralEndpoint spec: what an application team declares.

Every field carries a description (it becomes the CRD's documentation and `kubectl explain`).
Cross-field rules are written twice on purpose: as pydantic validators (so `magistral-operator
render` and the operator reject bad input with the field named) and as CEL rules in
`json_schema_extra` (so the API server rejects it at `kubectl apply`). `tests/unit/test_spec.py`
keeps a catalogue of invalid endpoints that both must reject.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from .base import ApiModel
from .canary import CanarySpec
from .dataplane import RouterSpec, ScalingSpec
from .env_policy import ENV_VAR_CEL_RULES, env_problems
from .k8s_rules import (
    CONFIG_KEY,
    CONFIG_KEY_CEL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    GIT_REVISION,
    GIT_REVISION_CEL,
    IMAGE_REFERENCE,
    QUANTITY,
    QUANTITY_POSITIVE_CEL,
    RELATIVE_PATH,
    RELATIVE_PATH_CEL,
    git_revision,
    positive_quantity,
    relative_path,
)
from .vllm_args import EXTRA_ARG_CEL_RULES, extra_args_problems

DEFAULT_MODEL_REPO = "mistralai/Magistral-Small-2506"
DEFAULT_MAX_MODEL_LEN = 40960
MAX_MODEL_LEN_LIMIT = 131072
VALID_TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)

DNS_LABEL = DNS1123_LABEL
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


# Bounds that keep every rendered child inside the API server's limits whatever the content
# (ConfigMap data 1 MiB, annotations 256 KiB, objects 1.5 MiB): see docs/validation.md and
# tests/unit/test_object_limits.py, which renders the largest spec these bounds allow.
ENV_VALUE_MAX = 2048
ENV_MAX_ITEMS = 32
EXTRA_ARG_MAX = 256
EXTRA_ARGS_MAX_ITEMS = 32
PROMPT_TEXT_MAX = 32768

ROLLOUT_NO_PROGRESS = (
    "maxSurge and maxUnavailable cannot both be 0: a rollout could neither add nor replace "
    "a replica"
)


def _cel(rule: str, message: str) -> JsonDict:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


def _cel_rules(rules: list[dict[str, str]]) -> JsonDict:
    return {"x-kubernetes-validations": [dict(rule) for rule in rules]}


# Field types shared by every reference to a Kubernetes object or a value passed on to one.
ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=DNS1123_SUBDOMAIN,
        description="Name of the object (a DNS subdomain: lower case, digits, '-', '.').",
    ),
]
ObjectKey = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=CONFIG_KEY,
        json_schema_extra=_cel(CONFIG_KEY_CEL, "must not be '.' or '..' or start with '..'"),
        description="Key within the object (letters, digits, '-', '_', '.').",
    ),
]
Quantity = Annotated[
    str,
    Field(
        max_length=32,
        pattern=QUANTITY,
        json_schema_extra=_cel(QUANTITY_POSITIVE_CEL, "must be greater than zero"),
    ),
]


def _config_key(value: str) -> str:
    if value in (".", "..") or value.startswith(".."):
        raise ValueError(f"{value!r} must not be '.' or '..' or start with '..'")
    return value


class Precision(StrEnum):
    """Which checkpoint's weights are served."""

    BF16 = "bf16"
    FP8 = "fp8"


class KVCacheDtype(StrEnum):
    """vLLM's --kv-cache-dtype values this operator supports."""

    AUTO = "auto"
    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


class SystemPromptMode(StrEnum):
    """Where the default system prompt comes from."""

    MODEL = "model"
    CUSTOM = "custom"
    NONE = "none"


class ReasoningHistory(StrEnum):
    """What happens to earlier assistant turns' reasoning in multi-turn chats."""

    KEEP = "keep"
    STRIP = "strip"


class ServiceType(StrEnum):
    """Kubernetes Service types the endpoint can be exposed with."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class SecretKeyRef(ApiModel):
    """A key of a Secret in the endpoint's namespace."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: ObjectKey = Field(description="Key within the Secret.")

    _key = field_validator("key")(_config_key)


class ConfigMapKeyRef(ApiModel):
    """A key of a ConfigMap in the endpoint's namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap.")
    key: ObjectKey = Field(description="Key within the ConfigMap.")

    _key = field_validator("key")(_config_key)


class HubSource(ApiModel):
    """Download the weights from the Hugging Face Hub into the model cache."""

    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token (HF_TOKEN), for gated or private "
        "repositories. Omit for public repositories.",
    )


class PVCSource(ApiModel):
    """Serve weights already present on an existing PersistentVolumeClaim."""

    claim_name: ObjectName = Field(description="Name of an existing PVC holding the weights.")
    sub_path: str = Field(
        default="",
        max_length=1024,
        pattern=f"^$|{RELATIVE_PATH}",
        json_schema_extra=_cel(RELATIVE_PATH_CEL, "must not contain a '.' or '..' segment"),
        description="Directory inside the PVC that holds the model files (params.json, "
        "consolidated.safetensors, tekken.json): a relative path that stays inside the PVC.",
    )

    _sub_path = field_validator("sub_path")(relative_path)


class WeightsSource(ApiModel):
    """Where the weights come from: exactly one of hub or pvc."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.hub) != has(self.pvc)",
                    "message": "exactly one of hub or pvc must be set",
                }
            ]
        }
    )

    hub: HubSource | None = Field(default=None, description="Download from the Hugging Face Hub.")
    pvc: PVCSource | None = Field(default=None, description="Read from an existing PVC.")

    @model_validator(mode="after")
    def _exactly_one(self) -> WeightsSource:
        if (self.hub is None) == (self.pvc is None):
            raise ValueError("exactly one of hub or pvc must be set")
        return self


class CacheType(StrEnum):
    """Kinds of model cache volume."""

    EMPTY_DIR = "emptyDir"
    EPHEMERAL = "ephemeral"
    PVC = "pvc"


class ModelCache(ApiModel):
    """The volume the Hugging Face cache (downloaded weights, compile caches) lives on."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.type != 'pvc' || has(self.claimName)",
                    "message": "claimName is required when type is pvc",
                }
            ]
        }
    )

    type: CacheType = Field(
        default=CacheType.EMPTY_DIR,
        description="emptyDir: node-local, cold on every new pod. ephemeral: a per-pod volume "
        "from storageClassName. pvc: an existing shared (ReadWriteMany) claim, warm after the "
        "first download.",
    )
    size: Quantity = Field(
        default="100Gi",
        description="Size limit (emptyDir) or requested size (ephemeral), e.g. 100Gi.",
    )
    storage_class_name: ObjectName | None = Field(
        default=None, description="Storage class for type ephemeral; cluster default when unset."
    )
    claim_name: ObjectName | None = Field(default=None, description="Existing PVC for type pvc.")

    _size = field_validator("size")(positive_quantity)

    @model_validator(mode="after")
    def _claim_for_pvc(self) -> ModelCache:
        if self.type == CacheType.PVC and not self.claim_name:
            raise ValueError("claimName is required when type is pvc")
        return self


class ModelProfileOverride(ApiModel):
    """Architecture numbers for a model that has no built-in profile."""

    parameters_billions: float = Field(
        gt=0,
        le=10000,
        description="Parameter count, in billions; gives the weights' size (2 bytes a parameter "
        "in bf16, 1 in fp8) when weightGigabytes is unset.",
    )
    layers: int = Field(gt=0, description="Number of transformer layers.")
    attention_heads: int = Field(gt=0, description="Number of attention (query) heads.")
    kv_heads: int = Field(gt=0, description="Number of key/value heads (GQA groups).")
    head_dim: int = Field(gt=0, description="Dimension of one attention head.")
    weight_gigabytes: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Size of the served checkpoint's weights, in GB (10^9 bytes); derived from "
        "parametersBillions and the precision when unset.",
    )


# The name clients send: servedModelName, else the repository's name (after the "/").
_SERVED_NAME_CEL = (
    "(has({o}.servedModelName) ? {o}.servedModelName : "
    "{o}.repo.substring({o}.repo.indexOf('/') + 1))"
)


class ModelSpec(ApiModel):
    """Which checkpoint is served, from where, under which name."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"{_SERVED_NAME_CEL.format(o='self')} == "
                    f"{_SERVED_NAME_CEL.format(o='oldSelf')}",
                    "message": "the served model name (servedModelName, or the repo's name when "
                    "unset) is immutable: clients address the endpoint by it, so setting, "
                    "changing or removing servedModelName, or changing repo while it is unset, "
                    "would rename the endpoint; keep the name (set servedModelName to it) or "
                    "create a new endpoint",
                }
            ]
        }
    )

    repo: str = Field(
        default=DEFAULT_MODEL_REPO,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=200,
        description="Hugging Face repository id (owner/name) of the checkpoint.",
    )
    revision: str | None = Field(
        default=None,
        max_length=128,
        pattern=GIT_REVISION,
        json_schema_extra=_cel(
            GIT_REVISION_CEL, "must be a commit sha or a valid branch or tag name"
        ),
        description="Pinned revision (a commit sha is best; or a branch or tag name). Unpinned "
        "endpoints follow 'main' and report a warning in status.",
    )
    served_model_name: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$",
        description="Model name clients send in requests; the repository name when unset. "
        "Immutable once set.",
    )
    precision: Precision | None = Field(
        default=None,
        description="Precision the weights are served in: bf16 or fp8. A built-in bf16 "
        "checkpoint served in fp8 is quantized by vLLM while loading (about half the GPU "
        "memory); an FP8 checkpoint (RedHatAI/Magistral-Small-2506-FP8) cannot be served in "
        "bf16. For a repository without a built-in profile: the checkpoint's own precision. "
        "Taken from the built-in profile when unset.",
    )
    source: WeightsSource = Field(
        default_factory=lambda: WeightsSource(hub=HubSource()),
        description="Where the weights come from.",
    )
    cache: ModelCache = Field(default_factory=ModelCache, description="Model cache volume.")

    _revision = field_validator("revision")(
        lambda value: value if value is None else git_revision(value)
    )
    profile: ModelProfileOverride | None = Field(
        default=None,
        description="Architecture numbers for sizing; required for repositories without a "
        "built-in profile, overrides it otherwise.",
    )


class EnvVar(ApiModel):
    """An extra environment variable for the serving container."""

    model_config = ConfigDict(json_schema_extra=_cel_rules(ENV_VAR_CEL_RULES))

    name: str = Field(pattern=ENV_NAME, max_length=256, description="Variable name.")
    value: str = Field(default="", max_length=ENV_VALUE_MAX, description="Variable value.")


class RuntimeSpec(ApiModel):
    """How vLLM runs."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_REFERENCE,
        description="Runtime image (vLLM + magistral_runtime) as an image reference "
        "([registry/]repository[:tag][@sha256:digest]); the operator's default when unset.",
    )
    max_model_len: int = Field(
        default=DEFAULT_MAX_MODEL_LEN,
        ge=1024,
        le=MAX_MODEL_LEN_LIMIT,
        description="Context length (--max-model-len). The model card recommends 40960; "
        "quality may degrade beyond it. At most 131072.",
    )
    gpu_memory_utilization: float = Field(
        default=0.90,
        gt=0.1,
        le=0.98,
        description="Fraction of each GPU's memory vLLM may use (--gpu-memory-utilization).",
    )
    kv_cache_dtype: KVCacheDtype = Field(
        default=KVCacheDtype.AUTO,
        description="KV-cache data type (--kv-cache-dtype); fp8 halves KV memory per token.",
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Maximum concurrent sequences per replica (--max-num-seqs); vLLM's default "
        "when unset.",
    )
    cpu: Quantity = Field(default="8", description="CPU request of the container, e.g. 8 or 7500m.")
    memory: Quantity = Field(
        default="64Gi", description="Memory request and limit of the container, e.g. 64Gi."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=ENV_MAX_ITEMS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Extra environment variables (unique names). Names the operator sets and "
        "variables that would change what vLLM exposes or loads are refused "
        "(docs/validation.md).",
    )
    extra_args: list[
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=EXTRA_ARG_MAX,
                json_schema_extra=_cel_rules(EXTRA_ARG_CEL_RULES),
            ),
        ]
    ] = Field(
        default_factory=list,
        max_length=EXTRA_ARGS_MAX_ITEMS,
        description="Extra `vllm serve` arguments, appended last (escape hatch), read the way "
        "vLLM's own parser reads them: options it does not know, and options the operator "
        "manages (model, parallelism, context, port, API key, ...) in any spelling, are "
        "refused (docs/validation.md).",
    )

    _cpu = field_validator("cpu")(positive_quantity)
    _memory = field_validator("memory")(positive_quantity)

    @field_validator("env")
    @classmethod
    def _allowed_env(cls, value: list[EnvVar]) -> list[EnvVar]:
        problems = env_problems([(var.name, var.value) for var in value])
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("extra_args")
    @classmethod
    def _vllm_reads_extra_args(cls, value: list[str]) -> list[str]:
        problems = extra_args_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class SystemPromptSpec(ApiModel):
    """The default system prompt inserted when a request has none."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode != 'custom' || (has(self.text) != has(self.configMapRef))",
                    "message": "mode custom needs exactly one of text or configMapRef",
                },
                {
                    "rule": "self.mode == 'custom' || (!has(self.text) && !has(self.configMapRef))",
                    "message": "text and configMapRef are only allowed with mode custom",
                },
            ]
        }
    )

    mode: SystemPromptMode = Field(
        default=SystemPromptMode.MODEL,
        description="model: the checkpoint's SYSTEM_PROMPT.txt (recommended by the model card). "
        "custom: text or configMapRef. none: requests are left alone.",
    )
    text: str | None = Field(
        default=None, max_length=PROMPT_TEXT_MAX, description="Custom prompt text."
    )
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="ConfigMap key holding the custom prompt."
    )

    @model_validator(mode="after")
    def _custom_needs_one_source(self) -> SystemPromptSpec:
        has_text, has_ref = self.text is not None, self.config_map_ref is not None
        if self.mode == SystemPromptMode.CUSTOM and has_text == has_ref:
            raise ValueError("mode custom needs exactly one of text or configMapRef")
        if self.mode != SystemPromptMode.CUSTOM and (has_text or has_ref):
            raise ValueError("text and configMapRef are only allowed with mode custom")
        return self


class SamplingSpec(ApiModel):
    """Sampling defaults applied when a request does not set them (model card values)."""

    temperature: float = Field(default=0.7, ge=0, le=2, description="Default temperature.")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Default top_p.")
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_MODEL_LEN_LIMIT,
        description="Default max_tokens; when unset, whatever the context leaves (the model "
        "card's 40960 with the default maxModelLen). Always capped to what the context leaves.",
    )


class InferenceSpec(ApiModel):
    """Request-level behaviour the runtime adds in front of vLLM."""

    system_prompt: SystemPromptSpec = Field(
        default_factory=SystemPromptSpec, description="Default system prompt."
    )
    reasoning_history: ReasoningHistory = Field(
        default=ReasoningHistory.STRIP,
        description="strip: earlier assistant turns lose their reasoning before the prompt is "
        "built (fewer tokens). keep: earlier reasoning stays. The model card allows both.",
    )
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Sampling defaults.")
    tool_calling: bool = Field(
        default=True, description="Enable tool calling (mistral tool-call parser, auto choice)."
    )


TensorParallel = Annotated[
    Literal["auto"] | int,
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {
                    "rule": "type(self) == string ? self == 'auto' : self in [1, 2, 4, 8]",
                    "message": "must be 'auto' or one of 1, 2, 4, 8",
                }
            ],
        }
    ),
]


class GPUSpec(ApiModel):
    """Which GPUs serve the endpoint."""

    pools: list[Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]] = Field(
        default_factory=list,
        max_length=16,
        description="GPU pool names from the operator config, in order of preference "
        "(reserved capacity first is typical). All configured pools, in config order, when "
        "empty.",
    )
    tensor_parallel_size: TensorParallel = Field(
        default="auto",
        description="GPUs per replica: 'auto' picks the smallest of 1, 2, 4, 8 that fits the "
        "model and the KV cache on each pool's GPU; or a fixed 1, 2, 4 or 8.",
    )
    min_full_length_sequences: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Minimum number of full-length (maxModelLen) sequences the KV cache must "
        "hold for a tensor-parallel size to count as fitting. vLLM itself refuses to start "
        "below 1.",
    )

    @field_validator("tensor_parallel_size", mode="before")
    @classmethod
    def _valid_tp(cls, value: object) -> object:
        ok = value == "auto" or (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value in VALID_TENSOR_PARALLEL_SIZES
        )
        if not ok:
            raise ValueError(f"must be 'auto' or one of 1, 2, 4, 8, not {value!r}")
        return value

    @field_validator("pools")
    @classmethod
    def _unique_pools(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("pool names must be unique")
        return value


class RolloutSpec(ApiModel):
    """How a new revision replaces the old one."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.maxSurge > 0 || self.maxUnavailable > 0",
                    "message": ROLLOUT_NO_PROGRESS,
                }
            ]
        }
    )

    max_surge: int = Field(
        default=1, ge=0, le=100, description="Extra replicas a rollout may add at once."
    )
    max_unavailable: int = Field(
        default=0, ge=0, le=100, description="Replicas a rollout may take down at once."
    )
    healthy_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        description="How long new replicas must stay Ready before the revision counts as healthy.",
    )
    auto_rollback: bool = Field(
        default=True, description="Return to the last healthy revision when a rollout fails."
    )
    canary: CanarySpec = Field(
        default_factory=CanarySpec,
        description="The SLO analysis of one replica of a new revision before it replaces the "
        "healthy one (docs/rollout.md).",
    )

    @model_validator(mode="after")
    def _can_progress(self) -> RolloutSpec:
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(ROLLOUT_NO_PROGRESS)
        return self


class AuthSpec(ApiModel):
    """API-key protection of the OpenAI-compatible API."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.disabled || has(self.apiKeySecretRef)",
                    "message": "apiKeySecretRef is required unless disabled is true",
                },
                {
                    "rule": "!self.disabled || oldSelf.disabled",
                    "message": "disabled cannot be turned on for an existing endpoint: it "
                    "would open it to anyone who can reach it; create a new endpoint instead",
                },
            ]
        }
    )

    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key clients must send."
    )
    disabled: bool = Field(
        default=False,
        description="Serve without an API key. Must be explicit; cannot be turned on later.",
    )

    @model_validator(mode="after")
    def _key_unless_disabled(self) -> AuthSpec:
        if not self.disabled and self.api_key_secret_ref is None:
            raise ValueError("apiKeySecretRef is required unless disabled is true")
        return self


class ExposureSpec(ApiModel):
    """How the endpoint is exposed inside (or outside) the cluster."""

    service_type: ServiceType = Field(
        default=ServiceType.CLUSTER_IP, description="Type of the endpoint's Service."
    )
    port: int = Field(default=80, ge=1, le=65535, description="Port of the endpoint's Service.")


class MagistralEndpointSpec(ApiModel):
    """A dedicated, single-tenant Magistral Small inference endpoint served by vLLM."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.inference) || !has(self.inference.sampling) || "
                    "!has(self.inference.sampling.maxTokens) || "
                    "self.inference.sampling.maxTokens <= (has(self.runtime) && "
                    "has(self.runtime.maxModelLen) ? self.runtime.maxModelLen : 40960)",
                    "message": "inference.sampling.maxTokens must not exceed runtime.maxModelLen",
                }
            ]
        }
    )

    model: ModelSpec = Field(default_factory=ModelSpec, description="The served checkpoint.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="vLLM settings.")
    inference: InferenceSpec = Field(
        default_factory=InferenceSpec, description="Request defaults and policies."
    )
    gpu: GPUSpec = Field(default_factory=GPUSpec, description="GPU pools and parallelism.")
    scaling: ScalingSpec = Field(
        default_factory=ScalingSpec, description="Replica bounds and the demand autoscaler."
    )
    router: RouterSpec = Field(
        default_factory=RouterSpec, description="The router in front of the replicas."
    )
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout policy.")
    auth: AuthSpec = Field(description="API-key protection (required; may be disabled).")
    exposure: ExposureSpec = Field(default_factory=ExposureSpec, description="Service exposure.")

    @model_validator(mode="after")
    def _sampling_fits_context(self) -> MagistralEndpointSpec:
        max_tokens = self.inference.sampling.max_tokens
        if max_tokens is not None and max_tokens > self.runtime.max_model_len:
            raise ValueError(
                f"inference.sampling.maxTokens ({self.inference.sampling.max_tokens}) must not "
                f"exceed runtime.maxModelLen ({self.runtime.max_model_len})"
            )
        return self
