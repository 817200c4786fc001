"""GPU sizing: hand-computed tables and properties of the TP choice."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.config import parse_operator_config
from magistral_operator.api.errors import ConfigError
from magistral_operator.api.spec import ModelSpec
from magistral_operator.sizing.capability import (
    capability_of_product,
    parse_capability,
    pool_capability,
)
from magistral_operator.sizing.profiles import (
    BUILTIN_PROFILES,
    GB,
    GIB,
    ONLINE_FP8_WEIGHTS,
    ModelProfile,
    PrecisionError,
    resolve_profile,
)
from magistral_operator.sizing.tensor_parallel import (
    SizingRequest,
    choose_tp,
    evaluate_tp,
    valid_tp_sizes,
)

BF16 = BUILTIN_PROFILES["mistralai/Magistral-Small-2506"]
FP8 = BUILTIN_PROFILES["RedHatAI/Magistral-Small-2506-FP8"]
GPUS = {"H100-80GB": 80.0, "A100-40GB": 40.0, "L40S-48GB": 48.0, "L4-24GB": 24.0}


def request(
    profile: ModelProfile,
    gpu_gib: float,
    *,
    gpus_per_node: int = 8,
    max_model_len: int = 40960,
    kv: str = "auto",
    util: float = 0.9,
    min_seqs: int = 1,
    overhead: float = 2.0,
    tp: int | None = None,
) -> SizingRequest:
    return SizingRequest(
        profile=profile,
        gpu_product="GPU",
        gpu_memory_gib=gpu_gib,
        gpus_per_node=gpus_per_node,
        max_model_len=max_model_len,
        kv_cache_dtype=kv,
        gpu_memory_utilization=util,
        min_full_length_sequences=min_seqs,
        per_gpu_overhead_gib=overhead,
        requested_tp=tp,
    )


# Hand computation (bf16, 47.1 GB weights; per GPU usable = GiB x 0.9, overhead 2 GiB):
#   H100-80:  72.0 GiB - 47.1 GB (43.9 GiB) - 2 = 26.1 GiB KV  -> TP 1
#   A100-40:  36.0 GiB < 43.9 GiB weights at TP 1; TP 2: 36.0 - 21.9 - 2 = 12.1 GiB -> TP 2
#   L40S-48:  43.2 GiB < 43.9 GiB at TP 1; TP 2: 43.2 - 21.9 - 2 = 19.3 GiB            -> TP 2
#   L4-24:    TP 2: 21.6 - 21.9 < 0; TP 4: 21.6 - 11.0 - 2 = 8.6 GiB                     -> TP 4
# FP8 checkpoint (24.9 GB = 23.2 GiB weights):
#   H100: TP 1 (46.8 GiB KV); A100-40: 36.0 - 23.2 - 2 = 10.8 GiB = 1.73 sequences -> TP 1
#   L40S: 43.2 - 23.2 - 2 = 18.0 GiB -> TP 1; L4: TP 1 negative, TP 2: 21.6-11.6-2 = 8.0 -> TP 2
# One 40960-token sequence of bf16 KV is 160 KiB x 40960 = 6.25 GiB (split across TP GPUs).
@pytest.mark.parametrize(
    ("profile", "gpu", "expected_tp"),
    [
        (BF16, "H100-80GB", 1),
        (BF16, "A100-40GB", 2),
        (BF16, "L40S-48GB", 2),
        (BF16, "L4-24GB", 4),
        (FP8, "H100-80GB", 1),
        (FP8, "A100-40GB", 1),
        (FP8, "L40S-48GB", 1),
        (FP8, "L4-24GB", 2),
    ],
)
def test_smallest_fitting_tp(profile: ModelProfile, gpu: str, expected_tp: int) -> None:
    result = choose_tp(request(profile, GPUS[gpu]))
    assert result.tp == expected_tp
    assert result.chosen is not None
    assert result.chosen.full_length_sequences >= 1


def test_kv_numbers_for_h100_bf16_match_hand_computation() -> None:
    ev = evaluate_tp(request(BF16, 80.0), 1)
    assert ev.kv_bytes_per_token_per_gpu == 2 * 40 * 8 * 128 * 2 == 160 * 1024
    expected_budget = 80 * GIB * 0.9 - 47.1e9 - 2 * GIB
    assert ev.kv_budget_bytes_per_gpu == pytest.approx(expected_budget)
    assert ev.kv_cache_tokens == (int(expected_budget // (160 * 1024 * 16))) * 16
    assert ev.full_length_sequences == pytest.approx(4.18, abs=0.01)


def test_fp8_kv_cache_doubles_tokens() -> None:
    bf16_kv = evaluate_tp(request(BF16, 80.0), 1)
    fp8_kv = evaluate_tp(request(BF16, 80.0, kv="fp8"), 1)
    assert fp8_kv.kv_bytes_per_token_per_gpu * 2 == bf16_kv.kv_bytes_per_token_per_gpu
    assert fp8_kv.kv_cache_tokens == pytest.approx(2 * bf16_kv.kv_cache_tokens, abs=16)


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    # 8 KV heads: at TP 8 each GPU holds one; a model with 4 KV heads at TP 8 still holds 1.
    few_kv = ModelProfile(**{**BF16.__dict__, "kv_heads": 4})
    assert evaluate_tp(request(few_kv, 80.0), 8).kv_bytes_per_token_per_gpu == 2 * 40 * 128 * 2


def test_more_required_sequences_need_more_gpus() -> None:
    assert choose_tp(request(BF16, 80.0, min_seqs=4)).tp == 1
    assert choose_tp(request(BF16, 80.0, min_seqs=5)).tp == 2


def test_nothing_fits_explains_with_numbers() -> None:
    result = choose_tp(request(BF16, 16.0, gpus_per_node=2))
    assert result.tp is None
    assert "47.1 GB" in result.message
    assert "16 GiB, 2 per node" in result.message
    assert "6.25 GiB" in result.message  # KV need for one 40960-token sequence
    assert "TP=1" in result.message
    assert "TP=2" in result.message


def test_requested_tp_beyond_node_is_refused_with_reason() -> None:
    result = choose_tp(request(BF16, 80.0, gpus_per_node=4, tp=8))
    assert result.tp is None
    assert "tensorParallelSize 8" in result.message
    assert "1, 2, 4" in result.message


def test_requested_tp_that_does_not_fit() -> None:
    result = choose_tp(request(BF16, 24.0, tp=2))
    assert result.tp is None
    assert "exceed the usable" in result.message


def test_requested_tp_larger_than_needed_is_honoured() -> None:
    assert choose_tp(request(BF16, 80.0, tp=4)).tp == 4


def test_valid_tp_sizes_divide_heads_and_fit_node() -> None:
    assert valid_tp_sizes(attention_heads=32, gpus_per_node=8) == (1, 2, 4, 8)
    assert valid_tp_sizes(attention_heads=32, gpus_per_node=2) == (1, 2)
    assert valid_tp_sizes(attention_heads=12, gpus_per_node=8) == (1, 2, 4)


sizing_requests = st.builds(
    request,
    st.sampled_from([BF16, FP8]),
    st.floats(min_value=8, max_value=192),
    gpus_per_node=st.sampled_from([1, 2, 4, 8]),
    max_model_len=st.integers(min_value=1024, max_value=131072),
    kv=st.sampled_from(["auto", "fp8"]),
    util=st.floats(min_value=0.5, max_value=0.95),
    min_seqs=st.integers(min_value=1, max_value=8),
    overhead=st.floats(min_value=0, max_value=6),
)


@settings(max_examples=300)
@given(sizing_requests)
def test_chosen_tp_fits_and_no_smaller_valid_tp_does(req: SizingRequest) -> None:
    result = choose_tp(req)
    valid = valid_tp_sizes(
        attention_heads=req.profile.attention_heads, gpus_per_node=req.gpus_per_node
    )
    if result.tp is None:
        assert all(not evaluate_tp(req, tp).fits for tp in valid)
        assert result.message
        return
    chosen = evaluate_tp(req, result.tp)
    assert chosen.fits
    assert chosen.kv_budget_bytes_per_gpu > 0
    assert chosen.kv_cache_tokens >= req.max_model_len * req.min_full_length_sequences
    for smaller in (tp for tp in valid if tp < result.tp):
        assert not evaluate_tp(req, smaller).fits


@settings(max_examples=200)
@given(sizing_requests)
def test_more_gpu_memory_never_needs_more_gpus(req: SizingRequest) -> None:
    bigger = SizingRequest(**{**req.__dict__, "gpu_memory_gib": req.gpu_memory_gib * 1.5})
    small, large = choose_tp(req).tp, choose_tp(bigger).tp
    if small is not None:
        assert large is not None
        assert large <= small


@settings(max_examples=200)
@given(sizing_requests, st.sampled_from([1, 2, 4, 8]))
def test_kv_tokens_are_whole_blocks(req: SizingRequest, tp: int) -> None:
    ev = evaluate_tp(req, tp)
    assert ev.kv_cache_tokens % 16 == 0
    assert ev.kv_cache_tokens >= 0
    assert math.isclose(ev.full_length_sequences, ev.kv_cache_tokens / req.max_model_len)


# --------------------------------------------------------------------------------------
# Profiles: precision and parametersBillions


def model(repo: str, **fields: object) -> ModelSpec:
    return ModelSpec.model_validate({"repo": repo, **fields})


ARCH = {"layers": 40, "attentionHeads": 32, "kvHeads": 8, "headDim": 128}


# (weights on the GPUs, checkpoint downloaded and read), in GB
@pytest.mark.parametrize(
    ("repo", "precision", "weights", "served", "quantization"),
    [
        ("mistralai/Magistral-Small-2506", None, (47.1, 47.1), "bf16", None),
        ("mistralai/Magistral-Small-2506", "bf16", (47.1, 47.1), "bf16", None),
        ("mistralai/Magistral-Small-2506", "fp8", (24.9, 47.1), "fp8", "fp8"),
        ("mistralai/Magistral-Small-2507", "fp8", (24.9, 47.1), "fp8", "fp8"),
        # 2509's vision encoder stays bf16 when the text stack is quantized
        ("mistralai/Magistral-Small-2509", None, (47.9, 47.9), "bf16", None),
        ("mistralai/Magistral-Small-2509", "fp8", (25.7, 47.9), "fp8", "fp8"),
        ("RedHatAI/Magistral-Small-2506-FP8", None, (24.9, 24.9), "fp8", None),
        ("RedHatAI/Magistral-Small-2506-FP8", "fp8", (24.9, 24.9), "fp8", None),
    ],
)
def test_served_precision_and_weights(
    repo: str,
    precision: str | None,
    weights: tuple[float, float],
    served: str,
    quantization: str | None,
) -> None:
    fields = {"precision": precision} if precision else {}
    profile = resolve_profile(model(repo, **fields))
    assert profile.weight_bytes == pytest.approx(weights[0] * GB)
    assert profile.stored_bytes == pytest.approx(weights[1] * GB)
    assert profile.precision == served
    assert profile.quantization == quantization


def test_an_fp8_checkpoint_cannot_be_served_in_bf16() -> None:
    for fields in ({}, {"profile": {"parametersBillions": 23.57, **ARCH}}):
        with pytest.raises(PrecisionError, match=r"^spec\.model\.precision bf16: "):
            resolve_profile(model("RedHatAI/Magistral-Small-2506-FP8", precision="bf16", **fields))


def test_every_bf16_builtin_has_online_fp8_weights() -> None:
    bf16 = {repo for repo, p in BUILTIN_PROFILES.items() if p.precision == "bf16"}
    assert set(ONLINE_FP8_WEIGHTS) == bf16


# spec.model.profile without weightGigabytes: parametersBillions x bytes per parameter of the
# served precision; with it, weightGigabytes as given. A built-in repo keeps its checkpoint's
# precision (so fp8 on 2506 is quantized while loading); another repo's precision is its own.
@pytest.mark.parametrize(
    ("repo", "precision", "params_b", "weight_gb", "expected_gb", "quantization"),
    [
        ("acme/model", None, 10.0, None, 20.0, None),
        ("acme/model", "bf16", 10.0, None, 20.0, None),
        ("acme/model", "fp8", 10.0, None, 10.0, None),
        ("acme/model", "fp8", 10.0, 12.5, 12.5, None),
        ("acme/model", None, 7.5, 16.0, 16.0, None),
        ("mistralai/Magistral-Small-2506", None, 23.57, None, 47.14, None),
        ("mistralai/Magistral-Small-2506", "fp8", 23.57, None, 23.57, "fp8"),
        ("RedHatAI/Magistral-Small-2506-FP8", None, 23.57, None, 23.57, None),
    ],
)
def test_profile_override_weights_from_parameters(
    repo: str,
    precision: str | None,
    *,
    params_b: float,
    weight_gb: float | None,
    expected_gb: float,
    quantization: str | None,
) -> None:
    override: dict[str, object] = {"parametersBillions": params_b, **ARCH}
    if weight_gb is not None:
        override["weightGigabytes"] = weight_gb
    fields: dict[str, object] = {"profile": override}
    if precision:
        fields["precision"] = precision
    profile = resolve_profile(model(repo, **fields))
    assert profile.weight_bytes == pytest.approx(expected_gb * GB)
    assert profile.quantization == quantization
    assert profile.parameters_billions == params_b
    # quantized while loading: the bf16 checkpoint is what is downloaded and read
    stored = params_b * 2 if quantization else expected_gb
    assert profile.stored_bytes == pytest.approx(stored * GB)


# --------------------------------------------------------------------------------------
# Compute capability


@pytest.mark.parametrize(
    ("product", "capability"),
    [
        ("NVIDIA-H100-80GB-HBM3", (9, 0)),
        ("NVIDIA-H100-PCIe", (9, 0)),
        ("NVIDIA-H200", (9, 0)),
        ("NVIDIA-H20", (9, 0)),
        ("NVIDIA-GH200-480GB", (9, 0)),
        ("NVIDIA-L40S", (8, 9)),
        ("NVIDIA-L40", (8, 9)),
        ("NVIDIA-L4", (8, 9)),
        ("NVIDIA-GeForce-RTX-4090", (8, 9)),
        ("NVIDIA-RTX-6000-Ada-Generation", (8, 9)),
        ("NVIDIA-A100-SXM4-40GB", (8, 0)),
        ("NVIDIA-A100-80GB-PCIe-MIG-1g.10gb", (8, 0)),
        ("NVIDIA-A30", (8, 0)),
        ("NVIDIA-A10", (8, 6)),
        ("NVIDIA-A10G", (8, 6)),
        ("NVIDIA-A40", (8, 6)),
        ("NVIDIA-GeForce-RTX-3090", (8, 6)),
        ("Tesla-T4", (7, 5)),
        ("Tesla-V100-SXM2-16GB", (7, 0)),
        ("NVIDIA-B200", (10, 0)),
        ("NVIDIA-GB200", (10, 0)),
        ("NVIDIA-H100-80GB-HBM3-SHARED", (9, 0)),
        # not to be confused
        ("Quadro-RTX-6000", None),  # Turing, not the Ada RTX 6000
        ("NVIDIA-RTX-A6000", None),
        ("NVIDIA-A1000", None),
        ("ACME-Tensor-1", None),
        ("GPU", None),
    ],
)
def test_capability_of_product(product: str, capability: tuple[int, int] | None) -> None:
    assert capability_of_product(product) == capability


def test_configured_capability_wins_over_the_product() -> None:
    assert pool_capability("8.6", "NVIDIA-H100-80GB-HBM3") == (8, 6)
    assert pool_capability(None, "NVIDIA-H100-80GB-HBM3") == (9, 0)
    assert pool_capability(None, "ACME-Tensor-1") is None
    assert pool_capability("10.0", "ACME-Tensor-1") == (10, 0)
    with pytest.raises(ValueError, match=r"major\.minor"):
        parse_capability("8")


POOL = {"name": "p", "tier": "spot", "gpuProduct": "X", "gpuMemoryGiB": 48, "gpusPerNode": 8}


@pytest.mark.parametrize("value", ["8.9", "9.0", "10.0", "12.1", "7.5"])
def test_pool_accepts_a_capability_string(value: str) -> None:
    config = parse_operator_config(
        {"defaultImage": "i", "pools": [{**POOL, "computeCapability": value}]}
    )
    assert config.pools[0].compute_capability == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (8.9, "quote 8.9 in YAML"),
        (9, "quote 9 in YAML"),
        ("8", "should match pattern"),
        ("8.10", "should match pattern"),
        ("08.9", "should match pattern"),
        ("sm_89", "should match pattern"),
    ],
)
def test_pool_refuses_a_bad_capability_naming_the_field(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_operator_config(
            {"defaultImage": "i", "pools": [{**POOL, "computeCapability": value}]}
        )
    assert "pools[0].computeCapability" in str(exc.value)
    assert fragment in str(exc.value)


def with_capability(req: SizingRequest, capability: tuple[int, int] | None) -> SizingRequest:
    return replace(req, gpu_product="Tesla-X", compute_capability=capability)


@pytest.mark.parametrize(
    ("profile", "kv", "capability", "fields"),
    [
        (FP8, "auto", (7, 0), ["spec.model.precision fp8"]),
        (FP8, "fp8", (7, 0), ["spec.model.precision fp8", "spec.runtime.kvCacheDtype fp8"]),
        (FP8, "fp8", (7, 5), ["spec.runtime.kvCacheDtype fp8"]),
        (BF16, "fp8_e5m2", (7, 5), ["spec.runtime.kvCacheDtype fp8_e5m2"]),
        (BF16, "fp8_e4m3", (7, 9), ["spec.runtime.kvCacheDtype fp8_e4m3"]),
        (FP8, "auto", (7, 5), []),
        (BF16, "fp8", (8, 0), []),
        (FP8, "fp8", (8, 6), []),
        (BF16, "auto", (7, 0), []),  # bf16 weights and KV: no fp8 requirement
        (FP8, "fp8", None, []),  # unknown: not checked
    ],
)
def test_fp8_needs_compute_capability(
    profile: ModelProfile, kv: str, capability: tuple[int, int] | None, fields: list[str]
) -> None:
    result = choose_tp(with_capability(request(profile, 80.0, kv=kv), capability))
    assert [u.split(" needs")[0].removesuffix(" (fp8 weights)") for u in result.unsupported] == (
        fields
    )
    assert len(result.unsupported) == len(fields)
    assert result.fits is not bool(fields)
    if fields:
        assert capability is not None
        assert f"Tesla-X has {capability[0]}.{capability[1]}" in result.message
        assert result.evaluations == ()


def test_unknown_capability_is_said_when_fp8_goes_unchecked() -> None:
    fp8 = choose_tp(with_capability(request(FP8, 80.0), None))
    assert fp8.fits
    assert "compute capability of Tesla-X unknown, not checked" in fp8.message
    assert "spec.model.precision fp8 (fp8 weights) needs >= 7.5" in fp8.message
    bf16 = choose_tp(with_capability(request(BF16, 80.0), None))
    assert "unknown" not in bf16.message
    known = choose_tp(with_capability(request(FP8, 80.0), (9, 0)))
    assert "unknown" not in known.message
    assert "compute capability" not in known.message  # the usual message when fp8 runs
