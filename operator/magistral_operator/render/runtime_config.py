"""The runtime config each pool's pods receive (pure)."""

from __future__ import annotations

from magistral_runtime.config import RuntimeConfig, Sampling, SystemPrompt

from ..api.endpoint import Endpoint
from ..api.spec import SystemPromptMode
from ..sizing.profiles import ModelProfile

MODELS_MOUNT = "/models"
CACHE_MOUNT = "/cache"
PROMPT_MOUNT = "/etc/magistral/prompt"
PROMPT_FILE = "system-prompt.txt"
SHUTDOWN_TIMEOUT_SECONDS = 60


def model_location(endpoint: Endpoint) -> str:
    """What vLLM loads: the hub repo id, or the directory on the weights PVC."""
    pvc = endpoint.spec.model.source.pvc
    if pvc is None:
        return endpoint.spec.model.repo
    return f"{MODELS_MOUNT}/{pvc.sub_path}".rstrip("/")


def runtime_config(*, endpoint: Endpoint, profile: ModelProfile, tp: int) -> RuntimeConfig:
    """The runtime config for one pool's replicas (TP may differ between pools)."""
    spec = endpoint.spec
    prompt = spec.inference.system_prompt
    prompt_path = (
        f"{PROMPT_MOUNT}/{PROMPT_FILE}" if prompt.mode == SystemPromptMode.CUSTOM else None
    )
    from_hub = spec.model.source.pvc is None
    return RuntimeConfig(
        model=model_location(endpoint),
        revision=spec.model.revision if from_hub else None,
        served_model_name=endpoint.served_model_name,
        tensor_parallel_size=tp,
        max_model_len=spec.runtime.max_model_len,
        gpu_memory_utilization=spec.runtime.gpu_memory_utilization,
        kv_cache_dtype=spec.runtime.kv_cache_dtype,
        quantization=profile.quantization,
        max_num_seqs=spec.runtime.max_num_seqs,
        reasoning_format=profile.reasoning_tags,
        tool_calling=spec.inference.tool_calling,
        sampling=Sampling(
            temperature=spec.inference.sampling.temperature,
            top_p=spec.inference.sampling.top_p,
            max_tokens=spec.inference.sampling.max_tokens or spec.runtime.max_model_len,
        ),
        system_prompt=SystemPrompt(mode=str(prompt.mode), path=prompt_path),
        reasoning_history=str(spec.inference.reasoning_history),
        api_key_required=not spec.auth.disabled,
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_SECONDS,
        download_dir=None,
        extra_args=tuple(spec.runtime.extra_args),
    )
