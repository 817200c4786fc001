"""ASGI middlewares in the simulator, as ``vllm serve --middleware import.path`` loads them.

vLLM adds each ``--middleware`` class to its FastAPI app (``app.add_middleware(cls)``:
Starlette builds it as ``cls(app)``, the last one outermost). The simulator does the same
when ``--middleware`` is given: the API becomes an ASGI 3 app (``SimulatorAsgi``), each
middleware class wraps it, and the HTTP server talks to the outermost one through
``AsgiBridge``. The scope carries ``app`` (the outermost app, as Starlette's does) and the
lifespan ``state``; the lifespan protocol runs at start and stop. Without ``--middleware``
none of this is used and requests take the direct path.

Only ASGI classes are supported (not Starlette ``@app.middleware("http")`` functions).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from e2e.engine.api import OpenAIApp
from e2e.engine.http import Request, Response

log = logging.getLogger("e2e.engine.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _AsgiResponse:
    """A ``Response`` whose writes become ASGI messages, sent in order by a pump task.

    The engine writes tokens synchronously from its step; the pump awaits ``send`` (and so
    the middlewares) for each of them in turn.
    """

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.started = False
        self.finished = False
        self.aborted = False
        self._callbacks: list[Callable[[], None]] = []
        self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while (message := await self._queue.get()) is not None:
            await self._send(message)

    def _start(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        if self.started:
            raise RuntimeError("response already started")
        self.started = True
        encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._queue.put_nowait(
            {"type": "http.response.start", "status": status, "headers": encoded}
        )

    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        all_headers = [("content-type", content_type), ("content-length", str(len(body)))]
        self._start(status, [*all_headers, *headers])
        self.end(body)

    def start_stream(
        self,
        status: int = 200,
        *,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._start(status, [("content-type", content_type), *headers])

    def write(self, data: bytes) -> None:
        if data and not self.finished:
            self._queue.put_nowait({"type": "http.response.body", "body": data, "more_body": True})

    def end(self, data: bytes = b"") -> None:
        if self.finished:
            return
        self.finished = True
        self._queue.put_nowait({"type": "http.response.body", "body": data, "more_body": False})
        self._queue.put_nowait(None)

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self.aborted = True
            self._queue.put_nowait(None)

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def client_gone(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        if not self.finished:
            for callback in callbacks:
                callback()

    async def flush(self) -> None:
        if not self.finished:
            self.abort()
        await self._pump


class SimulatorAsgi:
    """The simulator's API as an ASGI 3 application (the "vLLM app" middlewares wrap)."""

    def __init__(self, app: OpenAIApp) -> None:
        self.app = app

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
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name, value = (
                bytes(raw_name).decode("latin-1").lower(),
                bytes(raw_value).decode("latin-1"),
            )
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        client = scope.get("client") or ("", 0)
        request = Request(
            method=str(scope["method"]),
            path=str(scope["path"]),
            query=bytes(scope.get("query_string", b"")).decode("latin-1"),
            version=f"HTTP/{scope.get('http_version', '1.1')}",
            headers=headers,
            body=b"".join(chunks),
            peer=f"{client[0]}:{client[1]}",
        )
        response = _AsgiResponse(send)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            response.client_gone()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self.app(request, response)
        finally:
            watcher.cancel()
            await response.flush()
        if response.aborted:
            raise ConnectionAbortedError("the simulator dropped the response")


class AsgiBridge:
    """The HTTP server's handler when middlewares are loaded: one ASGI call per request."""

    def __init__(self, app: ASGIApp, *, host: str) -> None:
        self.app = app
        self.host = host
        self.port = 0
        self.state: dict[str, Any] = {}
        self._lifespan: asyncio.Task[None] | None = None
        self._shutdown = asyncio.Event()
        self._shutdown_done = asyncio.Event()

    def _scope(self, req: Request) -> Scope:
        client_ip, _, client_port = req.peer.rpartition(":")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": req.version.removeprefix("HTTP/"),
            "method": req.method,
            "scheme": "http",
            "path": req.path,
            "raw_path": req.path.encode(),
            "query_string": req.query.encode(),
            "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in req.headers.items()],
            "client": (client_ip, int(client_port or 0)),
            "server": (self.host, self.port),
            "app": self.app,
            "state": dict(self.state),
        }

    async def __call__(self, req: Request, resp: Response) -> None:
        gone = asyncio.Event()
        resp.on_disconnect(gone.set)
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        status = 0
        headers: list[tuple[str, str]] = []
        fixed: list[bytes] | None = None
        done = False

        async def send(message: Message) -> None:
            nonlocal status, headers, fixed, done
            if done:
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1"))
                    for k, v in message.get("headers", ())
                ]
                if any(name == "content-length" for name, _ in headers):
                    fixed = []
                else:
                    content_type = next((v for k, v in headers if k == "content-type"), "")
                    others = [(k, v) for k, v in headers if k != "content-type"]
                    resp.start_stream(status, content_type=content_type, headers=others)
            elif message["type"] == "http.response.body":
                body = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if fixed is not None:
                    fixed.append(body)
                    if not more:
                        done = True
                        content_type = next((v for k, v in headers if k == "content-type"), "")
                        others = [
                            (k, v)
                            for k, v in headers
                            if k not in ("content-type", "content-length")
                        ]
                        resp.send(
                            status, b"".join(fixed), content_type=content_type, headers=others
                        )
                else:
                    resp.write(body)
                    if not more:
                        done = True
                        resp.end()

        try:
            await self.app(self._scope(req), receive, send)
        except Exception:
            if not resp.started:
                log.exception("%s %s failed", req.method, req.path)
                resp.send(500, b'{"detail":"Internal Server Error"}')
            else:
                resp.abort()
            return
        if not done:
            if resp.started:
                resp.end()
            else:
                resp.send(500, b'{"detail":"no response"}')

    # ------------------------------------------------------------------ lifespan
    async def startup(self) -> None:
        """Run the lifespan startup of the whole stack (middlewares may install things)."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sent_startup = False

        async def receive() -> Message:
            nonlocal sent_startup
            if not sent_startup:
                sent_startup = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete" and not started.done():
                started.set_result(None)
            elif kind == "lifespan.startup.failed" and not started.done():
                started.set_exception(RuntimeError(message.get("message", "startup failed")))
            elif kind.startswith("lifespan.shutdown"):
                self._shutdown_done.set()

        scope: Scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "app": self.app,
            "state": self.state,
        }

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            finally:
                if not started.done():
                    started.set_exception(RuntimeError("the app does not support lifespan"))
                self._shutdown_done.set()

        self._lifespan = asyncio.get_running_loop().create_task(run())
        await started

    async def shutdown(self, *, timeout: float = 5.0) -> None:
        if self._lifespan is None:
            return
        self._shutdown.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shutdown_done.wait(), timeout)
        self._lifespan.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._lifespan


def load_middlewares(app: ASGIApp, paths: Sequence[str]) -> ASGIApp:
    """Wrap ``app`` in each ``module.Class`` of ``paths``, the last one outermost (vLLM)."""
    for path in paths:
        module_name, _, attr = path.rpartition(".")
        if not module_name:
            raise ValueError(f"--middleware {path!r}: expected module.Class")
        target = getattr(importlib.import_module(module_name), attr)
        if not isinstance(target, type):
            raise ValueError(f"--middleware {path!r}: only ASGI middleware classes are supported")
        app = target(app)
        log.info("loaded middleware %s", path)
    return app
