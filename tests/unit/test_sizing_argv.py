"""Sizing and argv must agree: what the operator sized is what the pod's vLLM is told to load.

For generated endpoints (every built-in checkpoint, every precision, KV cache dtype, context,
memory utilisation, sequence cap, TP, and pools from the example config plus a few older or
unknown GPUs), every input of the sizing decision is read back from the rendered pod's vLLM
argv (the `magistral.dev/vllm-args` annotation, and the runtime config the pod execs from), and
the weights sizing counted are recomputed from that argv alone: the checkpoint it names and
whether it is quantized while loading.

The capability minimums and the online-quantization method are checked against vLLM 0.33.0's
own source at the end.
"""

from __future__ import annotations

import ast
import math
import re
import shlex
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.config import OperatorConfig, parse_operator_config
from magistral_operator.api.labels import ARGS_ANNOTATION, POOL_LABEL
from magistral_operator.render import render_endpoint
from magistral_operator.render.metadata import is_engine_deployment
from magistral_operator.sizing.capability import FP8_KV_CACHE_MIN, FP8_WEIGHTS_MIN
from magistral_operator.sizing.profiles import BUILTIN_PROFILES, GB, GIB
from magistral_operator.status.endpoint_conditions import problem_reason
from magistral_runtime import VLLM_VERSION
from magistral_runtime.config import parse_runtime_config
from magistral_runtime.launcher import QUANTIZATION_METHODS, build_vllm_args

from .conftest import EXAMPLES, endpoint_from_spec
from .runtime.vllm_cli import SourceUnavailableError, VllmSource, vllm_source

# Pools besides the example config's (H100 9.0, L40S 8.9): an Ampere GPU, two that fp8 needs
# more of, and an unknown product with and without computeCapability.
EXTRA_POOLS: list[dict[str, Any]] = [
    {"name": "ondemand-a100", "gpuProduct": "NVIDIA-A100-SXM4-40GB", "gpuMemoryGiB": 40},
    {"name": "spot-t4", "gpuProduct": "Tesla-T4", "gpuMemoryGiB": 16},
    {"name": "spot-v100", "gpuProduct": "Tesla-V100-SXM2-32GB", "gpuMemoryGiB": 32},
    {"name": "spot-acme", "gpuProduct": "ACME-Tensor-1", "gpuMemoryGiB": 96, "gpusPerNode": 4},
    {"name": "spot-acme-old", "gpuProduct": "ACME-Tensor-1", "gpuMemoryGiB": 96},
]
EXTRA_POOLS[-1]["computeCapability"] = "7.0"
# The test's own knowledge of the pools' GPUs (None: unknown).
CAPABILITY: dict[str, tuple[int, int] | None] = {
    "reserved-h100": (9, 0),
    "ondemand-h100": (9, 0),
    "spot-l40s": (8, 9),
    "ondemand-a100": (8, 0),
    "spot-t4": (7, 5),
    "spot-v100": (7, 0),
    "spot-acme": None,
    "spot-acme-old": (7, 0),
}


def _config() -> OperatorConfig:
    data = yaml.safe_load((EXAMPLES / "operator-config.yaml").read_text())
    data["pools"] += [{"tier": "spot", "gpusPerNode": 8, **p} for p in EXTRA_POOLS]
    return parse_operator_config(data)


CONFIG = _config()
assert sorted(CAPABILITY) == sorted(p.name for p in CONFIG.pools)

FP8_REPO = "RedHatAI/Magistral-Small-2506-FP8"
# What each checkpoint stores, from its model card and files (not from the sizing profiles).
STORED = {repo: "fp8" if repo == FP8_REPO else "bf16" for repo in BUILTIN_PROFILES}

# The Mistral-Small-3.1 text stack, from params.json: linear layers are what quantization
# touches; the embeddings and the LM head stay bf16.
HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 5120, 40, 32, 8, 128, 32768, 131072
LINEAR_PARAMETERS = LAYERS * (
    HIDDEN * (HEADS + 2 * KV_HEADS) * HEAD_DIM + HEADS * HEAD_DIM * HIDDEN + 3 * HIDDEN * FFN
)
EMBEDDING_PARAMETERS = 2 * VOCAB * HIDDEN
# 2509's vision encoder (about 0.4 B parameters), which vLLM keeps in bf16.
VISION_BYTES = {"mistralai/Magistral-Small-2509": 0.8 * GB}
# The published sizes (47.1 GB, 24.9 GB) are rounded to 0.1 GB.
ROUNDING = 0.05 * GB


