"""Runtime options on the real engine (vLLM 0.32.0 CPU, the tiny model): the options engine.

Its config (conftest.py): a custom system prompt, sampling defaults temperature 0, top_p 1e-6,
max_tokens 24, and max_num_seqs 2 (so that four requests saturate it). Each test names what
it proves and how the effect is observed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from e2e.real_engine.serve import SERVED_MODEL_NAME, RealEngine
from e2e.stalls import Heartbeat, run_delay_meter
from tests.vllm.client import Background, call, families, gauge, one_sample
from tests.vllm.conftest import (
    OPTIONS_MAX_NUM_SEQS,
    OPTIONS_SAMPLING,
    SYSTEM_PROMPT,
    record,
)

HI = [{"role": "user", "content": "hi"}]
PROMPT = "Hello there"
"""A text prompt whose continuation is not planted: its first tokens are close calls, so
sampling at temperature 1 varies while greedy decoding is repeatable."""


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> MistralTokenizer:
    return MistralTokenizer.from_file(str(tiny_model / "tekken.json"))


def prompt_tokens(tokenizer: MistralTokenizer, messages: list[Any]) -> int:
    request = ChatCompletionRequest(messages=messages)
    return len(tokenizer.encode_chat_completion(request).tokens)


def test_the_custom_system_prompt_reaches_the_model(
    options_engine: RealEngine, tokenizer: MistralTokenizer
) -> None:
    """usage.prompt_tokens rises by exactly the prompt's tokens (mistral-common's count of the
    file's text, plus [SYSTEM_PROMPT] and [/SYSTEM_PROMPT]) over the bare user turn, which is
    what the default engine (mode none) counts for the same request
    (test_engine.py::test_chat_completion_through_the_middleware)."""
    body = {"model": SERVED_MODEL_NAME, "messages": HI}
    resp = call(options_engine, "/v1/chat/completions", body)
    assert resp.status == 200, resp.body
    counted = resp.json()["usage"]["prompt_tokens"]
    bare = prompt_tokens(tokenizer, [UserMessage(content="hi")])
    text = tokenizer.instruct_tokenizer.tokenizer.encode(SYSTEM_PROMPT, bos=False, eos=False)
    assert counted - bare == len(text) + 2
    assert counted == prompt_tokens(
        tokenizer, [SystemMessage(content=SYSTEM_PROMPT), UserMessage(content="hi")]
    )
    # A request with its own system message gets none inserted.
    own = [{"role": "system", "content": "Be brief."}, *HI]
    resp = call(options_engine, "/v1/chat/completions", {**body, "messages": own})
    assert resp.json()["usage"]["prompt_tokens"] == prompt_tokens(
        tokenizer, [SystemMessage(content="Be brief."), UserMessage(content="hi")]
    )


def complete(engine: RealEngine, **params: Any) -> str:
    body = {"model": SERVED_MODEL_NAME, "prompt": PROMPT, "max_tokens": 16, **params}
    resp = call(engine, "/v1/completions", body)
    assert resp.status == 200, resp.body
    text: str = resp.json()["choices"][0]["text"]
    return text


def test_sampling_defaults_reach_the_engine(options_engine: RealEngine) -> None:
    """`--override-generation-config {"temperature":0.0,"top_p":1e-06}` is what vLLM samples
    with when a request sets neither. Observed on /v1/completions, which the middleware passes
    through untouched, so only the flag can act there (vLLM's own default is temperature 1)."""
    greedy = complete(options_engine, temperature=0)
    # The control: at temperature 1 (top_p 1) this prompt's continuation varies.
    samples = [complete(options_engine, temperature=1.0, top_p=1.0) for _ in range(3)]
    assert any(s != greedy for s in samples), samples
    # No temperature: the default 0 applies, so decoding is greedy, every time.
    assert [complete(options_engine, top_p=1.0) for _ in range(2)] == [greedy, greedy]
    # A temperature but no top_p: the default 1e-6 leaves only the likeliest token.
    assert [complete(options_engine, temperature=1.5) for _ in range(2)] == [greedy, greedy]
    # vLLM says so at start-up.
    log = options_engine.log_path.read_text()
    assert (
        "Default vLLM sampling parameters have been overridden by the model's "
        "`generation_config.json`: `{'temperature': 0.0, 'top_p': 1e-06}`"
    ) in log


def test_max_tokens_default_from_the_middleware(
    options_engine: RealEngine, expected: dict[str, Any]
) -> None:
    """sampling.max_tokens (24) is applied by the middleware to chat requests that set none:
    the 41-token answer is cut at 24 (vLLM's own default would be the context's room)."""
    body = {"model": SERVED_MODEL_NAME, "messages": HI}
    data = call(options_engine, "/v1/chat/completions", body).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == OPTIONS_SAMPLING["max_tokens"]
    data = call(options_engine, "/v1/chat/completions", {**body, "max_tokens": 100}).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == expected["completion_tokens"]
    # /v1/completions is not the middleware's: vLLM's own default of 16 tokens applies.
    body = {"model": SERVED_MODEL_NAME, "prompt": PROMPT}
    data = call(options_engine, "/v1/completions", body).json()
    assert data["usage"]["completion_tokens"] == 16


# ----------------------------------------------------------------------- readiness under load

LONG = 15_000
"""Tokens per load request (ignore_eos), cancelled once used: at 100-400 tokens/s a pair of
them holds the engine full for 40 s or more, longer than the test machine's stalls (up to
30 s seen, e2e/stalls.py), so a poll that stalls still finds the load it started."""
FILL_SECONDS = 120
"""How long the load may take to fill the engine (moments, unless the machine stalls)."""


def ready(engine: RealEngine) -> tuple[int, dict[str, Any], float]:
    # The bound on its time is the test's (net of stalls), not the client's timeout.
    resp = call(engine, "/magistral/ready", key=None, timeout=120)
    return resp.status, resp.json(), resp.seconds


class Answer(NamedTuple):
    """One readiness answer, timed by this process."""

    status: int
    report: dict[str, Any]
    seconds: float
    stalled: float
    """Of those seconds, how long this process was not scheduled (e2e/stalls.py)."""
    server_waited: float
    """Of those seconds, how long the engine's event-loop thread waited for a CPU
    (e2e.stalls.run_delay): the engine's own compute threads can hold it off both cores."""

    @property
    def net(self) -> float:
        """The answer's time not counting the larger of the two stalls (they may overlap)."""
        return self.seconds - max(self.stalled, self.server_waited)


def ready_under_load(engine: RealEngine, heartbeat: Heartbeat) -> Answer:
    """`ready`, and how much of its time either side spent off the CPU."""
    assert engine.pid is not None
    server_waited = run_delay_meter(engine.pid)
    asked = time.monotonic()
    status, report, seconds = ready(engine)
    return Answer(
        status, report, seconds, heartbeat.stalled(asked, asked + seconds), server_waited()
    )


@pytest.fixture
def load(options_engine: RealEngine) -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for request in started:
        request.cancel()


def saturate(engine: RealEngine, load: list[Background], *, stream: bool, count: int) -> None:
    """``count`` long requests: ``max_num_seqs`` run, the others wait."""
    body = {
        "model": SERVED_MODEL_NAME,
        "messages": HI,
        "max_tokens": LONG,
        "ignore_eos": True,
        "stream": stream,
    }
    for _ in range(count):
        load.append(Background(engine, "/v1/chat/completions", body).start())
    waiting = count - OPTIONS_MAX_NUM_SEQS
    started = time.monotonic()
    trace: list[tuple[float, float, float]] = []
    while True:
        metrics = families(engine)
        running = one_sample(metrics, "vllm:num_requests_running")
        queued = one_sample(metrics, "vllm:num_requests_waiting")
        elapsed = time.monotonic() - started
        trace.append((round(elapsed, 1), running, queued))
        if running >= OPTIONS_MAX_NUM_SEQS and queued >= waiting:
            return
        assert elapsed < FILL_SECONDS, (
            "the engine did not fill up: (seconds, running, waiting), then each request's "
            "status, error and end",
            trace[:: max(1, len(trace) // 20)],
            [
                (r.status, r.error, r.ended and round(r.ended - started, 1), r.body[:300])
                for r in load[-count:]
            ],
            engine.log_tail(60),
        )
        time.sleep(0.2)


def unload(engine: RealEngine, load: list[Background], heartbeat: Heartbeat) -> None:
    """Cancel the load; its requests leave the engine within 30 s, not counting stalls."""
    for request in load:
        request.cancel()
    load.clear()
    started = time.monotonic()
    while gauge(engine, "vllm:num_requests_running") or gauge(engine, "vllm:num_requests_waiting"):
        now = time.monotonic()
        assert now - started - heartbeat.stalled(started, now) < 30, (
            "cancelled requests still in the engine"
        )
        time.sleep(0.2)


def holds(engine: RealEngine, load: list[Background]) -> tuple[int, float, float]:
    """The load's requests without their response yet, then the engine's running and waiting
    requests. The load is counted first: a request the engine has just finished may still
    count as in flight, never the other way round."""
    in_flight = sum(request.ended is None for request in load)
    metrics = families(engine)
    return (
        in_flight,
        one_sample(metrics, "vllm:num_requests_running"),
        one_sample(metrics, "vllm:num_requests_waiting"),
    )


def readiness_log(engine: RealEngine) -> list[str]:
    """The engine log's recent lines about readiness (for a failure's message)."""
    return [line for line in engine.log_tail(400).splitlines() if "readiness" in line]


def settle(engine: RealEngine, load: list[Background], heartbeat: Heartbeat) -> float:
    """Seconds until the engine holds nothing but the load still in flight.

    A generation that stayed queued would stay there until a slot frees, i.e. until one of the
    load's requests ends (40 s or more at LONG tokens): 10 s, not counting the machine's
    stalls, tell the two apart."""
    started = time.monotonic()
    trace = []
    while True:
        in_flight, running, waiting = holds(engine, load)
        now = time.monotonic()
        elapsed = now - started
        stalled = heartbeat.stalled(started, now)
        trace.append((round(elapsed, 2), round(stalled, 2), running + waiting, in_flight))
        if running + waiting <= in_flight:
            return elapsed
        assert elapsed - stalled < 10, (
            "a timed-out readiness generation stayed in the engine (seconds, of which stalled, "
            "requests in the engine, load requests in flight)",
            trace[:: max(1, len(trace) // 20)],
            readiness_log(engine),
        )
        time.sleep(0.1)


class Poll(NamedTuple):
    """One readiness answer under load, with what the engine held just after it."""

    answer: Answer
    in_flight: int
    """Load requests without their response yet."""
    running: float
    waiting: float


def test_readiness_idle_and_under_load(
    options_engine: RealEngine, load: list[Background], heartbeat: Heartbeat
) -> None:
    """/magistral/ready stays 200 while the engine is saturated (2 requests running, 2
    waiting), with streamed load (its output counts as progress) and with non-streamed load
    (no output reaches any client for minutes: the one-token generation times out in the
    queue, and vLLM's generated-token counter shows the engine busy, not wedged). A timed-out
    generation is aborted in the engine: the queue does not grow. Latencies are recorded."""
    engine = options_engine
    # Idle: once the last result is older than health.cache_seconds (5 s), an answer runs
    # the one-token generation.
    time.sleep(5.2)
    status, report, seconds = ready(engine)
    assert (status, report["status"]) == (200, "ready"), report
    idle = [seconds]
    probe = call(
        engine,
        "/v1/completions",
        {"model": SERVED_MODEL_NAME, "prompt": "Hi", "max_tokens": 1, "temperature": 0},
    )
    assert probe.status == 200
    record(
        "readiness, idle",
        f"{idle[0] * 1000:.0f} ms (with its one-token generation); "
        f"a one-token /v1/completions request {probe.seconds * 1000:.0f} ms",
    )

    saturate(engine, load, stream=True, count=OPTIONS_MAX_NUM_SEQS + 1)
    answers = [ready_under_load(engine, heartbeat) for _ in range(3)]
    assert [(a.status, a.report["status"]) for a in answers] == [(200, "serving")] * 3, answers
    stalled = sum(a.seconds - a.net for a in answers)
    record(
        "readiness, saturated by streams",
        f"{max(a.net for a in answers) * 1000:.0f} ms at most (output counts as progress)"
        + (
            f", net of {stalled:.1f} s in which this process or the engine's event loop waited "
            f"for a CPU"
            if stalled
            else ""
        ),
    )
    unload(engine, load, heartbeat)

    saturate(engine, load, stream=False, count=OPTIONS_MAX_NUM_SEQS + 2)
    # What a one-token generation costs now: it waits for a slot (minutes here).
    with pytest.raises(TimeoutError):
        call(
            engine,
            "/v1/completions",
            {"model": SERVED_MODEL_NAME, "prompt": "Hi", "max_tokens": 1},
            timeout=3,
        )
    # Its client has gone; the polls begin once vLLM has aborted it (a stall of the machine
    # can delay the abort), so that they see the load and their own generation only.
    settle(engine, load, heartbeat)
    polls: list[Poll] = []
    busy_seen = None
    begun = time.monotonic()
    while busy_seen is None or len(polls) < busy_seen + 3:
        now = time.monotonic()
        assert now - begun - heartbeat.stalled(begun, now) < 40, polls
        answer = ready_under_load(engine, heartbeat)
        polls.append(Poll(answer, *holds(engine, load)))
        if busy_seen is None and answer.report["detail"].startswith("busy:"):
            busy_seen = len(polls)
        time.sleep(0.5)
    answers = [p.answer for p in polls]
    assert [(a.status, a.report["status"]) for a in answers] == [(200, "serving")] * len(polls), (
        polls
    )
    waiting = [p.waiting for p in polls]
    # The engine holds the load still in flight and at most one request more: a readiness
    # generation (the one-token request above has left: settled before the polls).
    assert all(p.running + p.waiting <= p.in_flight + 1 for p in polls), polls
    # Once the last answer is given, the engine comes back to the load alone within moments
    # (the abort of a timed-out generation is given 1 s, PROBE_ABANDON_SECONDS; 2.3 s seen on
    # a busy hour). The load's first two requests may have finished by then (after a stall of
    # the machine), so what counts is the load still in flight, not a fixed number.
    settled = settle(engine, load, heartbeat)
    latencies = [a.net for a in answers]
    stalls = sum(a.seconds - a.net for a in answers)
    record(
        "readiness, saturated by non-streamed requests",
        f"{len(polls)} answers, all 200; {max(latencies):.2f} s when the one-token generation "
        f"had to time out (health.generation_timeout_seconds 5), median "
        f"{statistics.median(latencies) * 1000:.0f} ms; waiting {min(waiting):.0f}-"
        f"{max(waiting):.0f}; nothing but the load in the engine {settled:.2f} s after the last "
        f"answer; a one-token request sent to the full engine had no answer within 3 s"
        + (
            f" (answer times net of {stalls:.1f} s in which this process or the engine's event "
            f"loop waited for a CPU)"
            if stalls
            else ""
        )
        + f"; the engine's event loop waited for a CPU {sum(a.server_waited for a in answers):.2f}"
        f" s in all, {max(a.server_waited for a in answers):.2f} s at most in one answer",
    )
    assert max(latencies) < 8, (
        "slower than the suggested readiness probe timeout (8 s), not counting stalls: "
        "(detail, seconds, this process stalled, the engine's loop waited for a CPU, waiting)",
        [
            (
                p.answer.report["detail"],
                round(p.answer.seconds, 2),
                round(p.answer.stalled, 2),
                round(p.answer.server_waited, 2),
                p.waiting,
            )
            for p in polls
        ],
        readiness_log(engine),
    )
    unload(engine, load, heartbeat)
