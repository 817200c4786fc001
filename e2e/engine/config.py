"""The simulator's configuration, its hardware-derived defaults and its command line (pure).

The defaults model one vLLM replica serving Magistral Small (bf16) on one H100. When the GPU,
tensor parallelism, ``--gpu-memory-utilization`` or ``--kv-cache-dtype`` are given, the
inter-token latency, the prefill speed and the KV-cache capacity are derived from the model's
shape and the GPU's bandwidth, compute and memory (docs/engine-simulator.md lists the inputs and
where they come from). Any explicit timing or capacity flag wins over the derivation.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction

DEFAULT_MODEL = "mistralai/Magistral-Small-2506"
API_KEY_ENV = "VLLM_API_KEY"
"""vLLM reads its API key from this variable when ``--api-key`` is absent."""

# Magistral Small (Mistral-Small-3.1 text stack), /work/shared/REFERENCE.md.
MODEL_PARAMS = 23.57e9
WEIGHT_BYTES_BF16 = 47.1e9
KV_BYTES_PER_TOKEN_BF16 = 2 * 40 * 8 * 128 * 2  # K and V, 40 layers, 8 KV heads, head_dim 128
RECOMMENDED_MAX_MODEL_LEN = 40960
GIB = 1024**3

# Calibration: the brief's H100 figures (ITL 15 ms at batch 1, prefill 0.1 ms per prompt token)
# against the physical floors (47.1 GB / 3.35 TB/s = 14.1 ms; 2 x 23.57 GFLOP / 989 TFLOP/s).
DECODE_BANDWIDTH_EFFICIENCY = 0.94
PREFILL_MFU = 0.48
TP_EFFICIENCY = 0.9
"""Fraction of the ideal 1/TP speed-up that tensor parallelism delivers."""
ALLREDUCE_MS_PER_STEP = 0.5
"""Added to every decode step when TP > 1 (the all-reduces of 40 layers)."""
NON_KV_OVERHEAD_GIB = 3.0
"""Per GPU: activations at the profiled batch, CUDA graphs, NCCL and the CUDA context."""
LARGE_GPU_GIB = 70.0
"""vLLM's ``--max-num-seqs`` default is 1024 on GPUs with at least this much memory, else 256."""


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """One GPU product as the simulation needs it."""

    product: str
    """The ``nvidia.com/gpu.product`` label value."""
    memory_mib: int
    """The ``nvidia.com/gpu.memory`` label value."""
    bandwidth_tbps: float
    """Memory bandwidth, TB/s (REFERENCE.md)."""
    bf16_tflops: float
    """Dense bf16 tensor throughput, TFLOP/s (NVIDIA datasheets)."""
    fp8: bool
    """Has fp8 tensor cores (fp8 weights then halve prefill compute time)."""


GPUS: dict[str, GpuSpec] = {
    spec.product: spec
    for spec in (
        GpuSpec("NVIDIA-H100-80GB-HBM3", 81559, 3.35, 989.0, True),
        GpuSpec("NVIDIA-H200", 143771, 4.8, 989.0, True),
        GpuSpec("NVIDIA-A100-SXM4-80GB", 81920, 2.0, 312.0, False),
        GpuSpec("NVIDIA-L40S", 46068, 0.864, 362.0, True),
    )
}
DEFAULT_GPU = "NVIDIA-H100-80GB-HBM3"


