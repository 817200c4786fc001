"""`spec.runtime.env`: which variables an endpoint may set, and the runtime's second check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import celpy
import pytest
from celpy import celtypes

from magistral_operator.api.env_policy import (
    ENV_CEL_RULES,
    ENV_VAR_CEL_RULES,
    REFUSED_ENV,
    env_problems,
    env_refusal,
)
from magistral_operator.render.workload import _env
from magistral_runtime import VLLM_VERSION
from magistral_runtime.cli import check_environment, serve
from magistral_runtime.config import RuntimeConfig, RuntimeConfigError
from magistral_runtime.env_policy import GUARDED_ENV, guarded_env_problems, int_flag, word_flag

from .conftest import endpoint_from_spec
from .runtime.vllm_cli import SourceUnavailableError, VllmSource, vllm_source

REFUSED_NAMES = [
    "VLLM_SERVER_DEV_MODE",
    "vllm_server_dev_mode",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
    "VLLM_API_KEY",
    "HF_TOKEN",
    "HF_HUB_OFFLINE",
    "HF_ENDPOINT",
    "HF_HUB_CACHE",
    "HUGGING_FACE_HUB_TOKEN",
    "HOME",
    "MAGISTRAL_RUNTIME_CONFIG",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "PYTHONWARNINGS",
    "PATH",
    "VLLM_PLUGINS",
    "VLLM_USE_MODELSCOPE",
    "VLLM_USE_RUST_FRONTEND",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "VLLM_NO_USAGE_STATS",
]
ALLOWED_NAMES = [
    "NCCL_DEBUG",
    "VLLM_LOGGING_LEVEL",
    "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "OMP_NUM_THREADS",
    "MY_APP_SETTING",
    "PATHS_EXTRA",  # not PATH
]


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_refused_names(name: str) -> None:
    problems = env_problems([("NCCL_DEBUG", "INFO"), (name, "0")])
    assert len(problems) == 1
    assert problems[0].startswith(f"spec.runtime.env[1]: {name} may not be set: ")


@pytest.mark.parametrize("name", ALLOWED_NAMES)
def test_allowed_names(name: str) -> None:
    assert env_problems([(name, "1")]) == []


def test_duplicates_are_refused() -> None:
    assert env_problems([("A", "1"), ("B", "2"), ("A", "3")]) == [
        "spec.runtime.env[2]: A is already set by spec.runtime.env[0] (a second entry breaks "
        "server-side apply)"
    ]


def _operator_env_names() -> set[str]:
    auth = {"apiKeySecretRef": {"name": "k", "key": "k"}}
    hub = endpoint_from_spec(
        {
            "model": {"source": {"hub": {"tokenSecretRef": {"name": "t", "key": "t"}}}},
            "auth": auth,
        }
    )
    pvc = endpoint_from_spec({"model": {"source": {"pvc": {"claimName": "w"}}}, "auth": auth})
    return {entry["name"] for endpoint in (hub, pvc) for entry in _env(endpoint)}


def test_every_variable_the_operator_sets_is_refused() -> None:
    names = _operator_env_names()
    assert {"VLLM_API_KEY", "HF_TOKEN", "HF_HUB_OFFLINE", "MAGISTRAL_RUNTIME_CONFIG"} <= names
    assert [n for n in names if env_refusal(n) is None] == []


def test_the_images_cache_locations_are_refused() -> None:
    dockerfile = (Path(__file__).resolve().parents[2] / "runtime" / "Dockerfile").read_text()
    block = dockerfile.split("ENV ", 1)[1].split("\nRUN", 1)[0]
    names = set(re.findall(r"([A-Z_]+)=", block))
    caches = {n for n in names if n.endswith(("_CACHE_DIR", "_CACHE_HOME", "_ROOT", "HOME"))}
    assert caches
    assert all(env_refusal(n) for n in caches), caches


# --------------------------------------------------------------------------------------
# CEL

_CEL = celpy.Environment()
_FUNCTIONS = {"upperAscii": lambda s: celtypes.StringType(str(s).upper())}


def _failures(rules: list[dict[str, str]], value: Any) -> list[str]:
    failures = []
    for rule in rules:
        program = _CEL.program(_CEL.compile(rule["rule"]), functions=_FUNCTIONS)
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            failures.append(rule["message"])
    return failures


@pytest.mark.parametrize("name", REFUSED_NAMES + ALLOWED_NAMES)
def test_cel_agrees_with_env_problems(name: str) -> None:
    refused = bool(env_problems([(name, "1")]))
    assert bool(_failures(ENV_VAR_CEL_RULES, {"name": name, "value": "1"})) == refused
    assert bool(_failures(ENV_CEL_RULES, [{"name": name, "value": "1"}])) == refused


def test_cel_refuses_duplicates() -> None:
    entries = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    assert _failures(ENV_CEL_RULES, entries)
    assert _failures(ENV_CEL_RULES, entries[:1]) == []


# --------------------------------------------------------------------------------------
# The runtime reads the guarded variables the way vLLM does

ON_INT = [
    "1",
    "01",
    " 1",
    "1 ",
    "\t1\n",
    "+1",
    "-1",
    "1_0",
    "2",
    "\u0661",
]  # the last: ARABIC-INDIC DIGIT ONE
OFF_INT = ["0", "00", " 0 ", "-0", "+0", "0_0"]
UNREADABLE_INT = ["true", "", "yes", "0x1", "1.0", "on"]


@pytest.mark.parametrize("value", ON_INT)
def test_dev_mode_is_refused_in_every_form_vllm_reads_as_on(value: str) -> None:
    assert bool(int(value))  # what vLLM computes
    problems = guarded_env_problems({"VLLM_SERVER_DEV_MODE": value})
    assert len(problems) == 1
    assert "development endpoints" in problems[0]


@pytest.mark.parametrize("value", OFF_INT)
def test_dev_mode_off_is_allowed(value: str) -> None:
    assert guarded_env_problems({"VLLM_SERVER_DEV_MODE": value}) == []


@pytest.mark.parametrize("value", UNREADABLE_INT)
def test_a_value_vllm_cannot_read_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid literal"):
        int(value)
    problems = guarded_env_problems({"VLLM_SERVER_DEV_MODE": value})
    assert len(problems) == 1
    assert "cannot read" in problems[0]


@pytest.mark.parametrize(
    ("value", "on"),
    [("1", True), (" TRUE ", True), ("True\n", True), ("0", False), ("yes", False), ("no", False)],
)
def test_lora_updating_is_read_as_vllm_reads_it(value: str, on: bool) -> None:
    problems = guarded_env_problems({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": value})
    assert bool(problems) == on


def _config(**overrides: Any) -> RuntimeConfig:
    base: dict[str, Any] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-small",
        "tensor_parallel_size": 1,
        "max_model_len": 40960,
        "gpu_memory_utilization": 0.9,
        "api_key_required": False,
    }
    return RuntimeConfig.model_validate({**base, **overrides})


@pytest.mark.parametrize("value", ["01", " 1", "+1", "1_0"])
def test_check_environment_refuses_the_bypass_forms(value: str) -> None:
    with pytest.raises(RuntimeConfigError, match="VLLM_SERVER_DEV_MODE"):
        check_environment(_config(), env={"VLLM_SERVER_DEV_MODE": value})
    check_environment(_config(), env={"VLLM_SERVER_DEV_MODE": "0"})


def test_serve_exits_on_a_bypass_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "runtime.json"
    path.write_text(_config().model_dump_json())
    with pytest.raises(SystemExit) as exited:
        serve(
            config_path=path,
            env={"VLLM_SERVER_DEV_MODE": "01"},
            execvp=lambda *_: pytest.fail("exec"),
            fetch_prompt=False,
        )
    assert exited.value.code == 2
    assert "VLLM_SERVER_DEV_MODE='01'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def envs_source() -> str:
    try:
        return VllmSource(vllm_source(VLLM_VERSION)).text("envs.py")
    except SourceUnavailableError as exc:
        pytest.fail(str(exc))


def test_the_runtime_readers_are_vllms(envs_source: str) -> None:
    """Each guarded variable is read in vllm/envs.py the way our reader reads it."""
    text = re.sub(r"\s+", "", envs_source)
    for name, (read, _effect) in GUARDED_ENV.items():
        if read is int_flag:
            assert f'"{name}":lambda:bool(int(os.getenv("{name}","0")))' in text, name
        else:
            assert read is word_flag
            assert (
                f'"{name}":lambda:(os.environ.get("{name}","0").strip().lower()in("1","true"))'
                in text
            ), name


def test_every_refused_vllm_variable_exists_in_the_release(envs_source: str) -> None:
    for name in [n for n in REFUSED_ENV if n.startswith("VLLM_")] + list(GUARDED_ENV):
        assert f'"{name}": lambda' in envs_source, name
