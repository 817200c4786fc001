"""A stand-in for vLLM's OpenAI server as a plain ASGI app (for tests and the benchmark).

It answers the way vLLM 0.33.0's server does for Magistral-Small-2506 served without a
reasoning parser: the model's `<think>…</think>` text is part of `content`, streamed as
server-sent events (`data: {chunk}` per event, a role chunk first, a finish chunk, then
`data: [DONE]`); errors are `{"error": {"message", "type", "param", "code"}}`; a wrong API
key gets vLLM's `{"error": "Unauthorized"}` 401 on /v1 paths. Every request body it gets is
kept in `requests`, so tests can see what the middleware forwarded. Like vLLM's handlers,
which reach the engine through `request.app` (Starlette's `scope["app"]`), it answers 500
to requests whose scope has no `app`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from magistral_runtime.asgi import Message, Receive, Scope, Send

ANSWER = "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is **4**."
TOOL_REASONING = "<think>\nI need the weather tool for Paris.\n</think>\n"


APP = object()  # stands for the Starlette application object
# How vLLM's pydantic request models read `n` and `stream` (lax: 1.0 is 1, "false" False).
LAX_INT: TypeAdapter[int | None] = TypeAdapter(int | None)
LAX_BOOL: TypeAdapter[bool | None] = TypeAdapter(bool | None)


def with_app(app: Any) -> Any:
    """`app` behind what Starlette does first: put the application in the scope."""

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = APP
        await app(scope, receive, send)

    return outer


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class FakeVllm:
    model: str = "magistral-small"
    answer: str = ANSWER
    chunk_chars: int = 4
    api_key: str | None = None
    generation: str = "ok"  # ok | error | hang: how /v1/completions (the probe) behaves
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # When set, streams wait for it before their last chunk (to hold a request in flight).
    gate: asyncio.Event | None = None
    streaming: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if "app" not in scope:
            await self._json(send, 500, {"detail": "no application in the scope"})
            return
        path = scope["path"]
        if path.startswith("/v1") and not self._authorized(scope):
            await self._json(send, 401, {"error": "Unauthorized"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if path == "/health":
            await self._json(send, 200, None)
        elif path == "/v1/models":
            await self._json(send, 200, self._models())
        elif path == "/v1/chat/completions":
            request = json.loads(body)
            self.requests.append((path, request))
            await self._chat(request, send)
        elif path == "/v1/chat/completions/batch":
            request = json.loads(body)
            self.requests.append((path, request))
            await self._batch(request, send)
        elif path == "/v1/completions":
            self.requests.append((path, json.loads(body)))
            await self._completion(send)
        else:
            await self._json(send, 404, {"detail": "Not Found"})

    def _authorized(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        for key, value in scope["headers"]:
            if key == b"authorization":
                return bool(value == b"Bearer " + self.api_key.encode())
        return False

    async def _json(self, send: Send, status: int, value: Any) -> None:
        body = b"" if value is None else _dumps(value)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model,
                    "object": "model",
                    "created": 1,
                    "owned_by": "vllm",
                    "root": "mistralai/Magistral-Small-2506",
                    "parent": None,
                    "max_model_len": 40960,
                }
            ],
        }

    async def _completion(self, send: Send) -> None:
        if self.generation == "hang":
            await asyncio.Event().wait()
        if self.generation == "error":
            error = {"message": "engine dead", "type": "InternalServerError", "param": None,
                     "code": 500}  # fmt: skip
            await self._json(send, 500, {"error": error})
            return
        choice = {"index": 0, "text": "!", "logprobs": None, "finish_reason": "length"}
        await self._json(send, 200, {"id": "cmpl-1", "object": "text_completion",
                                     "model": self.model, "choices": [choice]})  # fmt: skip

    def _tool_call(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if not request.get("tools") or request.get("tool_choice") == "none":
            return None
        last = request["messages"][-1]
        if last.get("role") != "user":
            return None  # after the tool result: answer in text
        name = request["tools"][0]["function"]["name"]
        return {
            "id": "chatcmpl-tool-1",
            "type": "function",
            "function": {"name": name, "arguments": _dumps({"city": "Paris"}).decode()},
        }

    async def _batch(self, request: dict[str, Any], send: Send) -> None:
        """vLLM's batch answer: one non-streamed choice per conversation."""
        choices = [
            {"index": i, "message": {"role": "assistant", "content": self.answer,
                                     "reasoning": None},
             "logprobs": None, "finish_reason": "stop"}
            for i in range(len(request["messages"]))
        ]  # fmt: skip
        await self._json(send, 200, {"id": "chatcmpl-1", "created": int(time.time()),
                                     "model": self.model, "object": "chat.completion",
                                     "choices": choices})  # fmt: skip

    async def _chat(self, request: dict[str, Any], send: Send) -> None:
        tool_call = self._tool_call(request)
        text = TOOL_REASONING if tool_call else self.answer
        finish = "tool_calls" if tool_call else "stop"
        base = {"id": "chatcmpl-1", "created": int(time.time()), "model": self.model}
        n = LAX_INT.validate_python(request.get("n")) or 1
        if not LAX_BOOL.validate_python(request.get("stream")):
            choices = []
            for i in range(n):
                message: dict[str, Any] = {"role": "assistant", "content": text,
                                           "reasoning": None}  # fmt: skip
                if tool_call:
                    message["tool_calls"] = [tool_call]
                choices.append({"index": i, "message": message, "logprobs": None,
                                "finish_reason": finish})  # fmt: skip
            usage = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
            await self._json(send, 200, {**base, "object": "chat.completion",
                                         "choices": choices, "usage": usage})  # fmt: skip
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        chunk = {**base, "object": "chat.completion.chunk"}

        async def event(delta: dict[str, Any], i: int, finish_reason: str | None = None) -> None:
            choice = {"index": i, "delta": delta, "logprobs": None,
                      "finish_reason": finish_reason}  # fmt: skip
            data = b"data: " + _dumps({**chunk, "choices": [choice]}) + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})

        for i in range(n):
            await event({"role": "assistant", "content": ""}, i)
        self.streaming.set()
        step = self.chunk_chars
        for start in range(0, len(text), step):
            for i in range(n):
                await event({"content": text[start : start + step]}, i)
        if tool_call:
            for i in range(n):
                await event({"tool_calls": [{"index": 0, **tool_call}]}, i)
        if self.gate is not None:
            await self.gate.wait()
        for i in range(n):
            await event({"content": ""}, i, finish)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def call(
    app: Any,
    *,
    method: str = "GET",
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One in-process HTTP request to an ASGI app: (status, headers, body)."""
    all_headers = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    scope: dict[str, Any] = {
        "type": "http",
        "app": APP,  # Starlette sets it before the middlewares run
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": all_headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    done = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    status = 0
    response_headers: dict[bytes, bytes] = {}
    parts: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            response_headers.update(dict(message.get("headers", [])))
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status, response_headers, b"".join(parts)


async def accept_all(scope: Scope, receive: Receive, send: Send) -> None:
    """A vLLM that answers 200 to whatever reaches it (to tell our failures from its own).

    Chat paths get a chat completion whose content opens with `<think>` reasoning, streamed
    when the forwarded body asks for it, so the response side is exercised too.
    """
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # anything: /v1/completions bodies are not checked
        request = None
    stream = isinstance(request, dict) and request.get("stream") is True
    if scope["path"].startswith("/v1/chat/completions") and stream:
        chunks = [{"id": "c", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                  for text in ("<thi", "nk>\nwhy\n</th", "ink>\nSo.")]  # fmt: skip
        data = b"".join(b"data: " + _dumps(chunk) + b"\n\n" for chunk in chunks)
        content_type = b"text/event-stream"
        data += b"data: [DONE]\n\n"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER},
                  "finish_reason": "stop"}  # fmt: skip
        data = _dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [choice]})
        content_type = b"application/json"
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})
