"""A stream that ends without finishing gets the cutoff's error event (found on the real engine).

vLLM 0.32 answers a request that reaches its handler just as it starts shutting down with a
role chunk, zero completion tokens and `[DONE]`: no finish reason, no error (seen in
tests/vllm/test_shutdown.py's race). Clients would take that for an empty answer.
"""

from __future__ import annotations

import json
from typing import Any

from magistral_runtime.asgi import Message
from magistral_runtime.cutoff import CUTOFF_MESSAGE, Tracker

SSE = [(b"content-type", b"text/event-stream; charset=utf-8")]
ROLE = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
)
USAGE = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":4,"total_tokens":4,"completion_tokens":0}}\n\n'
)
FINISH = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"


async def relay(bodies: list[bytes], *, headers: list[Any] = SSE) -> bytes:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    tracker = Tracker(send)
    await tracker.send({"type": "http.response.start", "status": 200, "headers": headers})
    for i, body in enumerate(bodies):
        more = i < len(bodies) - 1
        await tracker.send({"type": "http.response.body", "body": body, "more_body": more})
    assert tracker.finished
    return b"".join(m.get("body", b"") for m in sent[1:])


def events(stream: bytes) -> list[Any]:
    out: list[Any] = []
    for event in stream.split(b"\n\n"):
        if event.startswith(b"data: "):
            payload = event[6:].decode()
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def test_a_stream_that_ends_unfinished_gets_the_error_event_before_done() -> None:
    for bodies in ([ROLE, USAGE, DONE], [ROLE, USAGE + DONE], [ROLE + USAGE + DONE + b""]):
        *_, error, done = events(await relay(bodies))
        assert done == "[DONE]"
        assert error["error"]["type"] == "service_unavailable"
        assert error["error"]["code"] == 503
        assert error["error"]["message"] == CUTOFF_MESSAGE


async def test_finished_and_failed_streams_and_other_bodies_are_left_alone() -> None:
    vllm_error = b'data: {"error":{"message":"boom","type":"InternalServerError"}}\n\n'
    for bodies in ([ROLE, FINISH, USAGE, DONE], [ROLE, vllm_error, DONE], [ROLE, FINISH + DONE]):
        assert await relay(bodies) == b"".join(bodies)
    not_a_stream = [(b"content-type", b"application/json")]
    assert await relay([b'{"x": "data: [DONE]"}'], headers=not_a_stream) == (
        b'{"x": "data: [DONE]"}'
    )
