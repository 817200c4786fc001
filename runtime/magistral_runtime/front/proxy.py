"""The proxy: every request on the front's port, through the gate, to vllm-router and back.

The body is read whole (up to ``--max-body-bytes``) so the request can be sent again when the
router turns it away for want of workers: a 503 whose body says so ("No workers are currently
available", "No available workers (all circuits open or unhealthy)", ... in vllm-router
0.1.17), or a router that cannot be reached (refused, or gone before answering: a restarting
router container). The response is streamed back chunk by chunk, as it comes. A client that
goes away cancels the handler (aiohttp's handler cancellation), which closes the router
connection and frees the slot.

vllm-router's worker management (``/add_worker``, ``/remove_worker``, ``/workers``, ...) takes
no credentials (docs/router-facts.md §1, §5); it stays on the router's loopback port and is
refused here with 404.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Mapping
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..errors import error_body
from .admission import Gate, HoldTimeoutError
from .config import FrontConfig

log = logging.getLogger("magistral_runtime.front.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""RFC 9110 §7.6.1: meaningful for one connection only, never forwarded."""
REQUEST_DROPPED = HOP_BY_HOP | {"host", "content-length"}
"""Also set anew for the router connection (the body is sent whole)."""

ROUTER_ADMIN_PATHS = frozenset(
    {
        "/add_worker",
        "/remove_worker",
        "/list_workers",
        "/workers",
        "/flush_cache",
        "/get_loads",
        "/finish_session",
    }
)
ROUTER_ADMIN_PREFIXES = ("/workers/", "/scheduling/")
NO_WORKERS = re.compile(rb"\bno (?:available |healthy )?workers?\b", re.IGNORECASE)
NO_WORKERS_PEEK_BYTES = 4096
"""How much of a router 503 is read to tell "no workers" from an engine's own 503."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_router_admin(path: str) -> bool:
    """True for vllm-router's worker management routes, however the path is spelled."""
    canonical = posixpath.normpath("/" + unquote(path)).lower()
    if canonical.startswith("//"):
        canonical = "/" + canonical.lstrip("/")
    return canonical in ROUTER_ADMIN_PATHS or canonical.startswith(ROUTER_ADMIN_PREFIXES)


def says_no_workers(status: int, head: bytes) -> bool:
    """The router's answer when it has no (healthy) worker for the request."""
    return status == 503 and NO_WORKERS.search(head) is not None


async def _peek(content: aiohttp.StreamReader, limit: int) -> bytes:
    """Up to ``limit`` bytes of a body (all of it when shorter)."""
    head = b""
    while len(head) < limit:
        chunk = await content.read(limit - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def forward_headers(
    headers: CIMultiDict[str] | Mapping[str, str], *, dropped: frozenset[str]
) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones (and those the Connection header names)."""
    drop = dropped | _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    items = headers.items()
    for name, value in items:
        if name.lower() not in drop:
            out.add(name, value)
    return out


def json_error(
    status: int,
    message: str,
    *,
    error_type: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style JSON error, like the engine's own."""
    body = error_body(message=message, param=None, status=status, error_type=error_type)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


class Proxy:
    """The aiohttp handler for every method and path on the front's port."""

    def __init__(self, *, config: FrontConfig, gate: Gate, session: aiohttp.ClientSession) -> None:
        self._config = config
        self._gate = gate
        self._session = session

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if is_router_admin(request.path):
            return json_error(
                404,
                f"{request.path} is the router's worker management; it is not served here",
                error_type="NotFoundError",
            )
        body = await self._read_body(request)
        if body is None:
            response = json_error(
                413,
                "the request body is larger than this endpoint's limit of "
                f"{self._config.max_body_bytes} bytes",
                error_type="invalid_request_error",
            )
            response.force_close()  # the rest of the body is not read
            return response
        with self._gate.ticket(hold_timeout=self._config.hold_timeout_seconds) as ticket:
            while True:
                try:
                    await ticket.admit()
                except HoldTimeoutError as exc:
                    return self._timeout_response(exc)
                answer = await self._forward(request, body)
                if answer is not None:
                    return answer
                ticket.no_workers()

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        limit = self._config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                return None
        return bytes(body)

    def _timeout_response(self, exc: HoldTimeoutError) -> web.Response:
        hold = f"{self._config.hold_timeout_seconds:g}"
        retry = self._config.retry_after_seconds
        if exc.draining:
            message = (
                "this router replica is shutting down and no replica of this endpoint took "
                f"the request in time (it waited {exc.waited:.0f} s); retry after {retry} s"
            )
        elif exc.held:
            message = (
                f"no replica of this endpoint became ready within {hold} s (the endpoint is "
                f"scaled to zero or starting); retry after {retry} s"
            )
        else:
            message = (
                f"every replica of this endpoint stayed busy for {hold} s (the request waited "
                f"in the router's queue); retry after {retry} s"
            )
        log.info("503 after %.1f s: %s", exc.waited, message)
        return json_error(
            503,
            message,
            error_type="ServiceUnavailable",
            headers={"Retry-After": str(retry)},
        )

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse | None:
        """Send to the router and relay its answer; None when it had no worker for it."""
        url = URL(self._config.router_url + request.raw_path, encoded=True)
        headers = forward_headers(request.headers, dropped=REQUEST_DROPPED)
        data = body if body or request.method in BODY_METHODS else None
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            ) as upstream:
                head = b""
                if upstream.status == 503:
                    head = await _peek(upstream.content, NO_WORKERS_PEEK_BYTES)
                    if says_no_workers(upstream.status, head):
                        log.debug("router: no workers for %s %s", request.method, request.path)
                        return None
                self._gate.responded(upstream.status)
                return await self._relay(request, upstream, head)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            # Refused, reset or closed before an answer: the router is (re)starting.
            log.info("router unreachable (%s); holding %s", exc, request.path)
            return None
        except aiohttp.ClientError as exc:
            log.warning("router request failed: %s", exc)
            self._gate.responded(502)
            return json_error(502, f"the router failed to answer: {exc}", error_type="BadGateway")

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, head: bytes
    ) -> web.StreamResponse:
        """Status, headers and body of ``upstream``, streamed as they come."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(forward_headers(upstream.headers, dropped=HOP_BY_HOP))
        await response.prepare(request)
        try:
            if head:
                await response.write(head)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError as exc:
            transport = request.transport
            if transport is None or transport.is_closing():
                log.debug("client went away during the response to %s", request.path)
                return response
            # The router broke off mid-answer: break the client's connection too, so the
            # client sees a truncated response rather than a complete-looking one.
            log.warning("router broke off the response to %s: %s", request.path, exc)
            transport.abort()
            return response
        await response.write_eof()
        return response
