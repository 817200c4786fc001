"""`magistral-runtime serve`: config validation, the exec'd argv, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from magistral_runtime import cli
from magistral_runtime.config import CONFIG_ENV, RuntimeConfig
from magistral_runtime.launcher import MIDDLEWARE, build_vllm_args

BASE: dict[str, Any] = {
    "model": "mistralai/Magistral-Small-2506",
    "served_model_name": "magistral-small",
    "tensor_parallel_size": 2,
    "max_model_len": 40960,
    "gpu_memory_utilization": 0.9,
    "system_prompt": {"mode": "none"},
}


def write(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps({**BASE, **overrides}))
    return path


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, file: str, argv: list[str]) -> None:
        self.calls.append((file, argv))


def test_serve_execs_vllm_with_the_launcher_args_and_the_middleware(tmp_path: Path) -> None:
    execvp = Recorder()
    path = write(tmp_path)
    cli.serve(config_path=path, env={"VLLM_API_KEY": "k"}, execvp=execvp)
    [(file, argv)] = execvp.calls
    expected = build_vllm_args(RuntimeConfig.model_validate(json.loads(path.read_text())))
    assert file == "vllm"
    assert argv == [*expected, "--middleware", MIDDLEWARE]
    assert "k" not in argv  # the key stays in the environment


@pytest.mark.parametrize(
    ("overrides", "env", "field"),
    [
        ({"tensor_parallel_size": 3}, {"VLLM_API_KEY": "k"}, "tensor_parallel_size"),
        ({"sampling": {"temperature": 5}}, {"VLLM_API_KEY": "k"}, "sampling.temperature"),
        ({"unknown": 1}, {"VLLM_API_KEY": "k"}, "unknown"),
        ({}, {}, "api_key_required"),
        ({"system_prompt": {"mode": "custom", "path": "/nope"}}, {"VLLM_API_KEY": "k"},
         "system_prompt"),
        ({}, {"VLLM_API_KEY": "k", "VLLM_SERVER_DEV_MODE": "1"}, "VLLM_SERVER_DEV_MODE"),
    ],
)  # fmt: skip
def test_bad_config_exits_2_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, Any],
    env: dict[str, str],
    field: str,
) -> None:
    execvp = Recorder()
    with pytest.raises(SystemExit) as exit_info:
        cli.serve(config_path=write(tmp_path, **overrides), env=env, execvp=execvp)
    assert exit_info.value.code == 2
    assert field in capsys.readouterr().err
    assert execvp.calls == []


def test_unreadable_or_invalid_json_exits_2(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        if path.name == "bad.json":
            path.write_text("{")
        with pytest.raises(SystemExit) as exit_info:
            cli.serve(config_path=path, env={}, execvp=Recorder())
        assert exit_info.value.code == 2


def test_no_key_needed_when_auth_is_off(tmp_path: Path) -> None:
    execvp = Recorder()
    cli.serve(config_path=write(tmp_path, api_key_required=False), env={}, execvp=execvp)
    assert len(execvp.calls) == 1


def test_main_reads_the_config_flag_and_dry_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "k")
    monkeypatch.setattr(os, "execvp", Recorder())
    path = write(tmp_path)
    assert cli.main(["serve", "--config", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("vllm serve mistralai/Magistral-Small-2506 ")
    assert f"--middleware {MIDDLEWARE}" in printed


def test_main_takes_the_config_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    execvp = Recorder()
    monkeypatch.setenv("VLLM_API_KEY", "k")
    monkeypatch.setenv("MAGISTRAL_RUNTIME_CONFIG", str(write(tmp_path)))
    monkeypatch.setattr(os, "execvp", execvp)
    assert cli.main(["serve"]) == 0
    assert execvp.calls[0][0] == "vllm"


def test_the_model_prompt_is_fetched_for_hub_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []
    prompt = tmp_path / "SYSTEM_PROMPT.txt"
    prompt.write_text("P")

    def fake_fetch(config: RuntimeConfig) -> Path:
        fetched.append(config.model)
        return prompt

    monkeypatch.setattr(cli, "fetch_model_prompt", fake_fetch)
    monkeypatch.setattr(cli, "load_system_prompt", lambda config, env: prompt.read_text())
    execvp = Recorder()
    cli.serve(
        config_path=write(tmp_path, system_prompt={"mode": "model"}),
        env={"VLLM_API_KEY": "k"},
        execvp=execvp,
    )
    assert fetched == ["mistralai/Magistral-Small-2506"]
    assert len(execvp.calls) == 1


def test_the_execd_middleware_reads_the_config_serve_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `serve --config FILE`: vLLM's process builds our middleware, which finds its config
    # through $MAGISTRAL_RUNTIME_CONFIG; it must be the file that was validated.
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    seen: list[str | None] = []

    def execvp(file: str, argv: list[str]) -> None:
        seen.append(os.environ.get(CONFIG_ENV))

    path = write(tmp_path)
    cli.serve(config_path=path, env={"VLLM_API_KEY": "k"}, execvp=execvp)
    assert seen == [str(path.resolve())]


def test_the_listen_address_comes_from_the_config(tmp_path: Path) -> None:
    default = build_vllm_args(RuntimeConfig.model_validate(BASE))
    assert default[default.index("--host") + 1] == "0.0.0.0"
    local = build_vllm_args(RuntimeConfig.model_validate({**BASE, "host": "127.0.0.1"}))
    assert local[local.index("--host") + 1] == "127.0.0.1"