def flag(argv: list[str], name: str) -> str | None:
    """The value of `name` in argv (None when absent); a flag given twice fails."""
    at = [i for i, arg in enumerate(argv) if arg == name]
    assert len(at) <= 1, f"{name} given {len(at)} times"
    return argv[at[0] + 1] if at else None


def checkpoint_bytes(repo: str, *, fp8_linear: bool) -> float:
    return (
        LINEAR_PARAMETERS * (1 if fp8_linear else 2)
        + EMBEDDING_PARAMETERS * 2
        + VISION_BYTES.get(repo, 0.0)
    )


def loaded_weight_bytes(argv: list[str]) -> float:
    """What `vllm serve` with this argv holds in GPU memory: from the argv only."""
    repo = argv[2]
    quantization = flag(argv, "--quantization")
    assert quantization in (None, "fp8_per_tensor"), quantization
    fp8_linear = STORED[repo] == "fp8" or quantization == "fp8_per_tensor"
    return checkpoint_bytes(repo, fp8_linear=fp8_linear)


def read_bytes(argv: list[str]) -> float:
    """What `vllm serve` with this argv downloads and reads: the checkpoint as stored."""
    return checkpoint_bytes(argv[2], fp8_linear=STORED[argv[2]] == "fp8")


def gpu_runs(pool: str, *, fp8_weights: bool, kv_cache_dtype: str) -> bool:
    capability = CAPABILITY[pool]
    if capability is None:
        return True
    if fp8_weights and capability < (7, 5):
        return False
    return not (kv_cache_dtype.startswith("fp8") and capability < (8, 0))


@st.composite
def endpoint_specs(draw: st.DrawFn) -> dict[str, Any]:
    model: dict[str, Any] = {"repo": draw(st.sampled_from(sorted(BUILTIN_PROFILES)))}
    precision = draw(st.sampled_from([None, "bf16", "fp8"]))
    if precision is not None:
        model["precision"] = precision
    runtime: dict[str, Any] = {
        "maxModelLen": draw(st.integers(min_value=1024, max_value=131072)),
        "gpuMemoryUtilization": draw(st.floats(min_value=0.1, max_value=0.98, exclude_min=True)),
        "kvCacheDtype": draw(st.sampled_from(["auto", "fp8", "fp8_e4m3", "fp8_e5m2"])),
    }
    max_num_seqs = draw(st.none() | st.integers(min_value=1, max_value=4096))
    if max_num_seqs is not None:
        runtime["maxNumSeqs"] = max_num_seqs
    pools = draw(st.lists(st.sampled_from(sorted(CAPABILITY)), min_size=1, max_size=3, unique=True))
    gpu = {
        "pools": pools,
        "tensorParallelSize": draw(st.sampled_from(["auto", 1, 2, 4, 8])),
        "minFullLengthSequences": draw(st.integers(min_value=1, max_value=4)),
    }
    return {"model": model, "runtime": runtime, "gpu": gpu, "auth": {"disabled": True}}


