"""The project's runtime middleware in a simulated pod: its config and system prompt as files.

A serving pod the operator renders runs ``magistral-runtime serve``, which starts ``vllm serve
… --middleware magistral_runtime.middleware.MagistralMiddleware`` with the runtime config
mounted from the endpoint's ConfigMap (``$MAGISTRAL_RUNTIME_CONFIG``) and, in ``model``
system-prompt mode, the model's ``SYSTEM_PROMPT.txt`` fetched into the Hugging Face cache. The
supervisor gives the pod's simulator the same middleware: it reads the ConfigMap items the pod
mounts (through the API) and this module writes them into a directory of the pod's own:

* ``runtime.json``: the pod's runtime config, with the paths that only exist in the container
  pointed at local files (``system_prompt.path``, ``download_dir``, a local ``model``);
* ``system-prompt.txt``: the custom prompt (``custom`` mode), read from its ConfigMap;
* ``hf/hub/models--org--name/{refs/<revision>,snapshots/<commit>/SYSTEM_PROMPT.txt}``
  (``model`` mode): a simulated model cache whose prompt says it is simulated
  (``$HF_HOME`` points at ``hf``); a model on a volume (``/models/…``) gets ``model/`` instead.

The result is checked with the runtime's own loader (``load_system_prompt``), so the middleware
finds exactly the prompt written here. ``magistral_runtime`` is imported only when used: without
it, ``RuntimeSetupError`` says so and the supervisor runs the plain simulator.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e.engine.pods import RUNTIME_CONFIG_ENV

if TYPE_CHECKING:
    from magistral_runtime.config import RuntimeConfig

MIDDLEWARE = "magistral_runtime.middleware.MagistralMiddleware"
"""The class a pod's ``vllm serve --middleware`` loads (the operator's launcher writes it)."""
MODEL_PROMPT_FILE = "SYSTEM_PROMPT.txt"
CUSTOM_PROMPT_FILE = "system-prompt.txt"
CONFIG_FILE = "runtime.json"
CLEARED_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
"""Removed from the simulator's environment: they would win over ``$HF_HOME``."""
_COMMIT = re.compile(r"[0-9a-f]{40}")


class RuntimeSetupError(RuntimeError):
    """The runtime middleware cannot be set up for this pod; the message says why."""


@dataclass(frozen=True, slots=True)
class RuntimeFiles:
    """What a simulator needs to run the runtime middleware."""

    directory: Path
    config_path: Path
    env: dict[str, str]
    """``MAGISTRAL_RUNTIME_CONFIG``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` for the simulator."""
    system_prompt: str
    """How the default system prompt is served, for logs."""


def simulated_model_prompt(model: str) -> str:
    """The SYSTEM_PROMPT.txt of a simulated model (marked as such: it is not the real one)."""
    return (
        f"[simulated] You are Magistral, a reasoning model ({model}). First draft your "
        "thinking process between <think> and </think>, then give a concise answer. "
        "(Written by the engine simulator in place of the model's SYSTEM_PROMPT.txt.)\n"
    )


def parse_config(text: str, *, source: str) -> RuntimeConfig:
    """Validate the pod's runtime config with the runtime's own model."""
    try:
        from magistral_runtime.config import RuntimeConfigError, parse_runtime_config
    except ImportError as err:
        raise RuntimeSetupError(f"magistral_runtime cannot be imported ({err})") from err
    try:
        return parse_runtime_config(text, source=source)
    except RuntimeConfigError as err:
        raise RuntimeSetupError(str(err)) from err


def custom_prompt_path(config: RuntimeConfig) -> str | None:
    """The container path of the custom prompt the config names (None: not custom mode)."""
    if config.system_prompt.mode != "custom":
        return None
    return config.system_prompt.path


def _snapshot_commit(model: str, revision: str) -> str:
    if _COMMIT.fullmatch(revision):
        return revision
    return hashlib.sha1(f"simulated {model}@{revision}".encode()).hexdigest()


def write_runtime_files(
    directory: Path, *, config_text: str, source: str, custom_prompt: str | None = None
) -> RuntimeFiles:
    """Write the pod's runtime config and system prompt under ``directory`` (replaced).

    ``custom_prompt`` is the text of the prompt the config's ``custom`` mode names (read by the
    caller from the ConfigMap the pod mounts). Raises RuntimeSetupError.
    """
    config = parse_config(config_text, source=source)
    data: dict[str, Any] = json.loads(config_text)
    from magistral_runtime.system_prompt import (
        SystemPromptError,
        is_local_model,
        load_system_prompt,
    )

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    hf_home = directory / "hf"
    env = {
        RUNTIME_CONFIG_ENV: str(directory / CONFIG_FILE),
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
    }
    mode = config.system_prompt.mode
    expected: str | None = None
    if mode == "custom":
        if custom_prompt is None:
            raise RuntimeSetupError(f"{source}: the custom system prompt was not found")
        path = directory / CUSTOM_PROMPT_FILE
        path.write_text(custom_prompt, encoding="utf-8")
        data["system_prompt"] = {**data.get("system_prompt", {}), "path": str(path)}
        expected, described = custom_prompt, f"custom ({len(custom_prompt)} characters)"
    elif mode == "model":
        expected = simulated_model_prompt(config.model)
        if is_local_model(config.model):
            model_dir = directory / "model"
            model_dir.mkdir()
            (model_dir / MODEL_PROMPT_FILE).write_text(expected, encoding="utf-8")
            data["model"] = str(model_dir)
            described = f"model (simulated {MODEL_PROMPT_FILE} in {model_dir})"
        else:
            hub = hf_home / "hub"
            if config.download_dir:
                data["download_dir"] = str(hub)
            revision = config.revision or "main"
            commit = _snapshot_commit(config.model, revision)
            repo_dir = hub / ("models--" + config.model.replace("/", "--"))
            snapshot = repo_dir / "snapshots" / commit
            snapshot.mkdir(parents=True)
            (snapshot / MODEL_PROMPT_FILE).write_text(expected, encoding="utf-8")
            if commit != revision:
                ref = repo_dir / "refs" / revision
                ref.parent.mkdir(parents=True, exist_ok=True)
                ref.write_text(commit)
            described = f"model (simulated {MODEL_PROMPT_FILE} in {snapshot})"
    else:
        described = "none"
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    config_path = directory / CONFIG_FILE
    config_path.write_text(text)
    final = parse_config(text, source=str(config_path))
    try:  # the runtime's own lookup must find what was written
        found = load_system_prompt(final, env=env)
    except SystemPromptError as err:
        raise RuntimeSetupError(f"the system prompt written is not found: {err}") from err
    if found != expected:
        raise RuntimeSetupError(f"the runtime reads another system prompt: {found!r}")
    return RuntimeFiles(
        directory=directory, config_path=config_path, env=env, system_prompt=described
    )
