"""MagistralMiddleware in front of a fake vLLM app, called in-process (ASGI)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from magistral_runtime.asgi import Receive, Scope, Send
from magistral_runtime.config import RuntimeConfig
from magistral_runtime.middleware import MagistralMiddleware, Settings

from .fake_vllm import ANSWER, APP, FakeVllm, call

KEY = "sk-test"
AUTH = [(b"authorization", b"Bearer " + KEY.encode())]
USER = {"role": "user", "content": "What is 2+2?"}


def config(**overrides: Any) -> RuntimeConfig:
    base: dict[str, Any] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-small",
        "tensor_parallel_size": 1,
        "max_model_len": 40960,
        "gpu_memory_utilization": 0.9,
        "system_prompt": {"mode": "custom", "path": "/nonexistent"},
        "health": {
            "generation_timeout_seconds": 0.2,
            "cache_seconds": 5,
            "liveness_budget_seconds": 60,
        },
    }
    return RuntimeConfig.model_validate({**base, **overrides})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(
    tmp_path: Path, *, fake: FakeVllm | None = None, clock: Clock | None = None, **overrides: Any
) -> tuple[MagistralMiddleware, FakeVllm]:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("SYSTEM PROMPT")
    overrides.setdefault("system_prompt", {"mode": "custom", "path": str(prompt)})
    settings = Settings.from_config(
        config(**overrides), env={"VLLM_API_KEY": KEY}, install_signal_handler=False
    )
    fake = fake or FakeVllm(api_key=KEY)
    return MagistralMiddleware(fake, settings=settings, clock=clock or Clock()), fake


def chat(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def sse_content(body: bytes) -> tuple[str, str]:
    reasoning = content = ""
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                reasoning += choice["delta"].get("reasoning") or ""
                content += choice["delta"].get("content") or ""
    return reasoning, content


async def test_non_streamed_chat_gets_defaults_and_clean_content(tmp_path: Path) -> None:
    app, fake = build(tmp_path)
    status, headers, body = await call(
        app, method="POST", path="/v1/chat/completions", body=chat({"messages": [USER]}),
        headers=AUTH,
    )  # fmt: skip
    assert status == 200
    assert int(headers[b"content-length"]) == len(body)
    message = json.loads(body)["choices"][0]["message"]
    assert message["content"] == "The answer is **4**."
    assert message["reasoning"] == message["reasoning_content"] == "The user asks 2+2. That is 4."
    forwarded = fake.requests[-1][1]
    assert forwarded["messages"][0] == {"role": "system", "content": "SYSTEM PROMPT"}
    assert (forwarded["temperature"], forwarded["top_p"]) == (0.7, 0.95)
    assert 40000 < forwarded["max_tokens"] <= 40960


async def test_streamed_chat_is_split(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    status, headers, body = await call(
        app, method="POST", path="/v1/chat/completions",
        body=chat({"messages": [USER], "stream": True}), headers=AUTH,
    )  # fmt: skip
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert sse_content(body) == ("The user asks 2+2. That is 4.", "The answer is **4**.")
    assert body.endswith(b"data: [DONE]\n\n")


async def test_think_token_models_are_not_rewritten(tmp_path: Path) -> None:
    app, _ = build(tmp_path, reasoning_format="think-tokens")
    _, _, body = await call(
        app, method="POST", path="/v1/chat/completions",
        body=chat({"messages": [USER], "stream": True}), headers=AUTH,
    )  # fmt: skip
    assert sse_content(body) == ("", ANSWER)


@pytest.mark.parametrize(
    ("body", "param"),
    [(b"{oops", None), (chat({"messages": [USER], "n": 3}), "n"),
     (chat({"messages": [USER], "max_tokens": 50000}), "max_tokens")],
)  # fmt: skip
async def test_bad_requests_are_400_and_never_reach_vllm(
    tmp_path: Path, body: bytes, param: str | None
) -> None:
    app, fake = build(tmp_path)
    status, _, answer = await call(
        app, method="POST", path="/v1/chat/completions", body=body, headers=AUTH
    )
    assert status == 400
    error = json.loads(answer)["error"]
    assert (error["param"], error["type"], error["code"]) == (param, "invalid_request_error", 400)
    assert fake.requests == []


async def test_oversized_bodies_are_refused_before_reading(tmp_path: Path) -> None:
    app, fake = build(tmp_path, limits={"max_body_bytes": 2048})
    status, _, answer = await call(
        app, method="POST", path="/v1/chat/completions", body=b"x" * 4096, headers=AUTH
    )
    assert status == 413
    assert json.loads(answer)["error"]["code"] == 413
    assert fake.requests == []


async def test_unauthenticated_requests_get_vllms_401_not_our_checks(tmp_path: Path) -> None:
    app, fake = build(tmp_path)
    wrong = [(b"authorization", b"Bearer nope")]
    for headers in (wrong, []):
        status, _, answer = await call(
            app, method="POST", path="/v1/chat/completions", body=b"{oops", headers=headers
        )
        assert (status, json.loads(answer)) == (401, {"error": "Unauthorized"})
    assert fake.requests == []


async def test_other_routes_pass_through(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    status, _, body = await call(app, path="/v1/models", headers=AUTH)
    assert status == 200
    assert json.loads(body)["data"][0]["id"] == "magistral-small"
    assert (await call(app, path="/health"))[0] == 200


# -- deep readiness and liveness -----------------------------------------------------


async def test_readiness_runs_a_real_one_token_generation(tmp_path: Path) -> None:
    app, fake = build(tmp_path)
    status, _, body = await call(app, path="/magistral/ready")
    assert (status, json.loads(body)["status"]) == (200, "ready")
    path, probe = fake.requests[-1]
    assert path == "/v1/completions"
    assert (probe["max_tokens"], probe["model"]) == (1, "magistral-small")  # sent with the key


async def test_readiness_is_cached(tmp_path: Path) -> None:
    clock = Clock()
    app, fake = build(tmp_path, clock=clock)
    await call(app, path="/magistral/ready")
    await call(app, path="/magistral/ready")
    assert len(fake.requests) == 1
    clock.now += 6  # past cache_seconds
    await call(app, path="/magistral/ready")
    assert len(fake.requests) == 2


async def test_recent_output_of_real_requests_counts_as_ready(tmp_path: Path) -> None:
    app, fake = build(tmp_path)
    await call(app, method="POST", path="/v1/chat/completions",
               body=chat({"messages": [USER]}), headers=AUTH)  # fmt: skip
    status, _, body = await call(app, path="/magistral/ready")
    assert (status, json.loads(body)["status"]) == (200, "serving")
    assert [p for p, _ in fake.requests] == ["/v1/chat/completions"]  # no probe needed


async def test_errors_and_other_routes_do_not_count_as_output(tmp_path: Path) -> None:
    app, fake = build(tmp_path)
    await call(app, method="POST", path="/v1/chat/completions", body=b"{}")  # 401
    await call(app, path="/v1/models", headers=AUTH)
    status, _, body = await call(app, path="/magistral/ready")
    assert (status, json.loads(body)["status"]) == (200, "ready")  # a probe ran
    assert [p for p, _ in fake.requests] == ["/v1/completions"]


@pytest.mark.parametrize(
    ("generation", "detail"), [("error", "HTTP 500"), ("hang", "did not finish within 0.2s")]
)
async def test_readiness_fails_when_generation_fails(
    tmp_path: Path, generation: str, detail: str
) -> None:
    clock = Clock()
    app, fake = build(tmp_path, clock=clock)
    assert (await call(app, path="/magistral/ready"))[0] == 200
    fake.generation = generation
    clock.now += 6
    status, _, body = await call(app, path="/magistral/ready")
    assert status == 503
    report = json.loads(body)
    assert report["status"] == "unready"
    assert detail in report["detail"]


async def test_readiness_fails_while_loading(tmp_path: Path) -> None:
    app, _ = build(tmp_path, fake=FakeVllm(api_key=KEY, generation="error"))
    status, _, body = await call(app, path="/magistral/ready")
    assert (status, json.loads(body)["status"]) == (503, "starting")


async def test_readiness_fails_when_the_system_prompt_is_missing(tmp_path: Path) -> None:
    app, _ = build(tmp_path, system_prompt={"mode": "custom", "path": str(tmp_path / "no")})
    status, _, body = await call(app, path="/magistral/ready")
    assert status == 503
    assert "cannot read the system prompt" in json.loads(body)["detail"]


async def test_liveness_fails_only_after_the_budget(tmp_path: Path) -> None:
    clock = Clock()
    app, fake = build(tmp_path, clock=clock)
    assert (await call(app, path="/magistral/ready"))[0] == 200
    fake.generation = "error"
    clock.now += 30
    assert (await call(app, path="/magistral/live"))[0] == 200  # wedged, but within budget
    clock.now += 31  # 61 s since the last success, budget 60 s
    status, _, body = await call(app, path="/magistral/live")
    assert (status, json.loads(body)["status"]) == (503, "wedged")
    fake.generation = "ok"
    await call(app, path="/magistral/ready")  # recovery: a success resets the budget
    assert (await call(app, path="/magistral/live"))[0] == 200


async def test_liveness_checks_in_the_background_without_readiness_probes(tmp_path: Path) -> None:
    clock = Clock()
    app, fake = build(tmp_path, clock=clock)
    clock.now += 10
    assert (await call(app, path="/magistral/live"))[0] == 200
    for _ in range(4):  # let the background check reach the engine (a few task hops)
        await asyncio.sleep(0)
    assert [p for p, _ in fake.requests] == ["/v1/completions"]


# -- draining ------------------------------------------------------------------------


async def test_draining_fails_readiness_refuses_new_requests_and_finishes_streams(
    tmp_path: Path,
) -> None:
    fake = FakeVllm(api_key=KEY, gate=asyncio.Event())
    app, _ = build(tmp_path, fake=fake)
    stream = asyncio.create_task(
        call(
            app,
            method="POST",
            path="/v1/chat/completions",
            body=chat({"messages": [USER], "stream": True}),
            headers=AUTH,
        )
    )
    await fake.streaming.wait()
    assert app.drain.in_flight == 1

    app.drain.begin()
    status, _, body = await call(app, path="/magistral/ready")
    assert (status, json.loads(body)["status"]) == (503, "draining")
    assert (await call(app, path="/magistral/live"))[0] == 200  # no restart while draining
    status, headers, body = await call(
        app, method="POST", path="/v1/chat/completions", body=chat({"messages": [USER]}),
        headers=AUTH,
    )  # fmt: skip
    assert status == 503
    assert json.loads(body)["error"]["type"] == "service_unavailable"
    assert headers[b"connection"] == b"close"
    assert (await call(app, path="/health"))[0] == 200  # monitoring still answers

    assert not await app.drain.wait_idle(timeout=0.05)  # the stream is still running
    assert fake.gate is not None
    fake.gate.set()
    status, _, body = await stream
    assert status == 200
    assert sse_content(body)[1] == "The answer is **4**."  # finished in full
    assert await app.drain.wait_idle(timeout=1)


@pytest.fixture
def sigterm_recorder() -> Iterator[list[int]]:
    """A previous SIGTERM handler (as asyncio's would be) that records calls; restored after."""
    calls: list[int] = []
    original = signal.getsignal(signal.SIGTERM)

    def previous(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    signal.signal(signal.SIGTERM, previous)
    yield calls
    signal.signal(signal.SIGTERM, original)


async def test_sigterm_starts_draining_and_chains_the_previous_handler(
    tmp_path: Path, sigterm_recorder: list[int]
) -> None:
    prompt = tmp_path / "p.txt"
    prompt.write_text("P")
    settings = Settings.from_config(
        config(system_prompt={"mode": "custom", "path": str(prompt)}), env={}
    )
    app = MagistralMiddleware(FakeVllm(), settings=settings)
    lifespan = asyncio.create_task(_lifespan_startup(app))
    await lifespan
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0)
    assert app.drain.draining
    assert sigterm_recorder == [signal.SIGTERM]
    assert (await call(app, path="/magistral/ready"))[0] == 503


async def _lifespan_startup(app: MagistralMiddleware) -> None:
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        return None

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}, "app": APP}
    await app(scope, receive, send)


