"""The vLLM argument list built from the runtime config."""

from __future__ import annotations

import json

import pytest

from magistral_runtime.config import (
    RuntimeConfig,
    RuntimeConfigError,
    dump_runtime_config,
    parse_runtime_config,
)
from magistral_runtime.launcher import build_vllm_args


def config(**overrides: object) -> RuntimeConfig:
    base: dict[str, object] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-small",
        "tensor_parallel_size": 2,
        "max_model_len": 40960,
        "gpu_memory_utilization": 0.9,
    }
    return RuntimeConfig.model_validate({**base, **overrides})


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_model_card_flags_are_always_there() -> None:
    args = build_vllm_args(config())
    assert args[:3] == ["vllm", "serve", "mistralai/Magistral-Small-2506"]
    for flag in ("--tokenizer-mode", "--config-format", "--load-format", "--tool-call-parser"):
        assert flag_value(args, flag) == "mistral"
    assert "--enable-auto-tool-choice" in args
    assert flag_value(args, "--tensor-parallel-size") == "2"
    assert flag_value(args, "--max-model-len") == "40960"


def test_sampling_defaults_but_no_server_wide_cap() -> None:
    args = build_vllm_args(config())
    generation = json.loads(flag_value(args, "--override-generation-config"))
    assert generation == {"temperature": 0.7, "top_p": 0.95}


def test_think_token_models_use_vllms_reasoning_parser() -> None:
    assert "--reasoning-parser" not in build_vllm_args(config())
    args = build_vllm_args(config(reasoning_format="think-tokens"))
    assert flag_value(args, "--reasoning-parser") == "mistral"


def test_optional_flags() -> None:
    args = build_vllm_args(
        config(
            kv_cache_dtype="fp8",
            max_num_seqs=64,
            revision="abc",
            tool_calling=False,
            extra_args=["--enable-prefix-caching"],
        )
    )
    assert flag_value(args, "--kv-cache-dtype") == "fp8"
    assert flag_value(args, "--max-num-seqs") == "64"
    assert flag_value(args, "--revision") == "abc"
    assert "--tool-call-parser" not in args
    assert args[-1] == "--enable-prefix-caching"
    assert "--api-key" not in args  # the key comes from VLLM_API_KEY, never argv


def test_config_round_trip_and_errors() -> None:
    cfg = config()
    assert parse_runtime_config(dump_runtime_config(cfg), source="x") == cfg
    with pytest.raises(RuntimeConfigError, match="tensor_parallel_size"):
        parse_runtime_config(
            json.dumps({**cfg.model_dump(), "tensor_parallel_size": 3}), source="x"
        )
    with pytest.raises(RuntimeConfigError, match="not valid JSON"):
        parse_runtime_config("{", source="x")


def test_online_fp8_quantization_flag() -> None:
    assert "--quantization" not in build_vllm_args(config())
    args = build_vllm_args(config(quantization="fp8"))
    assert flag_value(args, "--quantization") == "fp8_per_tensor"
    assert args.count("--quantization") == 1
    with pytest.raises(RuntimeConfigError, match="quantization"):
        parse_runtime_config(
            json.dumps({**config().model_dump(), "quantization": "int8"}), source="x"
        )


def test_quantization_is_written_only_when_set() -> None:
    # Configs without it keep their canonical JSON (and the pod-template hash) byte for byte.
    plain = dump_runtime_config(config())
    assert '"quantization"' not in plain
    quantized = dump_runtime_config(config(quantization="fp8"))
    assert json.loads(quantized)["quantization"] == "fp8"
    assert parse_runtime_config(quantized, source="x") == config(quantization="fp8")
    assert parse_runtime_config(plain, source="x").quantization is None


@pytest.mark.parametrize("utilization", [0.9, 0.95, 0.5, 0.9123456789, 0.1 + 0.2, 0.98])
def test_gpu_memory_utilization_reaches_vllm_exactly(utilization: float) -> None:
    args = build_vllm_args(config(gpu_memory_utilization=utilization))
    assert float(flag_value(args, "--gpu-memory-utilization")) == utilization
    if utilization == 0.9:
        assert flag_value(args, "--gpu-memory-utilization") == "0.9"
