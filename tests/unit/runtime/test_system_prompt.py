"""Where the default system prompt is read from: model directory, HF cache, custom file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from magistral_runtime.config import RuntimeConfig
from magistral_runtime.system_prompt import (
    SystemPromptError,
    hub_cache_dir,
    load_system_prompt,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def config(**overrides: Any) -> RuntimeConfig:
    base: dict[str, Any] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "m",
        "tensor_parallel_size": 1,
        "max_model_len": 40960,
        "gpu_memory_utilization": 0.9,
    }
    return RuntimeConfig.model_validate({**base, **overrides})


def hub_snapshot(cache: Path, *, ref: str = "main", text: str = "HUB PROMPT") -> Path:
    repo = cache / "models--mistralai--Magistral-Small-2506"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "SYSTEM_PROMPT.txt").write_text(text)
    return snapshot


@pytest.mark.parametrize(
    ("env", "download_dir", "expected"),
    [
        ({"HF_HOME": "/cache/huggingface"}, None, "/cache/huggingface/hub"),
        ({"HF_HOME": "/h", "HF_HUB_CACHE": "/c"}, None, "/c"),
        ({"HF_HOME": "/h"}, "/d", "/d"),
        ({"HOME": "/cache/home"}, None, "/cache/home/.cache/huggingface/hub"),
    ],
)
def test_hub_cache_dir(env: dict[str, str], download_dir: str | None, expected: str) -> None:
    assert hub_cache_dir(env=env, download_dir=download_dir) == Path(expected)


def test_hub_model_prompt_from_the_cache_snapshot(tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hub")
    env = {"HF_HOME": str(tmp_path)}
    assert load_system_prompt(config(), env=env) == "HUB PROMPT"


def test_hub_model_at_a_revision(tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hub", ref="v1")
    env = {"HF_HOME": str(tmp_path)}
    assert load_system_prompt(config(revision="v1"), env=env) == "HUB PROMPT"
    assert load_system_prompt(config(revision=COMMIT), env=env) == "HUB PROMPT"
    with pytest.raises(SystemPromptError, match="not in the Hugging Face cache"):
        load_system_prompt(config(), env=env)  # no refs/main


def test_hub_model_in_vllms_download_dir(tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "models")
    cfg = config(download_dir=str(tmp_path / "models"))
    assert load_system_prompt(cfg, env={}) == "HUB PROMPT"


def test_local_model_directory(tmp_path: Path) -> None:
    (tmp_path / "SYSTEM_PROMPT.txt").write_text("LOCAL\n")
    assert load_system_prompt(config(model=str(tmp_path)), env={}) == "LOCAL\n"


def test_custom_prompt_and_mode_none(tmp_path: Path) -> None:
    prompt = tmp_path / "system-prompt.txt"
    prompt.write_text("Be brief.")
    custom = config(system_prompt={"mode": "custom", "path": str(prompt)})
    assert load_system_prompt(custom, env={}) == "Be brief."
    assert load_system_prompt(config(system_prompt={"mode": "none"}), env={}) is None


@pytest.mark.parametrize("content", [None, "  \n"])
def test_missing_or_empty_files_are_errors(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "SYSTEM_PROMPT.txt").write_text(content)
    with pytest.raises(SystemPromptError, match=r"SYSTEM_PROMPT\.txt"):
        load_system_prompt(config(model=str(tmp_path)), env={})


def test_custom_mode_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        config(system_prompt={"mode": "custom"})