def check_agreement(spec: dict[str, Any]) -> None:
    endpoint = endpoint_from_spec(spec)
    rendered = render_endpoint(endpoint, CONFIG)
    plan = rendered.plan
    repo = spec["model"]["repo"]
    stored = STORED[repo]
    served = spec["model"].get("precision") or stored
    runtime = spec["runtime"]
    kv = runtime["kvCacheDtype"]

    if stored == "fp8" and served == "bf16":
        assert not plan.ok
        assert rendered.objects == []
        (problem,) = plan.problems
        assert problem.startswith("spec.model.precision bf16:"), problem
        return

    assert plan.profile is not None
    counted = plan.profile.weight_bytes
    for p in plan.pools:
        runs = gpu_runs(p.pool.name, fp8_weights=served == "fp8", kv_cache_dtype=kv)
        assert bool(p.sizing.unsupported) is not runs, (p.pool.name, p.sizing.message)
        if not runs:
            assert not p.sizing.fits
            capability = CAPABILITY[p.pool.name]
            assert capability is not None
            assert f"has {capability[0]}.{capability[1]}" in p.sizing.message
            named = ("spec.model.precision", "spec.runtime.kvCacheDtype")
            assert any(field in p.sizing.message for field in named), p.sizing.message
        elif CAPABILITY[p.pool.name] is None and (served == "fp8" or kv != "auto"):
            assert "unknown" in p.sizing.message

    deployments = {
        d["metadata"]["labels"][POOL_LABEL]: d for d in rendered.objects if is_engine_deployment(d)
    }
    assert set(deployments) == {p.pool.name for p in plan.usable_pools}
    if not plan.ok:
        assert rendered.objects == []
        return
    (config_map,) = [o for o in rendered.objects if o["kind"] == "ConfigMap"]
    for p in plan.usable_pools:
        tp, chosen = p.sizing.tp, p.sizing.chosen
        assert tp is not None
        assert chosen is not None
        template = deployments[p.pool.name]["spec"]["template"]
        argv = shlex.split(template["metadata"]["annotations"][ARGS_ANNOTATION])
        # The pod execs from its runtime config: the same argv.
        executed = parse_runtime_config(
            config_map["data"][f"runtime-{p.pool.name}.json"], source=p.pool.name
        )
        assert build_vllm_args(executed) == argv

        assert argv[:3] == ["vllm", "serve", repo]
        (container,) = template["spec"]["containers"]
        resources = container["resources"]
        assert flag(argv, "--tensor-parallel-size") == str(tp)
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert resources["limits"]["nvidia.com/gpu"] == str(tp)
        if spec["gpu"]["tensorParallelSize"] != "auto":
            assert tp == spec["gpu"]["tensorParallelSize"]

        max_model_len = flag(argv, "--max-model-len")
        utilization = flag(argv, "--gpu-memory-utilization")
        assert max_model_len is not None
        assert utilization is not None
        assert int(max_model_len) == runtime["maxModelLen"]
        assert float(utilization) == runtime["gpuMemoryUtilization"]
        assert flag(argv, "--kv-cache-dtype") == (None if kv == "auto" else kv)
        num_seqs = flag(argv, "--max-num-seqs")
        assert (None if num_seqs is None else int(num_seqs)) == runtime.get("maxNumSeqs")
        quantized = flag(argv, "--quantization") is not None
        assert quantized == (served == "fp8" and stored == "bf16")

        # The sizing arithmetic, redone from the argv's numbers.
        assert chosen.usable_bytes_per_gpu == p.pool.gpu_memory_gib * GIB * float(utilization)
        kv_bytes = 1 if flag(argv, "--kv-cache-dtype") else 2
        per_gpu_heads = max(1, math.ceil(KV_HEADS / tp))
        assert chosen.kv_bytes_per_token_per_gpu == 2 * LAYERS * per_gpu_heads * HEAD_DIM * kv_bytes
        assert chosen.full_length_sequences == chosen.kv_cache_tokens / int(max_model_len)
        assert chosen.weight_bytes_per_gpu * tp == pytest.approx(counted)
        assert counted == pytest.approx(loaded_weight_bytes(argv), abs=ROUNDING)
        assert f"{counted / tp / GB:.1f} GB weights" in p.sizing.message
        # The start-up budget reads and downloads the checkpoint as stored.
        assert rendered.budget is not None
        budgeted = re.search(r"download of ([0-9.]+) GB", rendered.budget.explanation)
        assert budgeted is not None
        assert float(budgeted.group(1)) * GB == pytest.approx(read_bytes(argv), abs=2 * ROUNDING)


@settings(max_examples=300, deadline=None)
@given(endpoint_specs())
def test_sizing_and_argv_agree(spec: dict[str, Any]) -> None:
    check_agreement(spec)


BASE: dict[str, Any] = {
    "runtime": {"maxModelLen": 40960, "gpuMemoryUtilization": 0.9, "kvCacheDtype": "auto"},
    "gpu": {"tensorParallelSize": "auto", "minFullLengthSequences": 1},
    "auth": {"disabled": True},
}


def spec_of(
    repo: str, pools: list[str], *, precision: str | None = None, kv: str = "auto"
) -> dict[str, Any]:
    model = {"repo": repo, **({"precision": precision} if precision else {})}
    return {
        **BASE,
        "model": model,
        "runtime": {**BASE["runtime"], "kvCacheDtype": kv},
        "gpu": {**BASE["gpu"], "pools": pools},
    }


