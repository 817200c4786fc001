"""The runtime config: the file the operator mounts into every serving pod.

The operator writes it (JSON) into the endpoint's ConfigMap; `magistral-runtime serve` reads
and validates it, then launches vLLM. Field names are snake_case: it is our own file format,
not a Kubernetes API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PORT = 8000
API_KEY_ENV = "VLLM_API_KEY"
CONFIG_PATH = "/etc/magistral/runtime.json"
CONFIG_ENV = "MAGISTRAL_RUNTIME_CONFIG"


class RuntimeConfigError(ValueError):
    """The runtime config is invalid; the message names the field."""


class Sampling(BaseModel):
    """Sampling defaults for requests that set none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=40960, ge=1)


class SystemPrompt(BaseModel):
    """Where the default system prompt comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["model", "custom", "none"] = "model"
    # For mode custom: a file mounted from the ConfigMap that holds the prompt.
    path: str | None = None

    @model_validator(mode="after")
    def _custom_needs_a_path(self) -> SystemPrompt:
        if self.mode == "custom" and not self.path:
            raise ValueError("mode custom needs a path to the prompt file")
        return self


class Limits(BaseModel):
    """Request limits the middleware enforces before vLLM sees a chat request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A 40,960-token prompt is about 160 KB of text; tools and JSON escaping add to it.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_n: int = Field(default=1, ge=1, le=16)


class Health(BaseModel):
    """Deep readiness and liveness (the middleware's /magistral/ready and /magistral/live)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # How long one-token generation may take before readiness fails.
    generation_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # A generation result (or real traffic producing output) counts for this long.
    cache_seconds: float = Field(default=5.0, ge=0, le=60)
    # Liveness fails once no generation has succeeded for this long.
    liveness_budget_seconds: float = Field(default=120.0, ge=10, le=3600)


class RuntimeConfig(BaseModel):
    """Everything one serving container needs to start vLLM and serve Magistral."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="Hub repo id, or a local directory.")
    revision: str | None = None
    served_model_name: str = Field(min_length=1)
    tensor_parallel_size: Literal[1, 2, 4, 8]
    max_model_len: int = Field(ge=1024, le=131072)
    gpu_memory_utilization: float = Field(gt=0, le=1)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    # Quantize the checkpoint's weights while loading: "fp8" serves a bf16 checkpoint in fp8.
    # None: the weights are served as the checkpoint stores them (bf16, or an FP8 checkpoint).
    quantization: Literal["fp8"] | None = None
    max_num_seqs: int | None = Field(default=None, ge=1)
    reasoning_format: Literal["think-text", "think-tokens"] = "think-text"
    tool_calling: bool = True
    sampling: Sampling = Field(default_factory=Sampling)
    system_prompt: SystemPrompt = Field(default_factory=SystemPrompt)
    reasoning_history: Literal["keep", "strip"] = "strip"
    api_key_required: bool = True
    # The address vLLM listens on: every interface in a pod; loopback in local tests.
    host: str = Field(default="0.0.0.0", min_length=1, max_length=253)
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    shutdown_timeout_seconds: int = Field(default=60, ge=0, le=3600)
    download_dir: str | None = None
    extra_args: tuple[str, ...] = ()
    limits: Limits = Field(default_factory=Limits)
    health: Health = Field(default_factory=Health)


# Fields added after the first config version: written only when they differ from their
# defaults, so the canonical JSON (and the pod-template hash built from it) of configs that
# do not use them stays byte-for-byte the same.
_WRITTEN_WHEN_SET = ("limits", "health", "host", "quantization")


def parse_runtime_config(text: str, *, source: str) -> RuntimeConfig:
    """Parse and validate the JSON runtime config; errors name the field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RuntimeConfigError(f"{source}: not valid JSON: {exc}") from exc
    try:
        return RuntimeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise RuntimeConfigError(f"{source}: {problems}") from exc


def load_runtime_config(path: Path) -> RuntimeConfig:
    """Read the mounted runtime config file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuntimeConfigError(f"{path}: cannot read runtime config: {exc.strerror}") from exc
    return parse_runtime_config(text, source=str(path))


def dump_runtime_config(config: RuntimeConfig) -> str:
    """The canonical JSON form the operator writes (stable key order, so hashes are stable)."""
    data = config.model_dump(mode="json")
    for name in _WRITTEN_WHEN_SET:
        if getattr(config, name) == RuntimeConfig.model_fields[name].get_default(
            call_default_factory=True
        ):
            del data[name]
    # Raw UTF-8 (not \\u escapes): a character takes at most 4 bytes of the ConfigMap, not 12.
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
