"""Helpers for the engine simulator's tests: an in-process simulator and a subprocess one.

Everything binds 127.0.0.1 (or another 127.x address) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.engine.config import SimConfig
from e2e.engine.simulator import Simulator
from magistral_operator.api.config import load_operator_config
from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.render import render_endpoint
from magistral_operator.render.metadata import is_engine_deployment

ROOT = Path(__file__).resolve().parents[2]

FAST = SimConfig(
    host="127.0.0.1",
    port=0,
    served_model_names=("magistral-test",),
    max_num_seqs=8,
    max_model_len=4096,
    kv_cache_tokens=65536,
    ttft_ms=5.0,
    prefill_ms_per_token=0.0,
    itl_ms=2.0,
    output_tokens_min=16,
    output_tokens_max=32,
)
"""A quick replica for format tests; tests derive slower ones with ``dataclasses.replace``."""


class ThreadedSimulator:
    """A simulator on its own event loop in a background thread (port chosen by the OS)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sim: Simulator | None = None
        self.port = 0

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout=30)

    def __enter__(self) -> ThreadedSimulator:
        self._thread.start()

        async def start() -> int:
            self.sim = Simulator(self.config)
            return await self.sim.start()

        self.port = self._call(start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.sim is not None:
            self._call(self.sim.shutdown(timeout=0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the simulator's loop (engine state is loop-confined)."""

        async def call() -> Any:
            return fn()

        return self._call(call())


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., ThreadedSimulator]]:
    started: list[ThreadedSimulator] = []

    def make(**changes: Any) -> ThreadedSimulator:
        sim = ThreadedSimulator(replace(FAST, **changes)).__enter__()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.__exit__(None, None, None)


def fetch(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """Status and body (an error status is returned, not raised)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), bytes(err.read())


def metrics(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` parsed by prometheus_client: sample name -> sorted labels -> value."""
    status, body = fetch(url + "/metrics")
    assert status == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str
) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    matches = [
        v for key, v in samples.get(name, {}).items() if all((k, labels[k]) in key for k in labels)
    ]
    assert len(matches) == 1, f"{name} {labels}: {matches}"
    return matches[0]


class SimProcess:
    """``python -m e2e.engine.simulator`` as a child process (for signals and start-up)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "e2e.engine.simulator", *args]
        full_env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_listening(self, timeout: float = 30.0) -> str:
        """Read output until the "Uvicorn running on http://…" line; return that URL."""
        assert self.proc.stdout is not None
        result: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "running on http://" in line:
                    result.append(line.split("running on ", 1)[1].split()[0])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            raise AssertionError(f"simulator did not start: {''.join(self.lines)}")
        threading.Thread(target=self._drain_output, daemon=True).start()
        return result[0]

    def _drain_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


# ------------------------------------------------------------------- operator-rendered pods

CUSTOM_PROMPT = "You are a terse assistant for the simulator's tests. " * 8
"""A custom system prompt of a known length (its tokens show in ``usage.prompt_tokens``)."""


def render(
    spec_changes: dict[str, Any], *, name: str = "ep", namespace: str = "ns"
) -> list[dict[str, Any]]:
    """What the operator applies for a one-pool endpoint (example operator config)."""
    spec: dict[str, Any] = {
        "model": {"repo": "mistralai/Magistral-Small-2506", "servedModelName": "magistral"},
        "runtime": {"maxModelLen": 40960},
        "gpu": {"pools": ["reserved-h100"]},
        "scaling": {"minReplicas": 1, "maxReplicas": 1},
        "auth": {"apiKeySecretRef": {"name": "api-key", "key": "key"}},
        **spec_changes,
    }
    endpoint = parse_endpoint(
        {"metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec}
    )
    result = render_endpoint(endpoint, load_operator_config(ROOT / "examples/operator-config.yaml"))
    assert result.plan.ok, result.plan.problems
    return result.objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one rendered object of `kind`; for Deployments, the (one pool's) engine one."""
    if kind == "Deployment":
        (obj,) = (o for o in objects if is_engine_deployment(o))
    else:
        (obj,) = (o for o in objects if o["kind"] == kind)
    return obj


def middleware_runtime_config(tmp_path: Path) -> Path:
    """A runtime config for a simulator process that loads the runtime middleware (as the
    operator's pods run it): no system prompt, no API key, 4096 tokens."""
    config = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-test",
        "tensor_parallel_size": 1,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        "system_prompt": {"mode": "none"},
        "api_key_required": False,
    }
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps(config))
    return path