def gpu_spec(product: str | None, *, memory_mib: int | None = None) -> GpuSpec:
    """The spec of ``product`` (H100 figures for an unknown product), memory from the label."""
    base = GPUS.get(product or DEFAULT_GPU, GPUS[DEFAULT_GPU])
    if product and product not in GPUS:
        base = replace(base, product=product)
    if memory_mib:
        base = replace(base, memory_mib=memory_mib)
    return base


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Engine figures derived from the GPU, the parallelism and the memory settings."""

    itl_ms: float
    prefill_ms_per_token: float
    kv_cache_tokens: int
    """0 when the weights do not fit: vLLM would fail at start."""
    default_max_num_seqs: int


def derive_profile(
    *,
    gpu: GpuSpec,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    kv_cache_dtype: str = "auto",
    fp8_weights: bool = False,
) -> HardwareProfile:
    """Decode is bound by reading the weights, prefill by compute, KV by what memory is left."""
    tp = max(1, tensor_parallel_size)
    weight_bytes = WEIGHT_BYTES_BF16 / (2 if fp8_weights else 1)
    speedup = 1.0 if tp == 1 else tp * TP_EFFICIENCY
    decode_s = weight_bytes / (gpu.bandwidth_tbps * 1e12 * DECODE_BANDWIDTH_EFFICIENCY)
    itl_ms = decode_s * 1e3 / speedup + (ALLREDUCE_MS_PER_STEP if tp > 1 else 0.0)
    tflops = gpu.bf16_tflops * (2 if fp8_weights and gpu.fp8 else 1)
    prefill_ms = 2 * MODEL_PARAMS / (tflops * 1e12 * PREFILL_MFU) * 1e3 / speedup
    kv_bytes = KV_BYTES_PER_TOKEN_BF16 / (2 if kv_cache_dtype.startswith("fp8") else 1)
    memory_gib = gpu.memory_mib / 1024
    free_gib = memory_gib * gpu_memory_utilization - weight_bytes / tp / GIB - NON_KV_OVERHEAD_GIB
    kv_tokens = max(0, int(free_gib * GIB * tp // kv_bytes))
    return HardwareProfile(
        itl_ms=round(itl_ms, 3),
        prefill_ms_per_token=round(prefill_ms, 5),
        kv_cache_tokens=kv_tokens,
        default_max_num_seqs=1024 if memory_gib >= LARGE_GPU_GIB else 256,
    )


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything one simulator needs; the defaults are one H100 serving bf16 weights."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    served_model_names: tuple[str, ...] = ()
    max_num_seqs: int = 1024
    max_model_len: int = RECOMMENDED_MAX_MODEL_LEN
    kv_cache_tokens: int = 162_000
    block_size: int = 16
    ttft_ms: float = 150.0
    """Fixed part of the time to first token (API server, scheduling), not counting the queue."""
    prefill_ms_per_token: float = 0.1
    itl_ms: float = 15.0
    """Inter-token latency at batch size 1."""
    itl_batch_factor: float = 0.01
    """Relative growth of the inter-token latency per extra running sequence."""
    output_tokens_min: int = 64
    output_tokens_max: int = 1024
    reasoning_fraction: float = 0.7
    reasoning_parser: str | None = None
    api_keys: tuple[str, ...] = ()
    startup_delay_s: float = 0.0
    shutdown_timeout_s: float = 0.0
    seed: int | None = None
    keep_alive_s: float = 5.0
    access_log: bool = False
    start_healthy: bool = True
    middlewares: tuple[str, ...] = ()
    """ASGI middleware classes (``module.Class``), loaded like ``vllm serve --middleware``."""
    gpu_product: str = DEFAULT_GPU
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    error_rate: float = 0.0
    """Share of requests (0..1) that fail inside the engine (``finished_reason="error"``,
    HTTP 500 or an SSE error event, as vLLM answers a ``GenerationError``). Deterministic:
    the n-th request the engine takes fails when ``floor(n x error_rate)`` grows, so exactly
    ``floor(N x error_rate)`` of the first N fail (:func:`fails_at`)."""

    @property
    def served_model_name(self) -> str:
        """The first served name: the ``model_name`` label of every metric."""
        return self.served_model_names[0] if self.served_model_names else self.model

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model,)

    @property
    def num_gpu_blocks(self) -> int:
        return self.kv_cache_tokens // self.block_size

    def problems(self) -> list[str]:
        """What vLLM would refuse to start with (empty when the config is viable)."""
        out: list[str] = []
        if self.kv_cache_tokens <= 0:
            out.append(
                "No available memory for the cache blocks: the weights do not fit "
                f"({self.gpu_product}, tensor-parallel-size {self.tensor_parallel_size}, "
                f"gpu-memory-utilization {self.gpu_memory_utilization:g})"
            )
        elif self.max_model_len > self.kv_cache_tokens:
            out.append(
                f"The model's max seq len ({self.max_model_len}) is larger than the maximum "
                f"number of tokens that can be stored in KV cache ({self.kv_cache_tokens}). "
                "Try increasing gpu_memory_utilization or decreasing max_model_len."
            )
        if self.max_num_seqs < 1:
            out.append("max_num_seqs must be at least 1")
        if not 1 <= self.output_tokens_min <= self.output_tokens_max:
            out.append("need 1 <= output-tokens-min <= output-tokens-max")
        if not 0.0 <= self.error_rate <= 1.0:
            out.append(f"error-rate must be in [0, 1], got {self.error_rate:g}")
        return out


def fails_at(n: int, error_rate: float) -> bool:
    """Whether the n-th request (from 1) fails at ``error_rate``: when ``floor(n x rate)``
    grows. Exact over any prefix (``floor(N x rate)`` failures in the first N), the first
    request fails only at rate 1, and no seed or clock is involved. The rate is read as a
    fraction with a denominator up to 10**6, so 0.1 x 10 is exactly 1."""
    if error_rate <= 0 or n < 1:
        return False
    rate = Fraction(min(1.0, error_rate)).limit_denominator(1_000_000)
    return math.floor(n * rate) > math.floor((n - 1) * rate)


def parse_fraction(text: str) -> float:
    """A finite number in [0, 1] (ValueError otherwise): ``--error-rate``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} is not a number in [0, 1]")
    return value


