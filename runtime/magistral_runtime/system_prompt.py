"""The default system prompt: the model's own SYSTEM_PROMPT.txt, or the endpoint's custom one.

`insert_system_prompt` is pure. Finding the file is I/O, kept apart: a local model is a
directory with SYSTEM_PROMPT.txt at its root; a hub model is looked up in the Hugging Face
cache (`<cache>/models--<org>--<name>/snapshots/<commit>/`), where the cache is vLLM's
`--download-dir` when set, else HF_HUB_CACHE, else `$HF_HOME/hub`. vLLM downloads only
weights, config and tokenizer, so `magistral-runtime serve` fetches SYSTEM_PROMPT.txt into
that cache before it starts vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import RuntimeConfig

PROMPT_FILE = "SYSTEM_PROMPT.txt"
# Roles that carry the client's own instructions: with one of them, nothing is inserted.
SYSTEM_ROLES = frozenset({"system", "developer"})
_COMMIT = re.compile(r"[0-9a-f]{40}")


class SystemPromptError(RuntimeError):
    """The configured system prompt cannot be read."""


def insert_system_prompt(messages: Sequence[Any], *, prompt: str) -> list[Any]:
    """`messages` with `prompt` as a leading system message, unless one is already there."""
    if any(isinstance(m, dict) and m.get("role") in SYSTEM_ROLES for m in messages):
        return list(messages)
    return [{"role": "system", "content": prompt}, *messages]


def hub_cache_dir(*, env: Mapping[str, str], download_dir: str | None) -> Path:
    """Where huggingface_hub (and so vLLM) keeps downloaded repos."""
    if download_dir:
        return Path(download_dir)
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env["HUGGINGFACE_HUB_CACHE"])
    hf_home = env.get("HF_HOME") or str(Path(env.get("HOME", "~")) / ".cache" / "huggingface")
    return Path(hf_home).expanduser() / "hub"


def is_local_model(model: str) -> bool:
    """A directory path rather than a hub repo id."""
    return model.startswith(("/", "./", "../")) or Path(model).is_dir()


def snapshot_dir(
    repo_id: str, *, revision: str | None, env: Mapping[str, str], download_dir: str | None
) -> Path | None:
    """The cached snapshot directory of `repo_id` at `revision` (None: not downloaded)."""
    repo_dir = hub_cache_dir(env=env, download_dir=download_dir) / (
        "models--" + repo_id.replace("/", "--")
    )
    wanted = revision or "main"
    if _COMMIT.fullmatch(wanted):
        commit = wanted
    else:
        ref = repo_dir / "refs" / wanted
        try:
            commit = ref.read_text().strip()
        except OSError:
            return None
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def prompt_file(config: RuntimeConfig, *, env: Mapping[str, str]) -> Path | None:
    """The file the default system prompt is read from (None: mode none)."""
    mode = config.system_prompt.mode
    if mode == "none":
        return None
    if mode == "custom":
        assert config.system_prompt.path is not None  # enforced by the config model
        return Path(config.system_prompt.path)
    if is_local_model(config.model):
        return Path(config.model) / PROMPT_FILE
    snapshot = snapshot_dir(
        config.model, revision=config.revision, env=env, download_dir=config.download_dir
    )
    if snapshot is None:
        cache = hub_cache_dir(env=env, download_dir=config.download_dir)
        raise SystemPromptError(
            f"{config.model}@{config.revision or 'main'} is not in the Hugging Face cache "
            f"{cache}: cannot read its {PROMPT_FILE}"
        )
    return snapshot / PROMPT_FILE


def load_system_prompt(config: RuntimeConfig, *, env: Mapping[str, str]) -> str | None:
    """The default system prompt's text (None: mode none); raises SystemPromptError."""
    path = prompt_file(config, env=env)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemPromptError(f"cannot read the system prompt {path}: {exc}") from exc
    if not text.strip():
        raise SystemPromptError(f"the system prompt {path} is empty")
    return text


def fetch_model_prompt(config: RuntimeConfig) -> Path | None:
    """Download the hub model's SYSTEM_PROMPT.txt into the cache (the serve command's step).

    Returns the file, or None when there is nothing to fetch (mode not `model`, or a local
    model). Uses huggingface_hub, which the vLLM image ships; honours HF_TOKEN and
    HF_HUB_OFFLINE like vLLM does.
    """
    if config.system_prompt.mode != "model" or is_local_model(config.model):
        return None
    try:
        from huggingface_hub import hf_hub_download  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise SystemPromptError(f"huggingface_hub is needed to fetch {PROMPT_FILE}") from exc
    try:
        path = hf_hub_download(
            repo_id=config.model,
            filename=PROMPT_FILE,
            revision=config.revision,
            cache_dir=config.download_dir,
        )
    except Exception as exc:  # the hub client raises many types; all mean "not fetched"
        raise SystemPromptError(f"cannot fetch {config.model}/{PROMPT_FILE}: {exc}") from exc
    return Path(str(path))
