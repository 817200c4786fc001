"""A small HTTP/1.1 server on asyncio's Protocol API (standard library only).

Enough of HTTP/1.1 for OpenAI clients, Prometheus scrapers and probes: keep-alive with an
idle timeout, pipelining (one request at a time), ``Content-Length`` and chunked request
bodies, ``Expect: 100-continue``, fixed-length and chunked (SSE) responses, write flow control
and immediate notice of a client that disconnects (so its request can be aborted). Draining
stops the listener, closes idle connections and lets busy ones finish their response.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

log = logging.getLogger("e2e.engine.http")
access_log = logging.getLogger("e2e.engine.access")

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_HEADERS = 100
HIGH_WATER = 256 * 1024


class HttpError(Exception):
    """A request that cannot be parsed; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: bytes
    peer: str


class Response(Protocol):
    """What a handler writes its one response to (a connection, or an ASGI ``send``)."""

    @property
    def started(self) -> bool: ...

    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...

    def start_stream(
        self,
        status: int = 200,
        *,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None: ...

    def write(self, data: bytes) -> None: ...

    def end(self, data: bytes = b"") -> None: ...

    def abort(self) -> None: ...

    def on_disconnect(self, callback: Callable[[], None]) -> None: ...


Handler = Callable[[Request, "Responder"], Awaitable[None]]

_date_cache: list[tuple[int, bytes]] = [(0, b"")]


def _date_header() -> bytes:
    now = int(time.time())
    if _date_cache[0][0] != now:
        _date_cache[0] = (now, email.utils.formatdate(now, usegmt=True).encode())
    return _date_cache[0][1]


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class Responder:
    """Writes the one response to one request."""

    def __init__(self, proto: HttpProtocol, *, request: Request, keep_alive: bool) -> None:
        self._proto = proto
        self.request = request
        self.keep_alive = keep_alive
        self.status = 0
        self.started = False
        self.finished = False
        self._chunked = False
        self._callbacks: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ state
    @property
    def disconnected(self) -> bool:
        return self._proto.closed

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) if the client goes away before the response is finished."""
        self._callbacks.append(callback)

    def _client_gone(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        if self.finished:
            return
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("disconnect callback failed")

    # ---------------------------------------------------------------- writing
    def _head(self, status: int, *, headers: Sequence[tuple[str, str]]) -> bytes:
        self.status = status
        self.started = True
        parts = [_status_line(status), b"date: ", _date_header(), b"\r\nserver: uvicorn\r\n"]
        for name, value in headers:
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A complete response with a ``Content-Length``."""
        if self.started:
            raise RuntimeError("response already started")
        all_headers = [("content-length", str(len(body))), *headers]
        if body or content_type != "application/json":
            all_headers.insert(0, ("content-type", content_type))
        head = self._head(status, headers=all_headers)
        self.finished = True
        self._proto.write(head if self.request.method == "HEAD" else head + body)

    def start_stream(
        self,
        status: int = 200,
        *,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Start a chunked response (server-sent events)."""
        if self.started:
            raise RuntimeError("response already started")
        self._chunked = True
        self._proto.write(
            self._head(
                status,
                headers=[
                    ("content-type", content_type),
                    *headers,
                    ("transfer-encoding", "chunked"),
                ],
            )
        )

    def write(self, data: bytes) -> None:
        """One chunk of a streamed response (dropped if the client is gone)."""
        if data and not self.finished:
            self._proto.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self, data: bytes = b"") -> None:
        if self.finished:
            return
        self.finished = True
        tail = b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n"
        self._proto.write(tail)

    async def drain(self) -> None:
        await self._proto.drain()

    def abort(self) -> None:
        """Drop the connection without finishing the response."""
        self.finished = True
        self.keep_alive = False
        self._proto.abort()


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._busy = False
        self.closed = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._responder: Responder | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._continue_sent = False
        self._peer = ""

    @property
    def busy(self) -> bool:
        return self._busy

    # ------------------------------------------------------------- callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        self._server.connections.add(self)
        if self._server.draining:
            transport.close()
            return
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool:
        return False  # a half-closed client is treated as gone

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connections.discard(self)
        self._server.connection_closed()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._wake_drainers()
        if self._responder is not None:
            self._responder._client_gone()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drainers()

    # --------------------------------------------------------------- writing
    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        if self._paused and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def close_if_idle(self) -> None:
        if not self._busy:
            self.close()

    # --------------------------------------------------------------- reading
    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        keep_alive = self._server.keep_alive_s
        if keep_alive > 0:
            self._idle = asyncio.get_running_loop().call_later(keep_alive, self.close_if_idle)

    def _process(self) -> None:
        if self.closed:
            return
        try:
            request = self._parse()
        except HttpError as err:
            self._reject(err.status, str(err))
            return
        if request is None:
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._busy = True
        asyncio.get_running_loop().create_task(self._handle(request))

    def _reject(self, status: int, message: str) -> None:
        body = f'{{"detail":"{message}"}}'.encode()
        head = (
            _status_line(status)
            + b"content-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        self.write(head + body)
        self.close()

    def _parse(self) -> Request | None:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD_BYTES:
                raise HttpError(431, "Request Header Fields Too Large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise HttpError(400, "Bad Request") from None
        if not version.startswith("HTTP/1."):
            raise HttpError(505, "HTTP Version Not Supported")
        if len(lines) - 1 > MAX_HEADERS:
            raise HttpError(431, "Request Header Fields Too Large")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "Bad Request")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = self._chunked_body(start)
            if parsed is None:
                self._maybe_continue(headers)
                return None
            body, consumed = parsed
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise HttpError(400, "Bad Request") from None
            if length < 0:
                raise HttpError(400, "Bad Request")
            if length > MAX_BODY_BYTES:
                raise HttpError(413, "Request Entity Too Large")
            if len(buf) - start < length:
                self._maybe_continue(headers)
                return None
            body, consumed = bytes(buf[start : start + length]), start + length
        del buf[:consumed]
        self._continue_sent = False
        path, _, query = target.partition("?")
        return Request(method, path, query, version, headers, body, self._peer)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if headers.get("expect", "").lower() == "100-continue" and not self._continue_sent:
            self._continue_sent = True
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _chunked_body(self, start: int) -> tuple[bytes, int] | None:
        buf = self._buf
        pos = start
        parts: list[bytes] = []
        total = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                raise HttpError(400, "Bad Request") from None
            total += size
            if total > MAX_BODY_BYTES:
                raise HttpError(413, "Request Entity Too Large")
            pos = eol + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", pos - 2)
                if trailer_end < 0:
                    return None
                return b"".join(parts), trailer_end + 4
            if len(buf) < pos + size + 2:
                return None
            parts.append(bytes(buf[pos : pos + size]))
            pos += size + 2

    # -------------------------------------------------------------- handling
    async def _handle(self, request: Request) -> None:
        connection = request.headers.get("connection", "").lower()
        if request.version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        responder = Responder(
            self, request=request, keep_alive=keep_alive and not self._server.draining
        )
        self._responder = responder
        try:
            await self._server.handler(request, responder)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            if not responder.started:
                responder.send(500, b'{"detail":"Internal Server Error"}')
            else:
                responder.abort()
        if not responder.finished:
            if responder.started:
                responder.end()
            else:
                responder.send(500, b'{"detail":"no response"}')
        self._responder = None
        self._busy = False
        if self._server.access_log and request.path not in ("/health", "/metrics", "/ping"):
            access_log.info(
                '%s - "%s %s %s" %d',
                self._peer,
                request.method,
                request.path,
                request.version,
                responder.status,
            )
        self._server.connection_quiet()
        if self.closed:
            return
        if not responder.keep_alive or self._server.draining:
            self.close()
        elif self._buf:
            self._process()
        else:
            self._arm_idle()


class HttpServer:
    """Listens on one address; ``handler`` answers every request."""

    def __init__(
        self, handler: Handler, *, keep_alive_s: float = 5.0, access: bool = False
    ) -> None:
        self.handler = handler
        self.keep_alive_s = keep_alive_s
        self.access_log = access
        self.connections: set[HttpProtocol] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._quiet = asyncio.Event()

    async def start(self, *, host: str, port: int) -> int:
        """Bind and listen; return the port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self), host, port, reuse_address=True, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        return int(sockname[1])

    @property
    def busy(self) -> int:
        return sum(1 for conn in self.connections if conn.busy)

    def begin_drain(self) -> None:
        """Stop accepting connections; close the idle ones; busy ones close after responding."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    def connection_quiet(self) -> None:
        if self.busy == 0:
            self._quiet.set()

    def connection_closed(self) -> None:
        self.connection_quiet()

    async def wait_quiet(self) -> None:
        """Until no connection has a request in progress."""
        while self.busy:
            self._quiet.clear()
            await self._quiet.wait()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            self._server.close()
