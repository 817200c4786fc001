"""Ending in-flight requests cleanly at the drain deadline.

vLLM's `--shutdown-timeout N` stops its engine after N seconds of draining, but a response
still streaming then can stay open with no more bytes until the client goes away (seen on
vLLM 0.32 on CPU: 2 of 3 trials, once for 9.5 minutes); only the kubelet's SIGKILL would end
it. So shortly before vLLM's deadline the middleware ends every request still in flight
itself, in a form clients and the router recognise as retryable:

* a stream already started gets a final SSE error event (OpenAI's shape, `type`
  `service_unavailable`, code 503) and `data: [DONE]`, then the response ends;
* a response not started yet gets 503 with `Retry-After`;
* a non-streamed response already started (its body is sent whole, so this is rare) ends.

The request's handler in vLLM is cancelled, which aborts the generation in the engine.

A request that reaches vLLM's handler just as vLLM starts shutting down (it passed our drain
check a moment before the SIGTERM) is not generated at all: vLLM 0.32 streams a role chunk,
zero completion tokens and `[DONE]`, with no finish reason and no error, which reads as an
empty answer. So a stream that reaches `[DONE]` without any finish reason or error event gets
the same final error event as a cut one, just before its `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json

from .asgi import Message, Send, send_json
from .errors import error_body

CUTOFF_MESSAGE = (
    "this replica shut down before the response was complete; retry the request on another"
)
_DONE = b"data: [DONE]"
_FINISHED = b'"finish_reason":"'  # a non-null finish reason, as vLLM writes it (compact)
_ERROR = b'data: {"error"'

RETRY_HEADERS = ((b"retry-after", b"1"), (b"connection", b"close"))


def cutoff_after(shutdown_timeout_seconds: float) -> float:
    """When, after SIGTERM, requests still in flight are ended: before vLLM's own deadline."""
    margin = min(2.0, shutdown_timeout_seconds / 2)
    return max(0.0, shutdown_timeout_seconds - margin)


class Tracker:
    """Forwards what the app sends, noting how far the response got; silent after cutoff."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.streaming = False
        self.finished = False
        self.cut = False
        self._concluded = False  # a stream carried a finish reason or an error event

    async def send(self, message: Message) -> None:
        if self.cut:
            return
        if message["type"] == "http.response.start":
            self.started = True
            for key, value in message.get("headers", ()):
                if key.lower() == b"content-type":
                    self.streaming = bytes(value).lower().startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            if self.streaming:
                message = self._conclude(message)
            if not message.get("more_body", False):
                self.finished = True
        await self._send(message)

    def _conclude(self, message: Message) -> Message:
        """A stream's body, with the error event put before a `[DONE]` that ends it unfinished."""
        body: bytes = message.get("body", b"")
        if self._concluded or not body:
            return message
        if _FINISHED in body or _ERROR in body:
            self._concluded = True
            return message
        done = body.find(_DONE)
        if done < 0:
            return message
        self._concluded = True
        return {**message, "body": body[:done] + _error_event() + body[done:]}

    async def end(self) -> None:
        """End the response as the drain deadline requires."""
        self.cut = True
        if self.finished:
            return
        if not self.started:
            body = error_body(
                message=CUTOFF_MESSAGE, param=None, status=503, error_type="service_unavailable"
            )
            await send_json(self._send, status=503, body=body, extra_headers=RETRY_HEADERS)
            return
        tail = _error_event() + _DONE + b"\n\n" if self.streaming else b""
        await self._send({"type": "http.response.body", "body": tail, "more_body": False})


def _error_event() -> bytes:
    """The final SSE error event of a stream this replica could not finish (OpenAI's shape)."""
    event = json.loads(
        error_body(message=CUTOFF_MESSAGE, param=None, status=503, error_type="service_unavailable")
    )
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class InFlight:
    """The requests in flight, each with its task and tracker, so all can be cut at once.

    Registering costs a dict entry: no task or timer per request until the cutoff comes.
    """

    def __init__(self) -> None:
        self._requests: dict[int, tuple[asyncio.Task[object], Tracker]] = {}

    def add(self, tracker: Tracker) -> int:
        task = asyncio.current_task()
        assert task is not None
        self._requests[id(tracker)] = (task, tracker)
        return id(tracker)

    def discard(self, token: int) -> None:
        self._requests.pop(token, None)

    def cut_all(self) -> None:
        """Mark every request cut and cancel its task (the handler ends the response)."""
        for task, tracker in list(self._requests.values()):
            if not tracker.cut:
                tracker.cut = True
                task.cancel()


async def end_if_cut(tracker: Tracker) -> bool:
    """In a request's CancelledError handler: end the response if the cutoff cancelled it.

    Returns True when it did (the cancellation is then absorbed), False for any other
    cancellation (which the caller re-raises).
    """
    if not tracker.cut:
        return False
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    await tracker.end()
    return True
