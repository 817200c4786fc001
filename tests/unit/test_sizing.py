"""GPU sizing: hand-computed tables and properties of the TP choice."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.sizing.profiles import BUILTIN_PROFILES, GIB, ModelProfile
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
