"""Choose the tensor-parallel size: the smallest valid TP whose GPUs hold the weights and a KV
cache big enough for the required number of full-length sequences.

Per GPU, vLLM may use `gpu_memory * gpu_memory_utilization`. From that it subtracts its share of
the weights (`weights / TP`) and a fixed overhead (CUDA context, activations, CUDA graphs); the
rest is KV cache, split in blocks of 16 tokens. One token's KV on one GPU is
`2 (K and V) x layers x kv_heads_per_gpu x head_dim x dtype bytes`, where `kv_heads_per_gpu` is
`kv_heads / TP` (at least 1: vLLM replicates KV heads when TP exceeds them).

Valid TPs divide the attention heads (vLLM's QKVParallelLinear requires it), are 1, 2, 4 or 8,
and fit on one node (no multi-node tensor parallelism). A GPU whose compute capability is too
low for fp8 weights or an fp8 KV cache (capability.py) fits at no TP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..api.spec import Precision
from .capability import Capability, fp8_problems
from .profiles import GB, GIB, ModelProfile

TP_CANDIDATES = (1, 2, 4, 8)
KV_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class SizingRequest:
    """Everything the TP choice depends on; plain numbers, no Kubernetes objects."""

    profile: ModelProfile
    gpu_product: str
    gpu_memory_gib: float
    gpus_per_node: int
    max_model_len: int
    kv_cache_dtype: str
    gpu_memory_utilization: float
    min_full_length_sequences: int
    per_gpu_overhead_gib: float
    requested_tp: int | None = None
    compute_capability: Capability | None = None  # None: unknown

    @property
    def kv_dtype_bytes(self) -> int:
        """Bytes per KV element: 1 for fp8 KV caches, else 2 (bf16, vLLM's 'auto' here)."""
        return 1 if self.kv_cache_dtype.startswith("fp8") else 2


@dataclass(frozen=True)
class TPEvaluation:
    """The memory arithmetic for one TP size."""

    tp: int
    usable_bytes_per_gpu: float
    weight_bytes_per_gpu: float
    overhead_bytes_per_gpu: float
    kv_budget_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    kv_cache_tokens: int
    full_length_sequences: float
    fits: bool
    reason: str

    def explain(self) -> str:
        """The arithmetic in one line, in the units people quote (GiB for GPUs, GB for weights)."""
        return (
            f"TP={self.tp}: {self.usable_bytes_per_gpu / GIB:.1f} GiB usable per GPU - "
            f"{self.weight_bytes_per_gpu / GB:.1f} GB weights - "
            f"{self.overhead_bytes_per_gpu / GIB:.1f} GiB overhead = "
            f"{self.kv_budget_bytes_per_gpu / GIB:.1f} GiB KV cache = "
            f"{self.kv_cache_tokens} tokens = {self.full_length_sequences:.2f} full-length "
            f"sequences"
        )


@dataclass(frozen=True)
class SizingResult:
    """The decision: a TP (or none) and why."""

    tp: int | None
    evaluations: tuple[TPEvaluation, ...]
    message: str
    # What the GPU cannot run at any TP (fp8 below its compute capability), each naming a field.
    unsupported: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether some TP fits."""
        return self.tp is not None

    @property
    def chosen(self) -> TPEvaluation | None:
        """The evaluation of the chosen TP."""
        return next((e for e in self.evaluations if e.tp == self.tp), None)


def valid_tp_sizes(*, attention_heads: int, gpus_per_node: int) -> tuple[int, ...]:
    """TP sizes vLLM accepts for this model that fit on one node."""
    return tuple(tp for tp in TP_CANDIDATES if attention_heads % tp == 0 and tp <= gpus_per_node)


def evaluate_tp(request: SizingRequest, tp: int) -> TPEvaluation:
    """The memory arithmetic for `tp` GPUs per replica."""
    profile = request.profile
    usable = request.gpu_memory_gib * GIB * request.gpu_memory_utilization
    weights = profile.weight_bytes / tp
    overhead = request.per_gpu_overhead_gib * GIB
    kv_budget = usable - weights - overhead
    kv_heads_per_gpu = max(1, math.ceil(profile.kv_heads / tp))
    per_token = 2 * profile.layers * kv_heads_per_gpu * profile.head_dim * request.kv_dtype_bytes
    blocks = math.floor(kv_budget / (per_token * KV_BLOCK_TOKENS)) if kv_budget > 0 else 0
    tokens = blocks * KV_BLOCK_TOKENS
    sequences = tokens / request.max_model_len
    needed = request.min_full_length_sequences
    if kv_budget <= 0:
        reason = (
            f"weights ({weights / GB:.1f} GB per GPU) and overhead "
            f"({overhead / GIB:.1f} GiB) exceed the usable {usable / GIB:.1f} GiB per GPU"
        )
    elif sequences < needed:
        reason = (
            f"KV cache holds {sequences:.2f} sequences of {request.max_model_len} tokens, "
            f"{needed} required (spec.gpu.minFullLengthSequences)"
        )
    else:
        reason = "fits"
    return TPEvaluation(
        tp=tp,
        usable_bytes_per_gpu=usable,
        weight_bytes_per_gpu=weights,
        overhead_bytes_per_gpu=overhead,
        kv_budget_bytes_per_gpu=kv_budget,
        kv_bytes_per_token_per_gpu=per_token,
        kv_cache_tokens=tokens,
        full_length_sequences=sequences,
        fits=reason == "fits",
        reason=reason,
    )


def choose_tp(request: SizingRequest) -> SizingResult:
    """The requested TP if it fits, else (for auto) the smallest valid TP that fits."""
    profile = request.profile
    valid = valid_tp_sizes(
        attention_heads=profile.attention_heads, gpus_per_node=request.gpus_per_node
    )
    where = (
        f"{request.gpu_product} ({request.gpu_memory_gib:g} GiB, {request.gpus_per_node} per node)"
    )
    unsupported, unchecked = fp8_problems(
        fp8_weights=profile.precision == Precision.FP8,
        kv_cache_dtype=request.kv_cache_dtype,
        capability=request.compute_capability,
        gpu_product=request.gpu_product,
    )
    if unsupported:
        return SizingResult(
            tp=None, evaluations=(), message="; ".join(unsupported), unsupported=unsupported
        )
    note = f" ({unchecked})" if unchecked else ""
    if request.requested_tp is not None and request.requested_tp not in valid:
        return SizingResult(
            tp=None,
            evaluations=(),
            message=(
                f"spec.gpu.tensorParallelSize {request.requested_tp} is not possible on {where}: "
                f"valid sizes there are {', '.join(map(str, valid)) or 'none'} (TP must divide "
                f"{profile.attention_heads} attention heads and fit on one node){note}"
            ),
        )
    candidates = valid if request.requested_tp is None else (request.requested_tp,)
    evaluations = tuple(evaluate_tp(request, tp) for tp in candidates)
    chosen = next((e for e in evaluations if e.fits), None)
    kv_need = (
        request.profile.kv_bytes_per_token(kv_dtype_bytes=request.kv_dtype_bytes)
        * request.max_model_len
        * request.min_full_length_sequences
    )
    if chosen is None:
        tried = "; ".join(f"{e.explain()} ({e.reason})" for e in evaluations)
        return SizingResult(
            tp=None,
            evaluations=evaluations,
            message=(
                f"{_weights(profile)} does not fit on {where}: needs KV for "
                f"{request.min_full_length_sequences} x {request.max_model_len} tokens = "
                f"{kv_need / GIB:.2f} GiB; {tried}{note}"
            ),
        )
    return SizingResult(
        tp=chosen.tp,
        evaluations=evaluations,
        message=f"{where}: {chosen.explain()}{note}",
    )


def _weights(profile: ModelProfile) -> str:
    loaded = ", quantized while loading" if profile.quantization else ""
    return (
        f"{profile.repo} ({profile.precision}{loaded}, weights {profile.weight_bytes / GB:.1f} GB)"
    )