async def test_streams_still_running_at_the_drain_deadline_end_cleanly(tmp_path: Path) -> None:
    # vLLM stops its engine at --shutdown-timeout and may leave the stream open forever: the
    # middleware ends it first, with an error event and [DONE] that clients can retry on.
    fake = FakeVllm(api_key=KEY, gate=asyncio.Event())  # the stream never finishes by itself
    app, _ = build(tmp_path, fake=fake, shutdown_timeout_seconds=1)
    stream = asyncio.create_task(
        call(
            app,
            method="POST",
            path="/v1/chat/completions",
            body=chat({"messages": [USER], "stream": True}),
            headers=AUTH,
        )
    )
    await fake.streaming.wait()
    app.drain.begin()
    assert not stream.done()
    status, _, body = await asyncio.wait_for(stream, timeout=5)  # cut at 0.5 s
    assert status == 200  # the stream had started
    events = [e for e in body.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", 503)
    assert "retry" in error["message"]
    assert await app.drain.wait_idle(timeout=1)


async def test_responses_not_started_at_the_drain_deadline_get_503(tmp_path: Path) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started.set()
        try:
            await asyncio.Event().wait()  # an engine that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    settings = Settings.from_config(
        config(shutdown_timeout_seconds=1, system_prompt={"mode": "none"}),
        env={"VLLM_API_KEY": KEY},
        install_signal_handler=False,
    )
    app = MagistralMiddleware(stuck, settings=settings, clock=Clock())
    request = asyncio.create_task(
        call(app, method="POST", path="/v1/completions", body=b"{}", headers=AUTH)
    )
    await started.wait()
    app.drain.begin()
    status, headers, body = await asyncio.wait_for(request, timeout=5)
    assert status == 503
    assert headers[b"retry-after"] == b"1"
    assert json.loads(body)["error"]["type"] == "service_unavailable"
    assert cancelled.is_set()  # the handler (vLLM's generation) was cancelled
