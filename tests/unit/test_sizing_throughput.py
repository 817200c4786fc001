"""What one replica holds (sizing/throughput.py): GPU table, vLLM's default sequences, prefill."""

from __future__ import annotations

import pytest

from magistral_operator.api.config import GPUPool
from magistral_operator.plan import plan_endpoint, replica_capacity
from magistral_operator.sizing.throughput import (
    UNKNOWN_GPU_TFLOPS,
    default_max_num_seqs,
    dense_bf16_tflops,
    prefill_tokens_per_second,
)
from tests.unit.conftest import endpoint_from_spec


def pool(product: str, memory: float) -> GPUPool:
    return GPUPool.model_validate(
        {
            "name": "p",
            "tier": "on-demand",
            "gpuProduct": product,
            "gpuMemoryGiB": memory,
            "gpusPerNode": 8,
        }
    )


@pytest.mark.parametrize(
    ("product", "tflops"),
    [
        ("NVIDIA-H100-80GB-HBM3", 989.0),
        ("NVIDIA-H100-PCIe", 756.0),
        ("NVIDIA-A100-SXM4-80GB", 312.0),
        ("NVIDIA-A10", 125.0),  # whole tokens: A10 is not A100
        ("NVIDIA-A10G", 70.0),
        ("NVIDIA-L4", 121.0),
        ("NVIDIA-L40S", 362.0),
        ("Some-Future-GPU", UNKNOWN_GPU_TFLOPS),
    ],
)
def test_gpu_table(product: str, tflops: float) -> None:
    assert dense_bf16_tflops(product) == tflops


@pytest.mark.parametrize(
    ("product", "memory", "seqs"),
    [
        ("NVIDIA-H100-80GB-HBM3", 80, 1024),
        ("NVIDIA-A100-SXM4-80GB", 80, 256),  # vLLM keeps A100 on the small defaults
        ("NVIDIA-L40S", 48, 256),
        ("NVIDIA-B200", 180, 1024),
    ],
)
def test_vllm_default_sequences(product: str, memory: float, seqs: int) -> None:
    assert default_max_num_seqs(pool(product, memory)) == seqs


def test_prefill_scales_with_tp_and_fp8() -> None:
    h100 = pool("NVIDIA-H100-80GB-HBM3", 80)
    one = prefill_tokens_per_second(pool=h100, tp=1, parameters_billions=23.57, fp8=False)
    assert one == pytest.approx(989e12 * 0.4 / (2 * 23.57e9))
    assert prefill_tokens_per_second(
        pool=h100, tp=2, parameters_billions=23.57, fp8=True
    ) == pytest.approx(4 * one)


def test_replica_capacity_from_the_plan(operator_config) -> None:  # type: ignore[no-untyped-def]
    endpoint = endpoint_from_spec(
        {
            "runtime": {"maxNumSeqs": 64},
            "scaling": {"prefillTokensPerSecond": 5000},
            "auth": {"disabled": True},
        }
    )
    plan = plan_endpoint(endpoint, operator_config)
    capacity = replica_capacity(endpoint, plan)
    assert capacity is not None
    assert (capacity.max_sequences, capacity.prefill_tokens_per_second) == (64, 5000)
    assert capacity.kv_tokens == min(
        p.sizing.chosen.kv_cache_tokens for p in plan.usable_pools if p.sizing.chosen
    )
