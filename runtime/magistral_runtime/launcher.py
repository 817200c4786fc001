"""From the runtime config to the `vllm serve` argument list (pure).

The model card's flags are always passed; so is `--max-model-len`, which the card asks to set
explicitly. Sampling defaults go through `--override-generation-config` (temperature and top_p
only: a `max_new_tokens` there would be a server-wide cap, not a default; max_tokens defaults are
applied per request by the middleware).

Online quantization (a bf16 checkpoint served in fp8) is vLLM 0.33.0's `fp8_per_tensor`: the
linear layers are quantized one at a time while loading, the embeddings and LM head stay bf16.
(`--quantization fp8` does the same there, deprecated: vLLM maps it to fp8_per_tensor with a
warning.)
"""

from __future__ import annotations

import json

from .config import RuntimeConfig

# Flags the Magistral model card requires with vLLM.
MODEL_CARD_FLAGS = (
    "--tokenizer-mode",
    "mistral",
    "--config-format",
    "mistral",
    "--load-format",
    "mistral",
)
TOOL_FLAGS = ("--tool-call-parser", "mistral", "--enable-auto-tool-choice")
QUIET_ENDPOINTS = "/health,/metrics,/ping"
# RuntimeConfig.quantization -> vLLM's --quantization value.
QUANTIZATION_METHODS = {"fp8": "fp8_per_tensor"}
# The project's ASGI middleware, loaded into vLLM's own app (no extra network hop).
MIDDLEWARE = "magistral_runtime.middleware.MagistralMiddleware"


def build_vllm_args(config: RuntimeConfig) -> list[str]:
    """The argv of `vllm serve` for this config (without the API key: it comes from env)."""
    args = ["vllm", "serve", config.model]
    if config.revision:
        args += ["--revision", config.revision]
    args += ["--served-model-name", config.served_model_name]
    args += ["--host", config.host, "--port", str(config.port)]
    args += list(MODEL_CARD_FLAGS)
    if config.tool_calling:
        args += list(TOOL_FLAGS)
    if config.reasoning_format == "think-tokens":
        # [THINK]...[/THINK] special tokens (2507, 2509): vLLM's own parser handles them.
        args += ["--reasoning-parser", "mistral"]
    if config.quantization is not None:
        args += ["--quantization", QUANTIZATION_METHODS[config.quantization]]
    args += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    args += ["--max-model-len", str(config.max_model_len)]
    # repr: the shortest text that parses back to the same float (`:g` would round 0.9123456).
    args += ["--gpu-memory-utilization", repr(config.gpu_memory_utilization)]
    if config.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", config.kv_cache_dtype]
    if config.max_num_seqs is not None:
        args += ["--max-num-seqs", str(config.max_num_seqs)]
    if config.download_dir:
        args += ["--download-dir", config.download_dir]
    generation = {"temperature": config.sampling.temperature, "top_p": config.sampling.top_p}
    args += ["--override-generation-config", json.dumps(generation, separators=(",", ":"))]
    args += ["--disable-access-log-for-endpoints", QUIET_ENDPOINTS]
    args += ["--shutdown-timeout", str(config.shutdown_timeout_seconds)]
    args += list(config.extra_args)
    return args


def build_serve_argv(config: RuntimeConfig) -> list[str]:
    """What `magistral-runtime serve` execs: the vLLM argv plus the project's middleware."""
    return [*build_vllm_args(config), "--middleware", MIDDLEWARE]