# ---------------------------------------------------------------- `vllm serve` command lines

VLLM_FLAGS: dict[str, str] = {
    "--served-model-name": "+",
    "--max-num-seqs": "1",
    "--max-model-len": "1",
    "--tensor-parallel-size": "1",
    "-tp": "1",
    "--gpu-memory-utilization": "1",
    "--kv-cache-dtype": "1",
    "--shutdown-timeout": "1",
    "--reasoning-parser": "1",
    "--block-size": "1",
    "--model": "1",
    "--seed": "1",
}
"""The ``vllm serve`` flags the simulator honours (and their arity); others are ignored."""


def simulator_args_from_vllm(argv: Sequence[str]) -> list[str]:
    """Translate a ``vllm serve MODEL --flag value …`` argv into simulator flags.

    Flags the simulator does not model (``--tokenizer-mode``, ``--override-generation-config``
    …) are dropped with their values; ``--host``/``--port`` are left to the caller.
    """
    args = list(argv)
    if len(args) >= 2 and os.path.basename(args[0]) == "vllm" and args[1] == "serve":
        args = args[2:]
    elif args and args[0] == "serve":
        args = args[1:]
    out: list[str] = []
    if args and not args[0].startswith("-"):
        out += ["--model", args[0]]
        args = args[1:]
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-"):
            continue  # the value of a flag we do not model
        name, eq, inline = token.partition("=")
        arity = VLLM_FLAGS.get(name)
        if arity is None:
            continue
        canonical = "--tensor-parallel-size" if name == "-tp" else name
        if eq:
            out += [canonical, inline]
            continue
        values: list[str] = []
        while i < len(args) and not args[i].startswith("-"):
            values.append(args[i])
            i += 1
            if arity == "1":
                break
        if values:
            out += [canonical, *values]
    return out


# ---------------------------------------------------------------------------- command line