# Each branch the property covers, named (they also run through check_agreement).
@pytest.mark.parametrize(
    ("repo", "precision", "kv", "pools"),
    [
        ("mistralai/Magistral-Small-2506", "fp8", "auto", ["spot-l40s"]),
        ("mistralai/Magistral-Small-2509", "fp8", "fp8", ["ondemand-a100"]),
        (FP8_REPO, None, "auto", ["spot-t4"]),
        (FP8_REPO, "bf16", "auto", ["spot-l40s"]),
        ("mistralai/Magistral-Small-2507", "fp8", "auto", ["spot-v100", "spot-l40s"]),
        ("mistralai/Magistral-Small-2507", None, "fp8_e5m2", ["spot-t4", "spot-acme"]),
        ("mistralai/Magistral-Small-2506", "fp8", "fp8", ["spot-acme-old"]),
        ("mistralai/Magistral-Small-2506", "bf16", "auto", ["spot-v100"]),
        ("mistralai/Magistral-Small-2506", "bf16", "auto", ["spot-acme"]),
        ("mistralai/Magistral-Small-2506", None, "auto", ["spot-l40s"]),
    ],
)
def test_named_cases_agree(repo: str, precision: str | None, kv: str, pools: list[str]) -> None:
    check_agreement(spec_of(repo, pools, precision=precision, kv=kv))


def test_a_bf16_checkpoint_served_in_fp8_is_quantized_while_loading() -> None:
    spec = spec_of("mistralai/Magistral-Small-2506", ["spot-l40s"], precision="fp8")
    rendered = render_endpoint(endpoint_from_spec(spec), CONFIG)
    (deployment,) = [o for o in rendered.objects if is_engine_deployment(o)]
    argv = shlex.split(deployment["spec"]["template"]["metadata"]["annotations"][ARGS_ANNOTATION])
    assert flag(argv, "--quantization") == "fp8_per_tensor"
    assert flag(argv, "--tensor-parallel-size") == "1"  # 24.9 GB on one 48 GiB L40S
    assert rendered.plan.profile is not None
    assert rendered.plan.profile.weight_bytes == 24.9 * GB


def test_no_pool_able_to_run_fp8_is_a_spec_problem_not_memory() -> None:
    spec = spec_of("mistralai/Magistral-Small-2506", ["spot-v100"], precision="fp8")
    plan = render_endpoint(endpoint_from_spec(spec), CONFIG).plan
    (problem,) = plan.problems
    assert problem_reason(plan) == "InvalidSpec"  # not InsufficientGPUMemory's memory remedies
    assert "spec.model.precision fp8" in problem
    assert "Tesla-V100-SXM2-32GB has 7.0" in problem
    # Next to a pool that runs fp8 (T4, 7.5) but is too small, memory is the story again.
    spec = spec_of("mistralai/Magistral-Small-2506", ["spot-v100", "spot-t4"], precision="fp8")
    spec["gpu"]["minFullLengthSequences"] = 1024
    plan = render_endpoint(endpoint_from_spec(spec), CONFIG).plan
    (problem,) = plan.problems
    assert problem_reason(plan) == "InsufficientGPUMemory"
    assert problem.startswith("the model fits on none of the endpoint's GPU pools: ")
    assert "pool spot-v100: spec.model.precision fp8" in problem
    assert "pool spot-t4: mistralai/Magistral-Small-2506 (fp8, quantized while loading" in problem


def test_an_fp8_checkpoint_served_in_bf16_is_refused_naming_the_field() -> None:
    plan = render_endpoint(endpoint_from_spec(spec_of(FP8_REPO, [], precision="bf16")), CONFIG).plan
    (problem,) = plan.problems
    assert problem_reason(plan) == "InvalidSpec"
    assert problem.startswith(f"spec.model.precision bf16: {FP8_REPO} is an fp8 checkpoint")


def test_compute_capability_does_not_restart_pods() -> None:
    endpoint = endpoint_from_spec(spec_of("mistralai/Magistral-Small-2506", ["spot-l40s"]))
    data = yaml.safe_load((EXAMPLES / "operator-config.yaml").read_text())
    before = render_endpoint(endpoint, parse_operator_config(data))
    for pool in data["pools"]:
        pool["computeCapability"] = "8.9"
    after = render_endpoint(endpoint, parse_operator_config(data))
    assert before.revision == after.revision
    assert before.objects == after.objects


# --------------------------------------------------------------------------------------
# The numbers, against vLLM 0.33.0's source


@pytest.fixture(scope="module")
def source() -> VllmSource:
    try:
        return VllmSource(vllm_source(VLLM_VERSION))
    except SourceUnavailableError as exc:
        pytest.fail(str(exc))


