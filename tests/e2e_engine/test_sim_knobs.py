"""A revision that is up but slow or failing: ``--error-rate``, ``--ttft-ms``, ``--itl-ms``.

An SLO-gated canary is judged from the engines' own ``/metrics``: the TTFT and ITL histograms
and the share of ``vllm:request_success_total`` finishing with ``error``. These tests check
that the knobs show there, and that a failed request is answered as vLLM answers one.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from e2e.engine.config import SimConfig, config_from_args, fails_at
from e2e.engine.engine import Engine
from e2e.stalls import process_heartbeat
from tests.e2e_engine.conftest import (
    SimProcess,
    ThreadedSimulator,
    fetch,
    metrics,
    middleware_runtime_config,
    value,
)
from tests.e2e_engine.test_engine import BASE, Recorder, make_seq, sample

SimFactory = Callable[..., ThreadedSimulator]
MESSAGES = [{"role": "user", "content": "Is the canary healthy?"}]
GENERATION_ERROR = {
    "error": {
        "message": "Internal server error",
        "type": "InternalServerError",
        "param": None,
        "code": 500,
    }
}
"""vLLM 0.32's body for a request its engine finished with ``error`` (GenerationError)."""


def post(sim: ThreadedSimulator, path: str, payload: Mapping[str, object]) -> tuple[int, bytes]:
    return fetch(sim.url + path, method="POST", body=json.dumps(payload).encode())