def _fraction_arg(text: str) -> float:
    try:
        return parse_fraction(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m e2e.engine.simulator",
        description="An OpenAI-compatible server that behaves like one vLLM replica serving "
        "Magistral Small. Timing and capacity defaults come from --gpu and the parallelism "
        "flags unless given explicitly.",
    )
    add = p.add_argument
    add("--host", default="127.0.0.1", help="a 127.x.y.z address (loopback only)")
    add("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    add("--model", default=DEFAULT_MODEL)
    add("--served-model-name", nargs="+", default=None)
    add("--max-num-seqs", type=int, default=None, help="vLLM's default for the GPU if unset")
    add("--max-model-len", type=int, default=RECOMMENDED_MAX_MODEL_LEN)
    add("--tensor-parallel-size", "-tp", type=int, default=1)
    add("--gpu-memory-utilization", type=float, default=0.9)
    add("--kv-cache-dtype", default="auto")
    add("--block-size", type=int, default=16)
    add("--gpu", default=DEFAULT_GPU, help="nvidia.com/gpu.product of the node")
    add("--gpu-memory-mib", type=int, default=None, help="nvidia.com/gpu.memory of the node")
    add("--kv-cache-tokens", type=int, default=None, help="KV capacity (derived if unset)")
    add("--ttft-ms", type=float, default=150.0, help="fixed part of the time to first token")
    add("--prefill-ms-per-token", type=float, default=None, help="derived if unset")
    add("--itl-ms", type=float, default=None, help="ITL at batch 1 (derived if unset)")
    add("--itl-batch-factor", type=float, default=0.01)
    add(
        "--error-rate",
        type=_fraction_arg,
        default=0.0,
        help="share of requests (0..1) that fail in the engine: HTTP 500, or an SSE error "
        "event then [DONE]; counted as finished_reason=error (every k-th, deterministic)",
    )
    add("--output-tokens-min", type=int, default=64)
    add("--output-tokens-max", type=int, default=1024)
    add("--reasoning-fraction", type=float, default=0.7)
    add("--reasoning-parser", default=None, help="'mistral': reasoning in its own field")
    add("--api-key", default=None, help=f"also read from ${API_KEY_ENV}")
    add("--startup-delay", type=float, default=0.0, help="seconds before the port opens")
    add("--shutdown-timeout", type=float, default=0.0, help="drain time on SIGTERM (vLLM: 0)")
    add("--seed", type=int, default=None)
    add("--keep-alive", type=float, default=5.0, help="idle keep-alive timeout (uvicorn: 5)")
    add("--access-log", action="store_true")
    add("--start-unhealthy", action="store_true", help="/health answers 503 until SIGUSR2")
    add(
        "--middleware",
        action="append",
        default=[],
        help="an ASGI middleware class (module.Class), as vllm serve loads it; repeatable",
    )
    return p


def config_from_args(
    argv: Sequence[str] | None = None, *, environ: dict[str, str] | None = None
) -> SimConfig:
    """Parse the command line; fill what is unset from the hardware profile."""
    ns = build_parser().parse_args(argv)
    env = os.environ if environ is None else environ
    fp8_weights = "fp8" in ns.model.lower()
    profile = derive_profile(
        gpu=gpu_spec(ns.gpu, memory_mib=ns.gpu_memory_mib),
        tensor_parallel_size=ns.tensor_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        fp8_weights=fp8_weights,
    )
    key = ns.api_key if ns.api_key is not None else env.get(API_KEY_ENV)
    return SimConfig(
        host=ns.host,
        port=ns.port,
        model=ns.model,
        served_model_names=tuple(ns.served_model_name or ()),
        max_num_seqs=ns.max_num_seqs or profile.default_max_num_seqs,
        max_model_len=ns.max_model_len,
        kv_cache_tokens=(
            ns.kv_cache_tokens if ns.kv_cache_tokens is not None else profile.kv_cache_tokens
        ),
        block_size=ns.block_size,
        ttft_ms=ns.ttft_ms,
        prefill_ms_per_token=(
            ns.prefill_ms_per_token
            if ns.prefill_ms_per_token is not None
            else profile.prefill_ms_per_token
        ),
        itl_ms=ns.itl_ms if ns.itl_ms is not None else profile.itl_ms,
        itl_batch_factor=ns.itl_batch_factor,
        output_tokens_min=ns.output_tokens_min,
        output_tokens_max=ns.output_tokens_max,
        reasoning_fraction=min(1.0, max(0.0, ns.reasoning_fraction)),
        reasoning_parser=ns.reasoning_parser,
        api_keys=(key,) if key else (),
        startup_delay_s=max(0.0, ns.startup_delay),
        shutdown_timeout_s=max(0.0, ns.shutdown_timeout),
        seed=ns.seed,
        keep_alive_s=ns.keep_alive,
        access_log=ns.access_log,
        start_healthy=not ns.start_unhealthy,
        middlewares=tuple(ns.middleware),
        gpu_product=ns.gpu,
        tensor_parallel_size=ns.tensor_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        kv_cache_dtype=ns.kv_cache_dtype,
        error_rate=ns.error_rate,
    )


def blocks_for(tokens: int, *, block_size: int) -> int:
    return math.ceil(tokens / block_size) if tokens > 0 else 0