def _class(source: VllmSource, path: str, name: str) -> ast.ClassDef:
    module = source.module(path)
    found = next((n for n in module.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    assert found is not None, f"{name} not in {path}"
    return found


def _method(cls: ast.ClassDef, name: str) -> str:
    found = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert found is not None, f"{cls.name}.{name}"
    return ast.unparse(found)


def _min_capability(source: VllmSource, path: str, cls: str) -> int:
    body = _method(_class(source, path, cls), "get_min_capability")
    returns = [n for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Return)]
    (returned,) = returns
    assert isinstance(returned.value, ast.Constant), body
    value = returned.value.value
    assert isinstance(value, int)
    return value


def as_int(capability: tuple[int, int]) -> int:
    return capability[0] * 10 + capability[1]


def test_our_quantization_method_is_vllms_online_fp8(source: VllmSource) -> None:
    methods = source.text("model_executor/layers/quantization/__init__.py")
    shorthands = source.text("config/quantization.py")
    for method in QUANTIZATION_METHODS.values():
        assert f'"{method}",' in methods  # QuantizationMethods, the values vLLM accepts
        # an online shorthand: quantizes bf16 weights while loading, linear layers in fp8
        assert f'"{method}": QuantizationConfigArgs(\n        linear=QuantSpec(weight=kFp8' in (
            shorthands
        )
    assert QUANTIZATION_METHODS == {"fp8": "fp8_per_tensor"}


def test_online_fp8_leaves_embeddings_and_lm_head_in_bf16(source: VllmSource) -> None:
    online = source.text("model_executor/layers/quantization/online/base.py")
    # Only LinearBase (and MoE experts) are quantized ...
    assert "if issubclass(layer_cls, LinearBase):" in online
    assert "elif issubclass(layer_cls, RoutedExperts):" in online
    # ... and the LM head is an embedding, not a LinearBase.
    lm_head = _class(source, "model_executor/layers/vocab_parallel_embedding.py", "ParallelLMHead")
    assert [ast.unparse(b) for b in lm_head.bases] == ["VocabParallelEmbedding"]
    # The bf16 weights are materialised one layer at a time: the peak is the fp8 size.
    linear = _class(source, "model_executor/layers/quantization/online/fp8.py", "OnlineLinearBase")
    assert "uses_meta_device: bool = True" in ast.unparse(linear)


def test_2509s_vision_encoder_is_not_quantized(source: VllmSource) -> None:
    pixtral = _class(source, "model_executor/models/pixtral.py", "PixtralForConditionalGeneration")
    init = _method(pixtral, "__init__")
    (call,) = [line for line in init.splitlines() if "self.vision_encoder = " in line]
    assert "quant_config" not in call, call


def test_fp8_weight_minimum_is_vllms(source: VllmSource) -> None:
    quantization = "model_executor/layers/quantization/"
    online = _min_capability(source, quantization + "online/base.py", "OnlineQuantizationConfig")
    w8a16 = _min_capability(
        source,
        quantization + "compressed_tensors/schemes/compressed_tensors_w8a16_fp8.py",
        "CompressedTensorsW8A16Fp8",
    )
    marlin = source.text(quantization + "utils/marlin_utils_fp8.py")
    assert online == w8a16 == as_int(FP8_WEIGHTS_MIN)
    assert f"return current_platform.has_device_capability({online})" in marlin


def test_fp8_kv_cache_minimum_is_vllms(source: VllmSource) -> None:
    backends = "v1/attention/backends/"
    flashinfer = _class(source, backends + "flashinfer.py", "FlashInferBackend")
    assert "'fp8'" in ast.unparse(flashinfer).split("supported_kv_cache_dtypes")[1][:200]
    floor = f"capability >= DeviceCapability({FP8_KV_CACHE_MIN[0]}, {FP8_KV_CACHE_MIN[1]})"
    assert floor in _method(flashinfer, "supports_compute_capability")
    # The other CUDA backends need more: FlashAttention reads fp8 only on 9.0, Triton from 8.9.
    assert "is_sm90" in source.text(backends + "fa_utils.py")
    triton = _method(_class(source, backends + "triton_attn.py", "TritonAttentionImpl"), "__init__")
    assert (
        "self.kv_cache_dtype.startswith('fp8') and (not current_platform.has_device_capability(89))"
        in (triton)
    )
    flex = ast.unparse(_class(source, backends + "flex_attention.py", "FlexAttentionBackend"))
    assert "'fp8'" not in flex.split("supported_kv_cache_dtypes")[1].split("]")[0]
