"""A serving pod's runtime config, adapted so that the real engine can serve it here (pure).

The pod supervisor (``e2e/engine/supervisor.py``, option ``real_engine``) can serve one
operator pod with the real vLLM engine instead of the simulator. It reads the pod's runtime
config from the endpoint's ConfigMap, as the simulator path does, and this module changes only
what cannot hold on this machine's CPU with the tiny model:

==========================  ==========================================================
field                       becomes
==========================  ==========================================================
``model``                   the tiny model's directory (``revision`` and
                            ``download_dir`` dropped: a local model)
``host``, ``port``          the pod IP and its container port
``tensor_parallel_size``    1 (one CPU "device")
``max_model_len``           at most :data:`~e2e.real_engine.serve.MAX_MODEL_LEN` (4096,
                            what the ``vllm`` tests run)
``quantization``            none (the CPU build has no fp8 kernels for it)
``kv_cache_dtype``          ``auto``
``extra_args``              ``--enforce-eager`` only (start-up in a minute instead of
                            several; the pod's own extra args are GPU settings)
``system_prompt.path``      the local copy of the custom prompt (mode ``custom``)
==========================  ==========================================================

Everything else is the pod's: the served model name, sampling defaults, ``max_num_seqs``,
the reasoning format and history, tool calling, ``api_key_required``, the system prompt mode
(mode ``model`` reads the tiny model's own ``SYSTEM_PROMPT.txt``), limits, health settings and
the shutdown timeout. ``overrides`` (for example a shorter ``shutdown_timeout_seconds`` to keep
a test short) are applied last and validated with the rest by the runtime's own model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2e.real_engine.serve import EAGER_ARGS, MAX_MODEL_LEN
from magistral_runtime.config import RuntimeConfig


def pod_runtime_config(
    config: RuntimeConfig,
    *,
    model: Path,
    host: str,
    port: int,
    custom_prompt_path: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[RuntimeConfig, list[str]]:
    """``config`` (the pod's) as the real engine serves it here, and what was changed.

    ``custom_prompt_path``: where the custom prompt was written (mode ``custom``; required
    then). Raises ``ValueError`` (pydantic's, naming the field) when the result is invalid.
    """
    data: dict[str, Any] = config.model_dump(mode="json")
    changes: dict[str, Any] = {
        "model": str(model),
        "revision": None,
        "download_dir": None,
        "host": host,
        "port": port,
        "tensor_parallel_size": 1,
        "max_model_len": min(config.max_model_len, MAX_MODEL_LEN),
        "quantization": None,
        "kv_cache_dtype": "auto",
        "extra_args": list(EAGER_ARGS),
    }
    if config.system_prompt.mode == "custom":
        if custom_prompt_path is None:
            raise ValueError("system_prompt: mode custom needs the local copy of the prompt")
        changes["system_prompt"] = {"mode": "custom", "path": str(custom_prompt_path)}
    changes.update(overrides or {})
    notes = [
        f"{name} {data.get(name)!r} -> {value!r}"
        for name, value in changes.items()
        if data.get(name) != value and name != "system_prompt"
    ]
    data.update(changes)
    return RuntimeConfig.model_validate(data), notes
