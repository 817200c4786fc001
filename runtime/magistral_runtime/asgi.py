"""ASGI types and the few helpers the middleware needs (no framework: plain ASGI 3)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = ((b"content-type", b"application/json"),)


async def send_json(
    send: Send,
    *,
    status: int,
    body: bytes,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Send a complete JSON response."""
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def dumps(value: Any) -> bytes:
    """Compact JSON the way vLLM's pydantic models write it (UTF-8, no ASCII escaping).

    A lone UTF-16 surrogate (a request's `"\\ud800"`, which `json.loads` keeps as is) has
    no UTF-8 form: such a value is written with every non-ASCII character escaped instead,
    which is the same JSON, so vLLM reads exactly what the client sent.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (name in lower case)."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def with_header(
    headers: list[tuple[bytes, bytes]], name: bytes, value: bytes | None
) -> list[tuple[bytes, bytes]]:
    """A copy of `headers` with `name` replaced by `value` (removed when None)."""
    kept = [(k, v) for k, v in headers if k.lower() != name]
    if value is not None:
        kept.append((name, value))
    return kept
