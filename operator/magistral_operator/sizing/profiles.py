"""Model profiles: the architecture numbers sizing needs, built in for Magistral Small.

Shape from the Mistral-Small-3.1 text stack the Magistral Small checkpoints share (hidden 5120,
40 layers, 32 attention heads, 8 KV heads, head_dim 128, vocab 131072): about 23.57 B
parameters. bf16 weights: 47.1 GB (`consolidated.safetensors`). The FP8 (W8A8) checkpoint keeps
the embeddings and LM head (2 x 131072 x 5120 = 1.34 B parameters) in bf16 and stores the other
22.23 B in fp8: 1.34 x 2 + 22.23 x 1 = 24.9 GB.

A bf16 checkpoint served in fp8 (spec.model.precision fp8) is quantized by vLLM while it loads
(`--quantization fp8_per_tensor`, see magistral_runtime.launcher): the linear layers become fp8
one layer at a time, the embeddings and LM head stay bf16, so the GPUs hold the same 24.9 GB
as the FP8 checkpoint. 2509's vision encoder stays bf16 too (vLLM's pixtral.py builds it
without the quantization config). An FP8 checkpoint cannot be served in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..api.spec import ModelProfileOverride, ModelSpec, Precision

GB = 1e9
GIB = 1024**3

OnlineQuantization = Literal["fp8"]


@dataclass(frozen=True)
class ModelProfile:
    """What sizing needs to know about a checkpoint."""

    repo: str
    parameters_billions: float
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    weight_bytes: float  # what the GPUs hold: the weights as served
    precision: Precision  # the precision the weights are served in
    reasoning_tags: str  # "think-text" (<think> plain text) or "think-tokens" ([THINK] tokens)
    # Set when vLLM must quantize the checkpoint while loading it (a bf16 checkpoint served in
    # fp8); None when the weights are served as the checkpoint stores them.
    quantization: OnlineQuantization | None = None
    # The checkpoint's size when it differs from weight_bytes (quantized while loading).
    checkpoint_bytes: float | None = None

    @property
    def stored_bytes(self) -> float:
        """What a replica downloads and reads: the checkpoint as stored."""
        return self.weight_bytes if self.checkpoint_bytes is None else self.checkpoint_bytes

    def kv_bytes_per_token(self, *, kv_dtype_bytes: int) -> int:
        """K and V for every layer and KV head, for one token, on the whole model."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


BF16_WEIGHTS = 47.1 * GB
# Bytes a parameter takes in a checkpoint of each precision (a profile without weightGigabytes).
BYTES_PER_PARAMETER = {Precision.BF16: 2.0, Precision.FP8: 1.0}
FP8_WEIGHTS = 24.9 * GB
# 2509's vision encoder: about 0.4 B parameters, bf16 in every precision.
VISION_ENCODER_BYTES = 0.8 * GB


def _magistral_small(
    repo: str, *, weight_bytes: float, precision: Precision, reasoning_tags: str
) -> ModelProfile:
    """The Mistral-Small-3.1 text stack every Magistral Small checkpoint shares."""
    return ModelProfile(
        repo=repo,
        parameters_billions=23.57,
        layers=40,
        attention_heads=32,
        kv_heads=8,
        head_dim=128,
        weight_bytes=weight_bytes,
        precision=precision,
        reasoning_tags=reasoning_tags,
    )


BUILTIN_PROFILES: dict[str, ModelProfile] = {
    p.repo: p
    for p in (
        _magistral_small(
            "mistralai/Magistral-Small-2506",
            weight_bytes=BF16_WEIGHTS,
            precision=Precision.BF16,
            reasoning_tags="think-text",
        ),
        _magistral_small(
            "mistralai/Magistral-Small-2507",
            weight_bytes=BF16_WEIGHTS,
            precision=Precision.BF16,
            reasoning_tags="think-tokens",
        ),
        # 2509 adds a vision encoder (about 0.4 B parameters, bf16) to the same text stack.
        _magistral_small(
            "mistralai/Magistral-Small-2509",
            weight_bytes=BF16_WEIGHTS + VISION_ENCODER_BYTES,
            precision=Precision.BF16,
            reasoning_tags="think-tokens",
        ),
        _magistral_small(
            "RedHatAI/Magistral-Small-2506-FP8",
            weight_bytes=FP8_WEIGHTS,
            precision=Precision.FP8,
            reasoning_tags="think-text",
        ),
    )
}


