"""Model profiles: the architecture numbers sizing needs, built in for Magistral Small.

Shape from the Mistral-Small-3.1 text stack the Magistral Small checkpoints share (hidden 5120,
40 layers, 32 attention heads, 8 KV heads, head_dim 128, vocab 131072): about 23.57 B
parameters. bf16 weights: 47.1 GB (`consolidated.safetensors`). The FP8 (W8A8) checkpoint keeps
the embeddings and LM head (2 x 131072 x 5120 = 1.34 B parameters) in bf16 and stores the other
22.23 B in fp8: 1.34 x 2 + 22.23 x 1 = 24.9 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.spec import ModelProfileOverride, ModelSpec, Precision

GB = 1e9
GIB = 1024**3


@dataclass(frozen=True)
class ModelProfile:
    """What sizing needs to know about a checkpoint."""

    repo: str
    parameters_billions: float
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    weight_bytes: float
    precision: Precision
    reasoning_tags: str  # "think-text" (<think> plain text) or "think-tokens" ([THINK] tokens)

    def kv_bytes_per_token(self, *, kv_dtype_bytes: int) -> int:
        """K and V for every layer and KV head, for one token, on the whole model."""
        return 2 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


BF16_WEIGHTS = 47.1 * GB
# Bytes a parameter takes in a checkpoint of each precision (a profile without weightGigabytes).
BYTES_PER_PARAMETER = {Precision.BF16: 2.0, Precision.FP8: 1.0}
FP8_WEIGHTS = 24.9 * GB


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
            weight_bytes=BF16_WEIGHTS + 0.8 * GB,
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


class UnknownModelError(ValueError):
    """A repository with no built-in profile and no spec.model.profile."""


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


def resolve_profile(model: ModelSpec) -> ModelProfile:
    """The profile for the endpoint's model: the spec override, else the built-in one.

    A built-in bf16 profile asked for with precision fp8 is treated as the FP8 checkpoint of
    the same architecture (weights 24.9 GB).
    """
    builtin = BUILTIN_PROFILES.get(model.repo)
    if model.profile is not None:
        precision = Precision(model.precision or (builtin.precision if builtin else "bf16"))
        profile = _from_override(model.repo, model.profile, precision)
        if builtin is not None:
            profile = ModelProfile(**{**profile.__dict__, "reasoning_tags": builtin.reasoning_tags})
        return profile
    if builtin is None:
        known = ", ".join(sorted(BUILTIN_PROFILES))
        raise UnknownModelError(
            f"spec.model.profile: no built-in profile for {model.repo!r} (built in: {known}); "
            "set spec.model.profile with the model's architecture numbers"
        )
    if model.precision is None or model.precision == builtin.precision:
        return builtin
    weights = FP8_WEIGHTS if model.precision == Precision.FP8 else BF16_WEIGHTS
    return ModelProfile(
        **{**builtin.__dict__, "precision": Precision(model.precision), "weight_bytes": weights}
    )