def sse_events(sim: ThreadedSimulator, path: str, payload: Mapping[str, object]) -> list[str]:
    """The ``data:`` payloads of a streamed request (status 200 asserted)."""
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
    conn.request(
        "POST",
        path,
        body=json.dumps({**payload, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    events = resp.read().decode().split("\n\n")
    conn.close()
    assert events[-1] == ""
    assert all(e.startswith("data: ") for e in events[:-1])
    return [e.removeprefix("data: ") for e in events[:-1]]


# ---------------------------------------------------------------------------- selection


@pytest.mark.parametrize("rate", [0.0, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.7, 0.9, 1.0])
def test_error_selection_is_exact_and_deterministic(rate: float) -> None:
    picks = [n for n in range(1, 1001) if fails_at(n, rate)]
    for count in (10, 100, 1000):
        expected = int(count * round(rate, 6) + 1e-9)
        assert sum(1 for n in picks if n <= count) == expected, (rate, count)
    assert picks == [n for n in range(1, 1001) if fails_at(n, rate)]  # no hidden state
    assert (1 in picks) == (rate == 1.0)  # the first request fails only when all do


def test_error_rate_flag() -> None:
    assert config_from_args([], environ={}).error_rate == 0.0
    assert config_from_args(["--error-rate", "0.25"], environ={}).error_rate == 0.25
    for bad in ("1.5", "-0.1", "nan", "abc"):
        with pytest.raises(SystemExit) as exit_info:
            config_from_args(["--error-rate", bad], environ={})
        assert exit_info.value.code == 2
    assert replace(SimConfig(), error_rate=2.0).problems()


def test_slowness_flags() -> None:
    config = config_from_args(["--ttft-ms", "400", "--itl-ms", "50"], environ={})
    assert (config.ttft_ms, config.itl_ms) == (400.0, 50.0)


# ------------------------------------------------------------------------------- engine


def test_engine_fails_a_request_where_its_first_token_would_be() -> None:
    """Queued and prefilled like any other, then ``error``: no token, slot and KV freed, no
    TTFT or ITL observation; the others are served."""

    async def scenario() -> None:
        engine = Engine(replace(BASE, max_num_seqs=1, error_rate=0.5))
        engine.start()
        log: list[tuple[int, int]] = []
        sinks = [Recorder(i, log, engine) for i in range(4)]
        seqs = [make_seq(engine, s, prompt=50, output=5) for s in sinks]
        for seq in seqs:
            engine.submit(seq)
        reasons = await asyncio.gather(*(s.done for s in seqs))
        assert reasons == ["length", "error", "length", "error"]
        assert [s.indexes for s in sinks] == [list(range(5)), [], list(range(5)), []]
        assert all(s.admitted_at is not None for s in seqs)  # they did reach the engine
        assert engine.num_running == engine.num_waiting == 0
        assert engine.kv_usage() == 0
        assert sample(engine, "vllm:request_success_total", finished_reason="error") == 2
        assert sample(engine, "vllm:request_success_total", finished_reason="length") == 2
        assert sample(engine, "vllm:time_to_first_token_seconds_count") == 2
        assert sample(engine, "vllm:inter_token_latency_seconds_count") == 2 * 4
        assert sample(engine, "vllm:generation_tokens_total") == 2 * 5
        assert sample(engine, "vllm:e2e_request_latency_seconds_count") == 2
        await engine.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------- API


def test_error_rate_share_of_non_streamed_requests(sim_factory: SimFactory) -> None:
    """A quarter: every 4th request is a 500 with vLLM's GenerationError body, counted as
    ``finished_reason="error"``; the same sequence on a second replica with the same seed."""
    runs = []
    for _ in range(2):
        sim = sim_factory(error_rate=0.25, seed=7)
        statuses = []
        for i in range(8):
            path, payload = (
                ("/v1/chat/completions", {"messages": MESSAGES})
                if i < 4
                else ("/v1/completions", {"prompt": "Once upon"})
            )
            status, body = post(sim, path, payload)
            statuses.append(status)
            if status == 500:
                assert json.loads(body) == GENERATION_ERROR
            else:
                assert json.loads(body)["choices"][0]["finish_reason"] == "stop"
        runs.append(statuses)
        samples = metrics(sim.url)
        assert value(samples, "vllm:request_success_total", finished_reason="error") == 2
        assert value(samples, "vllm:request_success_total", finished_reason="stop") == 6
        assert value(samples, "vllm:time_to_first_token_seconds_count") == 6
        assert value(samples, "vllm:e2e_request_latency_seconds_count") == 6
    assert runs[0] == [200, 200, 200, 500, 200, 200, 200, 500]
    assert runs[1] == runs[0]


def test_openai_client_sees_an_internal_server_error(sim_factory: SimFactory) -> None:
    sim = sim_factory(error_rate=1.0)
    api = OpenAI(base_url=f"{sim.url}/v1", api_key="none", max_retries=0, timeout=30)
    with pytest.raises(openai.InternalServerError) as err:
        api.chat.completions.create(
            model="magistral-test",
            messages=MESSAGES,  # type: ignore[arg-type]
        )
    assert err.value.status_code == 500
    stream = api.chat.completions.create(
        model="magistral-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    with pytest.raises(openai.APIError, match="Internal server error"):
        list(stream)


def test_streamed_failures_end_with_an_error_event_then_done(sim_factory: SimFactory) -> None:
    """Chat: the role chunk, the error event, [DONE] (no finish or usage chunk), as vLLM
    streams a GenerationError; completions: the error event and [DONE]. Every other stream
    is whole."""
    sim = sim_factory(error_rate=0.5)
    chat = {"messages": MESSAGES, "stream_options": {"include_usage": True}}
    ok = sse_events(sim, "/v1/chat/completions", chat)
    assert ok[-1] == "[DONE]"
    assert json.loads(ok[-2])["usage"]["completion_tokens"] >= 16
    failed = sse_events(sim, "/v1/chat/completions", chat)
    assert len(failed) == 3
    role = json.loads(failed[0])
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert json.loads(failed[1]) == GENERATION_ERROR
    assert failed[2] == "[DONE]"
    whole = sse_events(sim, "/v1/completions", {"prompt": "Once upon"})
    assert json.loads(whole[-2])["choices"][0]["finish_reason"] == "stop"
    failed = sse_events(sim, "/v1/completions", {"prompt": "Once upon"})
    assert [json.loads(failed[0]), failed[1]] == [GENERATION_ERROR, "[DONE]"]
    samples = metrics(sim.url)
    assert value(samples, "vllm:request_success_total", finished_reason="error") == 2
    assert value(samples, "vllm:request_success_total", finished_reason="stop") == 2
    assert value(samples, "vllm:request_success_total", finished_reason="abort") == 0
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 2


def test_no_errors_by_default(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    for _ in range(6):
        assert post(sim, "/v1/completions", {"prompt": "x"})[0] == 200
    samples = metrics(sim.url)
    assert value(samples, "vllm:request_success_total", finished_reason="error") == 0


def test_slow_replica_shows_in_the_ttft_and_itl_histograms(sim_factory: SimFactory) -> None:
    """--ttft-ms 300 and --itl-ms 50: every TTFT observation above the 0.25 s bucket, the ITL
    ones about 50 ms; the quick replica's (5 ms, 2 ms) far below.

    Steps are scheduled on the clock, so after a late step the next one comes early: a single
    ITL observation can be short, but a request's ITLs add up to more than 6 steps (its 7
    intervals), so their mean is above 6/7 x 50 ms whatever the machine's load."""
    payload = {"prompt": "x", "max_tokens": 8, "ignore_eos": True}
    slow = sim_factory(ttft_ms=300.0, itl_ms=50.0)
    fast = sim_factory()
    heartbeat = process_heartbeat()
    spans = {}
    for sim in (slow, fast):
        began = time.monotonic()
        for _ in range(3):
            assert post(sim, "/v1/completions", payload)[0] == 200
        spans[sim.port] = (began, time.monotonic())
    # The simulators run in this process: a stall of it lengthens the quick replica's
    # observations, so its bounds do not count the stall that overlapped its requests.
    fast_stalled = heartbeat.stalled(*spans[fast.port])

    def histogram(sim: ThreadedSimulator, name: str, le: str) -> tuple[float, float, float]:
        samples = metrics(sim.url)
        return (
            value(samples, f"{name}_bucket", le=le),
            value(samples, f"{name}_count"),
            value(samples, f"{name}_sum"),
        )

    ttft = "vllm:time_to_first_token_seconds"
    itl = "vllm:inter_token_latency_seconds"
    below, count, total = histogram(slow, ttft, "0.25")
    assert (below, count) == (0, 3)
    assert total / count >= 0.3
    below, count, total = histogram(slow, itl, "0.025")
    assert count == 3 * 7
    # A short one follows only a late one; a stall of this process (which runs the simulator)
    # makes one late step, then one short interval per 50 ms step it held up.
    slow_stalled = heartbeat.stalled(*spans[slow.port])
    assert below <= count // 3 + slow_stalled / 0.05, (below, slow_stalled)
    slow_itl = total / count
    assert slow_itl >= 6 / 7 * 0.05
    below, count, total = histogram(fast, ttft, "0.25")
    assert count == 3
    assert below == 3 or total - fast_stalled < 0.25, (below, total, fast_stalled)
    _, count, total = histogram(fast, itl, "0.025")
    assert count == 3 * 7
    assert (total - fast_stalled) / count < slow_itl / 2, (total, fast_stalled, slow_itl)


# ------------------------------------------------------------------ as the pods run it


def test_failures_pass_through_the_runtime_middleware(tmp_path: Path) -> None:
    """A simulator process as the supervisor starts it for an operator pod (``--error-rate``
    from the pod's env, the runtime middleware): the 500 and the stream's error event reach
    the client unchanged, and /metrics counts them as ``error``."""
    path = middleware_runtime_config(tmp_path)
    proc = SimProcess(
        "--port", "0", "--served-model-name", "magistral-test", "--itl-ms", "2",
        "--ttft-ms", "5", "--prefill-ms-per-token", "0", "--max-model-len", "4096",
        "--middleware", "magistral_runtime.middleware.MagistralMiddleware",
        "--error-rate", "0.5",
        env={"MAGISTRAL_RUNTIME_CONFIG": str(path)},
    )  # fmt: skip
    try:
        url = proc.wait_listening()
        body = json.dumps({"model": "magistral-test", "messages": MESSAGES}).encode()
        chat = url + "/v1/chat/completions"
        assert fetch(chat, method="POST", body=body)[0] == 200
        status, raw = fetch(chat, method="POST", body=body)
        assert (status, json.loads(raw)) == (500, GENERATION_ERROR)
        streamed = json.dumps({"messages": MESSAGES, "stream": True}).encode()
        _, whole = fetch(chat, method="POST", body=streamed)
        assert whole.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in whole
        _, failed = fetch(chat, method="POST", body=streamed)
        events = [e.removeprefix("data: ") for e in failed.decode().split("\n\n") if e]
        assert json.loads(events[-2]) == GENERATION_ERROR
        assert events[-1] == "[DONE]"
        samples = metrics(url)
        assert value(samples, "vllm:request_success_total", finished_reason="error") == 2
        assert value(samples, "vllm:request_success_total", finished_reason="stop") == 2
    finally:
        proc.stop()
