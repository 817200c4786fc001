"""Fixtures for tests against the real vLLM engine (CPU build; docs/real-engine.md).

The session installs or reuses the engine venv (e2e/real_engine/env.py, cached outside the
repository), generates the tiny model once per generator version, and runs
`magistral-runtime serve` processes on 127.0.0.1. Two engine configurations are used, one at
a time (an engine takes about a minute to start and 4.6 GiB; the machine is shared):

* ``engine``: the runtime's defaults (system prompt mode none), plus ``max_num_seqs`` and a
  download dir so that every flag the launcher writes for a think-text model reaches vLLM;
* ``options_engine``: non-default runtime options whose effects the tests observe (a custom
  system prompt, sampling defaults, ``max_num_seqs: 2`` to saturate it, a 6 s shutdown
  timeout for the drain test, which takes this engine and stops it).

Test modules that use the default engine sort before those that use the other
(test_engine, test_engine_calibration < test_runtime_options, test_shutdown), so each starts once.
These tests never skip: an environment that cannot be built or an engine that does not start
fails them with the reason (the install step's output, the engine log's tail).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.real_engine.env import EngineEnv, ensure_env
from e2e.real_engine.serve import RealEngine, ensure_model
from e2e.stalls import Heartbeat

_STATS: dict[str, str] = {}

SYSTEM_PROMPT = "You are a careful assistant for the real engine tests. Answer briefly.\n"
"""The options engine's custom system prompt (its trailing newline is part of it)."""
OPTIONS_SAMPLING = {"temperature": 0.0, "top_p": 1e-6, "max_tokens": 24}
"""Sampling defaults with visible effects: greedy; top_p so small that only the most likely
token is left (sampling at any temperature is then greedy); answers cut at 24 tokens."""
OPTIONS_MAX_NUM_SEQS = 2
OPTIONS_MAX_MODEL_LEN = 16_384
"""Room for the readiness test's long load requests (the real-engine tests' usual 4096 raised;
the tiny model has 131,072 positions and the 1 GiB KV cache 524,288 tokens)."""
OPTIONS_SHUTDOWN_TIMEOUT = 14
"""The drain test's cutoff is then 12 s after SIGTERM: room for a short stream sized to end
6 s after it, and for the test's requests after the signal, with stalls of the machine of
several seconds (it was 6 s, with a 1.5 s short stream and a 4 s cutoff)."""
OPTIONS_KEEP_ALIVE = 120
"""The options engine's ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE`` (vLLM's default: 5 s). The drain test
sends a request on a connection kept alive from before the SIGTERM; with 5 s, a stall of the
test machine (docs/real-engine.md, "Stalls of the test machine") between that connection's
last answer and the request let vLLM close it as idle (CI, stop 24: BrokenPipeError)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _STATS:
        terminalreporter.write_sep("-", "real vLLM engine")
        for key, value in _STATS.items():
            terminalreporter.write_line(f"{key}: {value}")


def record(key: str, value: str) -> None:
    """A measurement, printed at the end of the session (docs/real-engine.md quotes them)."""
    _STATS[key] = value


def _default_config(workdir: Path) -> dict[str, Any]:
    return {"max_num_seqs": 8, "download_dir": str(workdir / "downloads")}


def _options_config(workdir: Path) -> dict[str, Any]:
    prompt = workdir / "system-prompt.txt"
    prompt.write_text(SYSTEM_PROMPT)
    return {
        "system_prompt": {"mode": "custom", "path": str(prompt)},
        "sampling": OPTIONS_SAMPLING,
        "max_num_seqs": OPTIONS_MAX_NUM_SEQS,
        "max_model_len": OPTIONS_MAX_MODEL_LEN,
        "shutdown_timeout_seconds": OPTIONS_SHUTDOWN_TIMEOUT,
    }


CONFIGS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "default": _default_config,
    "options": _options_config,
}
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "options": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(OPTIONS_KEEP_ALIVE)},
}
"""What each engine gets in its environment beyond ``engine_environ``'s."""


class Engines:
    """Starts the engine a test asks for, stopping the one that ran before: at most one
    engine of this session runs at any time."""

    def __init__(self, env: EngineEnv, model: Path, tmp: pytest.TempPathFactory) -> None:
        self._env = env
        self._model = model
        self._tmp = tmp
        self._name: str | None = None
        self._engine: RealEngine | None = None

    def get(self, name: str) -> RealEngine:
        if self._name != name or self._engine is None:
            self.close()
            self._engine = self._start(name)
            self._name = name
        return self._engine

    def take(self, name: str) -> RealEngine:
        """The engine ``name``, handed over: the caller stops it (``RealEngine.stop``)."""
        engine = self.get(name)
        self._engine = self._name = None
        return engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.stop()
        self._engine = self._name = None

    def _start(self, name: str) -> RealEngine:
        workdir = self._tmp.mktemp(f"real-engine-{name}")
        real = RealEngine(
            self._env,
            workdir,
            model=self._model,
            extra_env=ENVIRONMENTS.get(name),
            **CONFIGS[name](workdir),
        )
        real.start()
        try:
            seconds = real.wait_ready()
        except BaseException:
            real.stop()
            raise
        mem = real.memory()
        record(f"{name} engine start-up", f"{seconds:.1f} s to /health 200 ({real.url})")
        record(
            f"{name} engine memory",
            f"RSS {mem['rss'] / 2**30:.2f} GiB, PSS {mem['pss'] / 2**30:.2f} GiB "
            f"over {len(real.pids())} processes",
        )
        return real


@pytest.fixture(scope="session")
def engine_env() -> EngineEnv:
    started = time.monotonic()
    env = ensure_env()
    record("engine venv", f"{env.root} (ready in {time.monotonic() - started:.1f} s)")
    return env


@pytest.fixture(scope="session")
def tiny_model(engine_env: EngineEnv) -> Path:
    return ensure_model(engine_env)


@pytest.fixture(scope="session")
def expected(tiny_model: Path) -> dict[str, Any]:
    """What the tiny model answers (written by e2e/real_engine/tiny_model.py)."""
    data: dict[str, Any] = json.loads((tiny_model / "magistral-tiny.json").read_text())
    return data


@pytest.fixture(scope="session")
def engines(
    engine_env: EngineEnv, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engines]:
    pool = Engines(engine_env, tiny_model, tmp_path_factory)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def engine(engines: Engines) -> RealEngine:
    """The runtime's defaults (system prompt mode none), max_num_seqs 8, a download dir."""
    return engines.get("default")


@pytest.fixture
def options_engine(engines: Engines) -> RealEngine:
    """Custom system prompt, OPTIONS_SAMPLING, max_num_seqs 2, max_model_len 16384, keep-alive
    120 s, shutdown timeout 14 s."""
    return engines.get("options")


@pytest.fixture
def heartbeat() -> Iterator[Heartbeat]:
    """This process's stalls while the test runs (e2e/stalls.py): subtract them from what the
    test times."""
    with Heartbeat() as beat:
        yield beat
