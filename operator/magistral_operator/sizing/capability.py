"""GPU compute capability: what a pool's GPUs are, and what fp8 needs from them in vLLM.

The minimums are vLLM 0.33.0's, read from its source (tests/unit/test_sizing_argv.py checks
them against the release):

* fp8 weights, 7.5: an FP8 checkpoint (compressed-tensors) uses the W8A8 kernels from 8.9 and
  the weight-only FP8 Marlin kernel (`CompressedTensorsW8A16Fp8`, minimum 75) below; online
  FP8 (`OnlineQuantizationConfig.get_min_capability`: 75) falls back to the same Marlin kernel
  (`is_fp8_marlin_supported`: `has_device_capability(75)`).
* an fp8 KV cache, 8.0: FlashAttention reads one only on 9.0 (FA3), FlashInfer from 8.0, and
  the Triton backend refuses it below 8.9 (`TritonAttentionImpl.__init__`); below 8.0 no
  attention backend is left.
"""

from __future__ import annotations

import re

from ..api.config import COMPUTE_CAPABILITY

Capability = tuple[int, int]  # (major, minor), as CUDA reports it

FP8_WEIGHTS_MIN: Capability = (7, 5)
FP8_KV_CACHE_MIN: Capability = (8, 0)

# nvidia.com/gpu.product values, split into tokens on '-', '_' and spaces: a product matches
# when it contains one of these token sequences ("NVIDIA-H100-80GB-HBM3" -> H100). Whole tokens
# only, so A10 is not A100, L4 is not L40S and H20 is not H200.
_BY_PRODUCT: dict[tuple[str, ...], Capability] = {
    ("B200",): (10, 0),
    ("GB200",): (10, 0),
    ("H100",): (9, 0),
    ("H200",): (9, 0),
    ("H20",): (9, 0),
    ("GH200",): (9, 0),
    ("L40S",): (8, 9),
    ("L40",): (8, 9),
    ("L4",): (8, 9),
    ("RTX", "4090"): (8, 9),
    ("RTX", "6000", "ADA"): (8, 9),
    ("A100",): (8, 0),
    ("A30",): (8, 0),
    ("A10",): (8, 6),
    ("A10G",): (8, 6),
    ("A40",): (8, 6),
    ("RTX", "3090"): (8, 6),
    ("T4",): (7, 5),
    ("V100",): (7, 0),
}

_CAPABILITY = re.compile(COMPUTE_CAPABILITY)


def parse_capability(text: str) -> Capability:
    """'8.9' -> (8, 9); the operator config validates the form."""
    if _CAPABILITY.match(text) is None:
        raise ValueError(f"compute capability {text!r} is not of the form major.minor")
    major, minor = text.split(".")
    return int(major), int(minor)


def format_capability(capability: Capability) -> str:
    """(8, 9) -> '8.9'."""
    return f"{capability[0]}.{capability[1]}"


def capability_of_product(product: str) -> Capability | None:
    """The compute capability of a known GPU product; None when unknown or ambiguous."""
    tokens = tuple(t for t in re.split(r"[-_\s]+", product.upper()) if t)
    found = {
        capability
        for pattern, capability in _BY_PRODUCT.items()
        if any(tokens[i : i + len(pattern)] == pattern for i in range(len(tokens)))
    }
    return found.pop() if len(found) == 1 else None


def pool_capability(configured: str | None, gpu_product: str) -> Capability | None:
    """The pool's computeCapability when set, else the one its GPU product is known to have."""
    if configured is not None:
        return parse_capability(configured)
    return capability_of_product(gpu_product)


def fp8_problems(
    *,
    fp8_weights: bool,
    kv_cache_dtype: str,
    capability: Capability | None,
    gpu_product: str,
) -> tuple[tuple[str, ...], str | None]:
    """What the GPU cannot run (each naming the field), and a note when it could not be checked.

    Returns (problems, note): problems are empty when the GPU runs everything asked of it or
    its capability is unknown; the note says which fp8 requirement went unchecked.
    """
    needs: list[tuple[str, Capability]] = []
    if fp8_weights:
        needs.append(("spec.model.precision fp8 (fp8 weights)", FP8_WEIGHTS_MIN))
    if kv_cache_dtype.startswith("fp8"):
        needs.append((f"spec.runtime.kvCacheDtype {kv_cache_dtype}", FP8_KV_CACHE_MIN))
    if not needs:
        return (), None
    if capability is None:
        unchecked = "; ".join(f"{what} needs >= {format_capability(m)}" for what, m in needs)
        return (), (
            f"compute capability of {gpu_product} unknown, not checked ({unchecked}): set "
            "computeCapability on the pool in the operator config"
        )
    have = format_capability(capability)
    return tuple(
        f"{what} needs a GPU of compute capability >= {format_capability(minimum)} in vLLM; "
        f"{gpu_product} has {have}"
        for what, minimum in needs
        if capability < minimum
    ), None