# The weights of a built-in bf16 checkpoint served in fp8 (quantized while loading).
ONLINE_FP8_WEIGHTS: dict[str, float] = {
    "mistralai/Magistral-Small-2506": FP8_WEIGHTS,
    "mistralai/Magistral-Small-2507": FP8_WEIGHTS,
    "mistralai/Magistral-Small-2509": FP8_WEIGHTS + VISION_ENCODER_BYTES,
}


class UnknownModelError(ValueError):
    """A repository with no built-in profile and no spec.model.profile."""


class PrecisionError(ValueError):
    """spec.model.precision asks for a precision the checkpoint cannot be served in."""


def _from_override(repo: str, override: ModelProfileOverride, precision: Precision) -> ModelProfile:
    return ModelProfile(
        repo=repo,
        parameters_billions=override.parameters_billions,
        layers=override.layers,
        attention_heads=override.attention_heads,
        kv_heads=override.kv_heads,
        head_dim=override.head_dim,
        weight_bytes=(
            override.weight_gigabytes * GB
            if override.weight_gigabytes is not None
            else override.parameters_billions * GB * BYTES_PER_PARAMETER[precision]
        ),
        precision=precision,
        reasoning_tags="think-text",
    )


def _quantization(repo: str, stored: Precision, served: Precision) -> OnlineQuantization | None:
    """How vLLM gets from the checkpoint's precision to the served one, if it can."""
    if stored == served:
        return None
    if stored == Precision.BF16 and served == Precision.FP8:
        return "fp8"
    raise PrecisionError(
        f"spec.model.precision {served}: {repo} is an {stored} checkpoint and vLLM cannot "
        f"serve it in {served}; leave spec.model.precision unset (or {stored}), or serve a "
        f"bf16 checkpoint such as mistralai/Magistral-Small-2506"
    )


def resolve_profile(model: ModelSpec) -> ModelProfile:
    """The profile for the endpoint's model: the spec override, else the built-in one.

    spec.model.precision is the precision the weights are served in. A built-in checkpoint has
    a known precision: bf16 served in fp8 is quantized while loading (24.9 GB, like the FP8
    checkpoint), fp8 served in bf16 is refused (PrecisionError). For a repository without a
    built-in profile, spec.model.precision is the checkpoint's own (bf16 when unset).
    """
    builtin = BUILTIN_PROFILES.get(model.repo)
    if builtin is None and model.profile is None:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise UnknownModelError(
            f"spec.model.profile: no built-in profile for {model.repo!r} (built in: {known}); "
            "set spec.model.profile with the model's architecture numbers"
        )
    stored = builtin.precision if builtin is not None else Precision(model.precision or "bf16")
    served = Precision(model.precision or stored)
    quantization = _quantization(model.repo, stored, served)
    if model.profile is not None:
        profile = _from_override(model.repo, model.profile, served)
        tags = builtin.reasoning_tags if builtin is not None else profile.reasoning_tags
        stored_bytes = model.profile.parameters_billions * GB * BYTES_PER_PARAMETER[stored]
        return replace(
            profile,
            reasoning_tags=tags,
            quantization=quantization,
            checkpoint_bytes=stored_bytes if quantization else None,
        )
    assert builtin is not None  # checked above
    if quantization is None:
        return builtin
    return replace(
        builtin,
        precision=served,
        weight_bytes=ONLINE_FP8_WEIGHTS[model.repo],
        quantization=quantization,
        checkpoint_bytes=builtin.weight_bytes,
    )
