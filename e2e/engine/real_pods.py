"""One pod served by the real vLLM engine: its files, its command and the kubelet's readiness probe.

The pod supervisor (``supervisor.py``, option ``real_engine``) runs a simulator per pod, except
for one pod at a time that it serves with the real engine of ``e2e/real_engine`` (the CPU
build of vLLM with the tiny model): ``<engine venv>/bin/magistral-runtime serve --config
FILE``, which execs ``vllm serve`` with our launcher's flags and middleware, as in a pod.

* :func:`prepare` writes the pod's runtime config, adapted by
  :func:`e2e.real_engine.pod_config.pod_runtime_config` (tiny model, pod IP and port, TP 1,
  ``--enforce-eager`` …), and a custom system prompt, into a directory of the pod's own, and
  checks them with the runtime's own loaders;
* :class:`ReadinessProber` plays the kubelet's readiness probe against the engine (the pod's
  ``readinessProbe``: ``/magistral/ready`` every 5 s for the operator's pods); the supervisor
  shows its verdict on the pod as the labels kwok's stages act on (``sim-ready``,
  ``sim-unready``), so the cluster sees the pod Ready when the engine is. It probes simulators
  too, in pods gated by ``E2E_SIM_READINESS=supervisor``.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e2e.engine.pods import ReadinessProbe
from e2e.engine.runtime_files import CONFIG_FILE, CUSTOM_PROMPT_FILE, RuntimeSetupError

if TYPE_CHECKING:
    from e2e.real_engine.env import EngineEnv

log = logging.getLogger("e2e.engine.real_pods")

HEALTH_PATH = "/health"
HEALTH_POLL_SECONDS = 0.5
"""How often vLLM's ``/health`` is polled until it first answers (the engine's start-up time)."""


@dataclass(frozen=True, slots=True)
class EngineInstall:
    """The engine venv and the tiny model's directory (``e2e/real_engine``)."""

    env: EngineEnv
    model: Path

    @classmethod
    def ensure(cls) -> EngineInstall:
        """Install or reuse the venv and generate or reuse the model (cold: minutes)."""
        from e2e.real_engine.env import ensure_env
        from e2e.real_engine.serve import ensure_model

        env = ensure_env()
        return cls(env=env, model=ensure_model(env))


@dataclass(frozen=True, slots=True)
class EngineFiles:
    """What one real engine start needs."""

    directory: Path
    config_path: Path
    argv: list[str]
    notes: list[str]
    """What was changed in the pod's config (for the log)."""
    system_prompt: str
    shutdown_timeout_seconds: int


def prepare(
    directory: Path,
    *,
    install: EngineInstall,
    config_text: str,
    source: str,
    host: str,
    port: int,
    custom_prompt: str | None,
    overrides: dict[str, Any],
) -> EngineFiles:
    """Write the real engine's runtime config (and custom prompt) under ``directory``.

    Raises RuntimeSetupError naming what is wrong.
    """
    import shutil

    from e2e.engine.runtime_files import parse_config
    from e2e.real_engine.pod_config import pod_runtime_config
    from magistral_runtime.config import dump_runtime_config, parse_runtime_config
    from magistral_runtime.system_prompt import SystemPromptError, load_system_prompt

    config = parse_config(config_text, source=source)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    prompt_path: Path | None = None
    if config.system_prompt.mode == "custom":
        if custom_prompt is None:
            raise RuntimeSetupError(f"{source}: the custom system prompt was not found")
        prompt_path = directory / CUSTOM_PROMPT_FILE
        prompt_path.write_text(custom_prompt, encoding="utf-8")
    try:
        final, notes = pod_runtime_config(
            config,
            model=install.model,
            host=host,
            port=port,
            custom_prompt_path=prompt_path,
            overrides=overrides,
        )
    except ValueError as err:
        raise RuntimeSetupError(
            f"{source}: cannot adapt the config to the real engine: {err}"
        ) from err
    config_path = directory / CONFIG_FILE
    config_path.write_text(dump_runtime_config(final))
    final = parse_runtime_config(config_path.read_text(), source=str(config_path))
    try:  # what the runtime (serve's check, then the middleware) will read
        prompt = load_system_prompt(final, env={})
    except SystemPromptError as err:
        raise RuntimeSetupError(f"the system prompt is not readable: {err}") from err
    mode = final.system_prompt.mode
    if mode == "custom":
        assert custom_prompt is not None
        if prompt != custom_prompt:
            raise RuntimeSetupError(f"the runtime reads another system prompt: {prompt!r}")
        described = f"custom ({len(custom_prompt)} characters)"
    elif mode == "model":
        described = f"model (the tiny model's SYSTEM_PROMPT.txt, {len(prompt or '')} characters)"
    else:
        described = "none"
    return EngineFiles(
        directory=directory,
        config_path=config_path,
        argv=[str(install.env.runtime_cli), "serve", "--config", str(config_path)],
        notes=notes,
        system_prompt=described,
        shutdown_timeout_seconds=final.shutdown_timeout_seconds,
    )


def _status(url: str, timeout: float) -> int | None:
    """The HTTP status of ``GET url`` (None: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


class ReadinessProber:
    """The kubelet's readiness probe against one engine, in a thread of its own.

    vLLM's ``/health`` is polled every 0.5 s until it first answers 200 (``health_at``: the
    engine is up). The readiness probe runs on the pod's schedule (``periodSeconds``,
    ``timeoutSeconds``): ready after ``successThreshold`` successes in a row, unready again after
    ``failureThreshold`` failures in a row; 2xx and 3xx are successes, as for the kubelet.
    """

    def __init__(
        self,
        *,
        base_url: str,
        probe: ReadinessProbe,
        name: str,
        health_path: str | None = HEALTH_PATH,
    ) -> None:
        """``health_path``: the engine's health route polled until it answers (None: none;
        ``health_at`` then stays None)."""
        self.base_url = base_url
        self.probe = probe
        self.health_path = health_path
        self.started_at = time.monotonic()
        self.health_at: float | None = None
        self.ready_at: float | None = None
        """When the readiness probe first passed (the pod turned ready)."""
        self.last_status: int | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe-{name}", daemon=True)

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    def start(self) -> ReadinessProber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        successes = failures = 0
        next_probe = self.started_at + self.probe.initial_delay_s
        while not self._stop.is_set():
            now = time.monotonic()
            polling = self.health_path is not None and self.health_at is None
            if polling and _status(self.base_url + str(self.health_path), 2.0) == 200:
                self.health_at = time.monotonic()
                log.info(
                    "%s: /health 200, %.1fs after start",
                    self._thread.name,
                    self.health_at - self.started_at,
                )
            if now >= next_probe:
                next_probe = now + self.probe.period_s
                status = _status(self.base_url + self.probe.path, self.probe.timeout_s)
                self.last_status = status
                ok = status is not None and 200 <= status < 400
                successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
                with self._lock:
                    if not self._ready and successes >= self.probe.success_threshold:
                        self._ready = True
                        if self.ready_at is None:
                            self.ready_at = time.monotonic()
                    elif self._ready and failures >= self.probe.failure_threshold:
                        self._ready = False
            polling = self.health_path is not None and self.health_at is None
            wait = HEALTH_POLL_SECONDS if polling else next_probe - now
            self._stop.wait(max(0.05, min(wait, HEALTH_POLL_SECONDS * 4)))
