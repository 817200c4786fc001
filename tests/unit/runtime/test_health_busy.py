"""Readiness of a saturated engine (found on the real engine: tests/vllm/test_runtime_options.py).

With every slot taken, vLLM queues the readiness generation behind the running requests; with
non-streamed requests no output reaches any client for as long as they run. Before this, the
generation timed out and the replica was declared unready while it worked flat out, and the
timed-out generation stayed queued in vLLM (its route handlers abort on a client disconnect,
not on cancellation), one more per readiness period.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, Counter

from magistral_runtime.asgi import Receive, Scope, Send
from magistral_runtime.config import RuntimeConfig
from magistral_runtime.health import HealthMonitor
from magistral_runtime.middleware import (
    GENERATION_TOKENS,
    MagistralMiddleware,
    Settings,
    engine_generation_tokens,
)

from .fake_vllm import call


def monitor(*, engine_tokens: Callable[[], float | None]) -> HealthMonitor:
    async def queued() -> None:  # the one-token generation never gets a slot
        await asyncio.Event().wait()

    return HealthMonitor(
        probe=queued,
        timeout_seconds=0.05,
        cache_seconds=5,
        liveness_budget_seconds=60,
        is_draining=lambda: False,
        engine_tokens=engine_tokens,
    )


async def test_a_busy_engine_whose_probe_times_out_is_serving() -> None:
    counts = itertools.count(100, 7)  # the engine generates tokens all the while
    health = monitor(engine_tokens=lambda: float(next(counts)))
    report = await health.readiness()
    assert (report.ok, report.status) == (True, "serving")
    assert "generated 7 tokens" in report.detail
    assert health.liveness().ok


async def test_a_probe_timeout_without_engine_progress_is_unready() -> None:
    for tokens in (lambda: 100.0, lambda: None):  # stuck counter; no counter (not in vLLM)
        health = monitor(engine_tokens=tokens)
        report = await health.readiness()
        assert (report.ok, report.status) == (False, "starting")  # no success ever
        assert "did not finish within 0.05s" in report.detail


class QueuedVllm:
    """A vLLM whose queue is full: like its `with_cancellation` routes, a request's handler
    runs as its own task and is aborted only when the client disconnects."""

    def __init__(self) -> None:
        self.aborted = asyncio.Event()
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests.append(json.loads((await receive())["body"]))

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        handler = asyncio.ensure_future(asyncio.Event().wait())  # waits for a slot
        listener = asyncio.ensure_future(disconnected())
        await asyncio.wait({handler, listener}, return_when=asyncio.FIRST_COMPLETED)
        if listener.done():
            handler.cancel()
            self.aborted.set()


def middleware(app: Any) -> MagistralMiddleware:
    config = RuntimeConfig.model_validate(
        {
            "model": "mistralai/Magistral-Small-2506",
            "served_model_name": "magistral-small",
            "tensor_parallel_size": 1,
            "max_model_len": 40960,
            "gpu_memory_utilization": 0.9,
            "system_prompt": {"mode": "none"},
            "health": {"generation_timeout_seconds": 0.1},
        }
    )
    settings = Settings.from_config(
        config, env={"VLLM_API_KEY": "sk-test"}, install_signal_handler=False
    )
    return MagistralMiddleware(app, settings=settings)


async def test_a_timed_out_probe_is_aborted_in_the_engine_not_left_queued() -> None:
    fake = QueuedVllm()
    app = middleware(fake)
    started = time.monotonic()
    status, _, body = await call(app, path="/magistral/ready")
    elapsed = time.monotonic() - started
    assert (status, json.loads(body)["status"]) == (503, "starting")
    assert [r["max_tokens"] for r in fake.requests] == [1]
    assert elapsed < 0.1 + 0.5  # the answer comes at the timeout
    # The engine hears the disconnect and drops the request (the answer does not wait for it).
    await asyncio.wait_for(fake.aborted.wait(), 5)


async def test_engine_generation_tokens_reads_vllms_counter_in_this_process() -> None:
    assert engine_generation_tokens() is None  # outside vLLM: no such counter
    counter = Counter(
        GENERATION_TOKENS.removesuffix("_total"),
        "Number of generation tokens processed.",
        ["model_name", "engine"],
    )
    try:
        counter.labels("magistral-small", "0").inc(40)
        counter.labels("magistral-small", "1").inc(2)
        assert engine_generation_tokens() == 42.0
    finally:
        REGISTRY.unregister(counter)


async def test_the_answer_comes_at_the_timeout_while_the_abandoned_generation_cleans_up() -> None:
    """A timed-out generation that takes its time to stop (vLLM hears the disconnect late) does
    not hold the readiness answer: the check answers at its timeout, and the clean-up runs on
    (here it can only finish after the answer: the test releases it then)."""
    release = asyncio.Event()
    cleaned = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()  # queued behind the load
        except asyncio.CancelledError:
            await release.wait()  # the abort reaches the engine only now
            cleaned.set()
            raise

    counts = itertools.count(100, 7)
    health = HealthMonitor(
        probe=slow_to_stop,
        timeout_seconds=0.05,
        cache_seconds=5,
        liveness_budget_seconds=60,
        is_draining=lambda: False,
        engine_tokens=lambda: float(next(counts)),
    )
    report = await asyncio.wait_for(health.readiness(), 10)  # waiting on clean-up: never ends
    assert (report.ok, report.status) == (True, "serving")
    assert not cleaned.is_set()
    release.set()
    await asyncio.wait_for(cleaned.wait(), 10)  # cancelled, and it did clean up
