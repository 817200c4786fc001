"""The runtime middleware of an operator pod, set up for its simulator (no cluster needed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.engine import pods
from e2e.engine.pods import ConfigMapKey, ConfigMapMount, configmap_key_for, decide
from e2e.engine.runtime_files import (
    MIDDLEWARE,
    RuntimeSetupError,
    simulated_model_prompt,
    write_runtime_files,
)
from e2e.engine.textgen import chat_prompt_tokens
from magistral_runtime.config import load_runtime_config
from magistral_runtime.middleware import Settings
from tests.e2e_engine.conftest import CUSTOM_PROMPT, SimProcess, by_kind, fetch, render

USER = [{"role": "user", "content": "What is 2+2?"}]


def running_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "metadata": {**template["metadata"], "name": "ep-0", "namespace": "ns", "uid": "u1"},
        "spec": template["spec"],
        "status": {"phase": "Running", "podIP": "127.64.0.9"},
    }


def test_configmap_files_resolve_through_the_mounts() -> None:
    mounts = (
        ConfigMapMount("/etc/magistral", "cm", (("runtime-a.json", "runtime.json"),)),
        ConfigMapMount("/etc/prompts", "prompts", None),
        ConfigMapMount("/etc/one.txt", "single", None, sub_path="one"),
    )
    assert configmap_key_for(mounts, "/etc/magistral/runtime.json") == ConfigMapKey(
        "cm", "runtime-a.json"
    )
    assert configmap_key_for(mounts, "/etc/magistral/other.json") is None
    assert configmap_key_for(mounts, "/etc/prompts/p.txt") == ConfigMapKey("prompts", "p.txt")
    assert configmap_key_for(mounts, "/etc/prompts/sub/p.txt") is None
    assert configmap_key_for(mounts, "/etc/one.txt") == ConfigMapKey("single", "one")
    assert configmap_key_for(mounts, "/elsewhere") is None


def test_an_operator_pod_names_its_runtime_config_and_custom_prompt() -> None:
    objects = render({"inference": {"systemPrompt": {"mode": "custom", "text": CUSTOM_PROMPT}}})
    config_map = by_kind(objects, "ConfigMap")
    deployment = by_kind(objects, "Deployment")
    sim = decide(running_pod(deployment)).sim
    assert sim is not None
    # The revision's own ConfigMap (docs/rollout.md), found by the name the pod spec mounts.
    revision = deployment["spec"]["template"]["metadata"]["labels"]["magistral.dev/revision"]
    assert config_map["metadata"]["name"].endswith(f"-runtime-{revision}")
    assert sim.runtime_config_path == "/etc/magistral/runtime.json"
    assert sim.runtime_config_source == ConfigMapKey(
        config_map["metadata"]["name"], "runtime-reserved-h100.json"
    )
    config = json.loads(config_map["data"]["runtime-reserved-h100.json"])
    prompt = configmap_key_for(sim.config_maps, config["system_prompt"]["path"])
    assert prompt is not None
    assert config_map["data"][prompt.key] == CUSTOM_PROMPT


def test_a_hand_made_pod_has_no_runtime_config() -> None:
    pod = running_pod(by_kind(render({}), "Deployment"))
    pod["spec"]["containers"][0]["volumeMounts"] = []
    sim = decide(pod).sim
    assert sim is not None
    assert sim.runtime_config_source is None


def config_text(**changes: Any) -> str:
    data: dict[str, Any] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral",
        "tensor_parallel_size": 1,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        **changes,
    }
    return json.dumps(data)


def runtime_prompt(files_env: dict[str, str]) -> str | None:
    """The default system prompt the middleware itself resolves from these files."""
    config = load_runtime_config(Path(files_env[pods.RUNTIME_CONFIG_ENV]))
    settings = Settings.from_config(config, env=files_env, install_signal_handler=False)
    assert settings.system_prompt_error is None
    return settings.policy.system_prompt


@pytest.mark.parametrize("revision", [None, "v1.0", "0123456789abcdef0123456789abcdef01234567"])
def test_model_mode_gets_a_simulated_hub_snapshot(tmp_path: Path, revision: str | None) -> None:
    files = write_runtime_files(
        tmp_path / "pod", config_text=config_text(revision=revision), source="test"
    )
    prompt = runtime_prompt(files.env)
    assert prompt == simulated_model_prompt("mistralai/Magistral-Small-2506")
    assert prompt.startswith("[simulated]")
    assert Path(files.env["HF_HOME"]).is_relative_to(tmp_path / "pod")


def test_model_on_a_volume_and_download_dir_are_redirected(tmp_path: Path) -> None:
    local = write_runtime_files(
        tmp_path / "a", config_text=config_text(model="/models/Magistral-Small-2506"), source="t"
    )
    assert runtime_prompt(local.env) == simulated_model_prompt("/models/Magistral-Small-2506")
    download = write_runtime_files(
        tmp_path / "b", config_text=config_text(download_dir="/cache/hub"), source="t"
    )
    assert runtime_prompt(download.env) is not None


def test_custom_and_none_modes(tmp_path: Path) -> None:
    custom = config_text(system_prompt={"mode": "custom", "path": "/etc/magistral/prompt/p.txt"})
    files = write_runtime_files(tmp_path / "c", config_text=custom, source="t", custom_prompt="Hi")
    assert runtime_prompt(files.env) == "Hi"
    with pytest.raises(RuntimeSetupError, match="custom system prompt was not found"):
        write_runtime_files(tmp_path / "d", config_text=custom, source="t")
    none = config_text(system_prompt={"mode": "none"})
    files = write_runtime_files(tmp_path / "e", config_text=none, source="t")
    assert runtime_prompt(files.env) is None


def test_an_invalid_config_is_refused_with_the_field(tmp_path: Path) -> None:
    with pytest.raises(RuntimeSetupError, match="tensor_parallel_size"):
        write_runtime_files(tmp_path, config_text=config_text(tensor_parallel_size=3), source="t")


@pytest.fixture
def process() -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    yield started
    for proc in started:
        proc.stop()


def test_simulator_serves_the_pods_runtime_behaviour(
    process: list[SimProcess], tmp_path: Path
) -> None:
    """The files of an operator-rendered custom-prompt pod, run the way the supervisor runs them."""
    objects = render({"inference": {"systemPrompt": {"mode": "custom", "text": CUSTOM_PROMPT}}})
    data = by_kind(objects, "ConfigMap")["data"]
    files = write_runtime_files(
        tmp_path / "pod",
        config_text=data["runtime-reserved-h100.json"],
        source="test",
        custom_prompt=data["system-prompt.txt"],
    )
    proc = SimProcess(
        "--port", "0", "--served-model-name", "magistral", "--ttft-ms", "5", "--itl-ms", "1",
        "--output-tokens-max", "64", "--middleware", MIDDLEWARE, env=files.env,
    )  # fmt: skip
    process.append(proc)
    url = proc.wait_listening()
    status, raw = fetch(
        url + "/v1/chat/completions", method="POST", body=json.dumps({"messages": USER}).encode()
    )
    assert status == 200, raw
    answer = json.loads(raw)
    message = answer["choices"][0]["message"]
    assert "think>" not in message["content"]
    assert message["reasoning"]
    system = {"role": "system", "content": CUSTOM_PROMPT}
    assert answer["usage"]["prompt_tokens"] == chat_prompt_tokens([system, *USER])
    status, raw = fetch(
        url + "/v1/chat/completions",
        method="POST",
        body=json.dumps({"messages": USER, "n": 3}).encode(),
    )
    assert status == 400
    assert json.loads(raw)["error"]["param"] == "n"
    assert fetch(url + "/magistral/ready")[0] == 200
