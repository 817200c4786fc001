"""Fixtures for tests against the real vLLM engine (CPU build; docs/real-engine.md).

The session installs or reuses the engine venv (e2e/real_engine/env.py, cached outside the
repository), generates the tiny model once per generator version, and starts one
`magistral-runtime serve` process on 127.0.0.1 that every test shares. These tests never skip:
an environment that cannot be built or an engine that does not start fails them with the
reason (the install step's output, the engine log's tail).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.real_engine.env import EngineEnv, ensure_env
from e2e.real_engine.serve import RealEngine, ensure_model

_STATS: dict[str, str] = {}


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


@pytest.fixture(scope="session")
def engine_env() -> EngineEnv:
    started = time.monotonic()
    env = ensure_env()
    _STATS["engine venv"] = f"{env.root} (ready in {time.monotonic() - started:.1f} s)"
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
def engine(
    engine_env: EngineEnv, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealEngine]:
    """One engine for the session: default runtime options plus max_num_seqs and a download
    dir, so that every flag the launcher writes for a think-text model reaches vLLM."""
    workdir = tmp_path_factory.mktemp("real-engine")
    real = RealEngine(
        engine_env,
        workdir,
        model=tiny_model,
        max_num_seqs=8,
        download_dir=str(workdir / "downloads"),
    )
    real.start()
    try:
        seconds = real.wait_ready()
        mem = real.memory()
        _STATS["engine start-up"] = f"{seconds:.1f} s to /health 200 ({real.url})"
        _STATS["engine memory"] = (
            f"RSS {mem['rss'] / 2**30:.2f} GiB, PSS {mem['pss'] / 2**30:.2f} GiB "
            f"over {len(real.pids())} processes"
        )
        yield real
    finally:
        real.stop()
