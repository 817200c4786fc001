"""What one replica can serve (pure): sequences, KV-cache tokens and prefill throughput.

The autoscaler sizes the fleet from these (autoscale/demand.py), never from one snapshot of
the engines:

- **Sequences**: vLLM's `--max-num-seqs`; unset, vLLM 0.33.0's default for the API server
  (`EngineArgs._set_default_max_num_seqs_and_batched_tokens_args`): 1024 on GPUs with at least
  70 GiB that are not A100 (H100, H200, B200), 256 otherwise.
- **KV-cache tokens**: sizing's estimate for the pool's TP (`TPEvaluation.kv_cache_tokens`).
- **Prefill tokens per second** (a busy replica's prompt throughput):
  `spec.scaling.prefillTokensPerSecond` when set (a measured figure is best), else
  `tp * dense BF16 FLOP/s * PREFILL_EFFICIENCY / (2 * parameters)`: a forward pass costs about
  2 FLOP per parameter per token, and chunked prefill at large batch reaches roughly 40 % of
  the tensor cores' peak (model FLOP utilisation) on Hopper; an FP8 model runs its matmuls at
  twice the rate. Unknown GPUs get the A10's figure, the lowest listed, so the estimate errs
  toward more replicas. The pool table is the GPUs' datasheet dense (not sparse) figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..api.config import GPUPool

GIB_70 = 70

# Dense BF16 tensor TFLOP/s from the vendor datasheets (no sparsity), by product tokens as in
# capability.py (whole tokens: "A10" is not "A100").
_DENSE_BF16_TFLOPS: dict[tuple[str, ...], float] = {
    ("B200",): 2250.0,
    ("GB200",): 2500.0,
    ("H200",): 989.0,
    ("GH200",): 989.0,
    ("H100", "PCIE"): 756.0,
    ("H100",): 989.0,
    ("H20",): 148.0,
    ("L40S",): 362.0,
    ("L40",): 181.0,
    ("L4",): 121.0,
    ("A100",): 312.0,
    ("A40",): 150.0,
    ("A30",): 165.0,
    ("A10G",): 70.0,
    ("A10",): 125.0,
}
UNKNOWN_GPU_TFLOPS = 70.0
PREFILL_EFFICIENCY = 0.4


@dataclass(frozen=True)
class ReplicaThroughput:
    """One replica's capacity on a pool, from its configuration."""

    max_sequences: int
    kv_tokens: int
    prefill_tokens_per_second: float

    def __post_init__(self) -> None:
        if self.max_sequences < 1 or self.kv_tokens < 1 or self.prefill_tokens_per_second <= 0:
            raise ValueError(f"replica capacity must be positive: {self}")


def dense_bf16_tflops(product: str) -> float:
    """The GPU's dense BF16 TFLOP/s; the most specific match wins, unknown → the lowest."""
    tokens = tuple(t for t in re.split(r"[-_\s]+", product.upper()) if t)
    best: tuple[int, float] | None = None
    for pattern, tflops in _DENSE_BF16_TFLOPS.items():
        if any(tokens[i : i + len(pattern)] == pattern for i in range(len(tokens))) and (
            best is None or len(pattern) > best[0]
        ):
            best = (len(pattern), tflops)
    return best[1] if best else UNKNOWN_GPU_TFLOPS


def default_max_num_seqs(pool: GPUPool) -> int:
    """vLLM 0.33.0's `--max-num-seqs` default for the API server on this pool's GPUs."""
    large = pool.gpu_memory_gib >= GIB_70 and "A100" not in pool.gpu_product.upper()
    return 1024 if large else 256


def prefill_tokens_per_second(
    *, pool: GPUPool, tp: int, parameters_billions: float, fp8: bool
) -> float:
    """Estimated prompt tokens per second of one busy replica (see the module docstring)."""
    flops = tp * dense_bf16_tflops(pool.gpu_product) * 1e12 * (2.0 if fp8 else 1.0)
    return flops * PREFILL_EFFICIENCY / (2.0 * parameters_billions * 1e9)


def replica_throughput(
    *,
    pool: GPUPool,
    tp: int,
    kv_tokens: int,
    parameters_billions: float,
    fp8: bool,
    max_num_seqs: int | None,
    measured_prefill: float | None,
) -> ReplicaThroughput:
    """A replica's capacity on `pool`; set values (max_num_seqs, measured_prefill) win."""
    return ReplicaThroughput(
        max_sequences=max_num_seqs or default_max_num_seqs(pool),
        kv_tokens=max(1, kv_tokens),
        prefill_tokens_per_second=measured_prefill
        or prefill_tokens_per_second(
            pool=pool, tp=tp, parameters_billions=parameters_billions, fp8=fp8
        ),
    )
