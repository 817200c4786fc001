"""The front's proxy (magistral_runtime.front.proxy) against a fake router on 127.0.0.1:
what it forwards, what it holds and retries, what it passes through, what it refuses.

The fake router answers like vllm-router 0.1.17 where it matters (its "no workers" 503s are
checked against the real binary in tests/e2e_engine/test_front_router.py). The gate's worker
count is set by the test, not polled, so every step is explicit.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from magistral_runtime.front.admission import Gate
from magistral_runtime.front.app import make_proxy_app, router_session
from magistral_runtime.front.config import DEFAULTS, FrontConfig
from magistral_runtime.front.proxy import is_router_admin, says_no_workers

HOST = "127.0.0.1"
NO_WORKERS = b"No workers are currently available"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeRouter:
    """Records what it received; ``respond`` decides each answer."""

    respond: Handler
    seen: list[tuple[str, str, CIMultiDict[str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, CIMultiDict(request.headers), body))
        return await self.respond(request)


@dataclass
class Front:
    gate: Gate
    session: aiohttp.ClientSession
    url: str


@asynccontextmanager
async def front_to(
    router_url: str, *, max_body_bytes: int = DEFAULTS.max_body_bytes
) -> AsyncIterator[Front]:
    config = FrontConfig(
        router_url=router_url, max_num_seqs=1, router_replicas=1, max_body_bytes=max_body_bytes
    )
    gate = Gate(max_num_seqs=1, router_replicas=1)
    async with router_session() as upstream:
        server = TestServer(make_proxy_app(config=config, gate=gate, session=upstream), host=HOST)
        await server.start_server()  # (test servers cancel handlers of departed clients)
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as client:
                yield Front(gate=gate, session=client, url=f"http://{HOST}:{server.port}")
        finally:
            await server.close()


@asynccontextmanager
async def fake_router(respond: Handler, *, port: int = 0) -> AsyncIterator[tuple[FakeRouter, str]]:
    fake = FakeRouter(respond)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host=HOST, port=port)
    await server.start_server()
    try:
        yield fake, f"http://{HOST}:{server.port}"
    finally:
        await server.close()


async def until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate()`` holds (bounded: fails, never hangs)."""
    async with asyncio.timeout(30):
        while not predicate():
            await asyncio.sleep(0.005)


def test_no_worker_answers_are_recognised() -> None:
    for body in (
        b"No workers are currently available",
        b"No available workers",
        b"No available workers (all circuits open or unhealthy)",
        b"No healthy worker pair available",
    ):
        assert says_no_workers(503, body), body
    assert not says_no_workers(500, NO_WORKERS)
    engine_503 = b'{"error":{"message":"the server is shutting down","code":503}}'
    assert not says_no_workers(503, engine_503)


@pytest.mark.parametrize(
    ("path", "admin"),
    [
        ("/add_worker", True),
        ("/remove_worker", True),
        ("/list_workers", True),
        ("/workers", True),
        ("/workers/http%3A%2F%2Fx", True),
        ("/flush_cache", True),
        ("/get_loads", True),
        ("//add_worker", True),
        ("/v1/../add_worker", True),
        ("/%61dd_worker", True),
        ("/ADD_WORKER", True),
        ("/finish_session", True),
        ("/scheduling/diagnostics", True),
        ("/v1/chat/completions", False),
        ("/v1/models", False),
        ("/health", False),
        ("/v1/workers", False),
    ],
)
def test_router_admin_paths(path: str, admin: bool) -> None:
    assert is_router_admin(path) is admin


async def test_no_workers_503_is_held_and_retried_with_the_same_body() -> None:
    answers = [web.Response(status=503, body=NO_WORKERS), web.json_response({"ok": True})]

    async def respond(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    async with fake_router(respond) as (router, url), front_to(url) as front:
        front.gate.set_workers(1)  # the poll said 1 worker; the router then says none
        call = asyncio.create_task(
            front.session.post(front.url + "/v1/chat/completions", data=b'{"x": 1}')
        )
        await until(lambda: front.gate.counts().held == 1)
        assert front.gate.counts().workers == 0  # the router's answer counts as 0 workers
        assert len(router.seen) == 1
        front.gate.set_workers(1)
        resp = await call
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
        assert [body for _, _, _, body in router.seen] == [b'{"x": 1}', b'{"x": 1}']
        await until(lambda: front.gate.counts().completed_total == 1)


async def test_other_503s_pass_through_untouched() -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=503,
            body=b'{"error":{"message":"draining","code":503}}',
            headers={"Retry-After": "5", "Content-Type": "application/json"},
        )

    async with fake_router(respond) as (router, url), front_to(url) as front:
        front.gate.set_workers(1)
        async with front.session.post(front.url + "/v1/chat/completions", data=b"{}") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert await resp.read() == b'{"error":{"message":"draining","code":503}}'
        assert len(router.seen) == 1
        assert front.gate.counts().workers == 1


async def test_refused_router_is_held_until_it_comes_back() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = int(s.getsockname()[1])
    url = f"http://{HOST}:{port}"  # nothing listens there yet

    async def respond(request: web.Request) -> web.StreamResponse:
        return web.json_response({"served": True})

    async with front_to(url) as front:
        front.gate.set_workers(1)
        call = asyncio.create_task(front.session.get(front.url + "/v1/models"))
        await until(lambda: front.gate.counts().held == 1)
        async with fake_router(respond, port=port):
            front.gate.set_workers(1)
            resp = await call
            assert resp.status == 200
            assert await resp.json() == {"served": True}


async def test_forwards_method_path_query_body_and_end_to_end_headers_only() -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.Response(status=201, body=b"made")
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.headers["X-Engine"] = "e1"
        resp.headers["Keep-Alive"] = "timeout=5"
        return resp

    async with fake_router(respond) as (router, url), front_to(url) as front:
        front.gate.set_workers(1)
        headers = {
            "Authorization": "Bearer k",
            "X-Request-Id": "r1",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "dropped",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic x",
            "TE": "trailers",
        }
        target = URL(front.url + "/v1/things?a=1&b=%2F", encoded=True)  # sent as written
        async with front.session.put(target, data=b"payload", headers=headers) as resp:
            assert resp.status == 201
            assert await resp.read() == b"made"
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert resp.headers["X-Engine"] == "e1"
            assert "Keep-Alive" not in resp.headers
        ((method, raw_path, seen_headers, body),) = router.seen
        assert (method, raw_path, body) == ("PUT", "/v1/things?a=1&b=%2F", b"payload")
        assert seen_headers["Authorization"] == "Bearer k"
        assert seen_headers["X-Request-Id"] == "r1"
        for hop in ("X-Hop", "Keep-Alive", "Proxy-Authorization", "TE"):
            assert hop not in seen_headers, hop


async def test_router_breaking_off_truncates_the_client_response() -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        await resp.write(b"data: 2\n\n")
        assert request.transport is not None
        request.transport.abort()  # the router dies mid-stream
        return resp

    async with fake_router(respond) as (_, url), front_to(url) as front:
        front.gate.set_workers(1)
        async with front.session.post(front.url + "/v1/chat/completions", data=b"{}") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # truncated, not a clean end the client would trust
        await until(lambda: front.gate.counts().in_flight == 0)
        assert front.gate.counts().completed_total == 1


async def test_body_over_the_limit_is_413_before_the_router() -> None:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"ok")

    async with fake_router(respond) as (router, url), front_to(url, max_body_bytes=100) as front:
        front.gate.set_workers(1)
        async with front.session.post(front.url + "/v1/x", data=b"y" * 101) as resp:
            assert resp.status == 413
            error = (await resp.json())["error"]
            assert (error["code"], error["param"]) == (413, None)
            assert "100 bytes" in error["message"]

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"z" * 30

        async with front.session.post(front.url + "/v1/x", data=chunked()) as resp:
            assert resp.status == 413  # no Content-Length: counted while read
        async with front.session.post(front.url + "/v1/x", data=b"y" * 100) as resp:
            assert resp.status == 200
        assert len(router.seen) == 1
        assert front.gate.counts().arrivals_total == 1


async def test_router_answers_are_counted_by_class_for_the_canary_analysis() -> None:
    """Every answer the router gives counts; 5xx among them (what clients saw fail). The
    no-workers 503, which the front holds and retries, is not an answer."""
    answers = [
        web.Response(status=503, body=NO_WORKERS),
        web.json_response({"ok": True}),
        web.Response(status=500, body=b'{"error":{"message":"boom","code":500}}'),
        web.Response(status=400, body=b"{}"),
    ]

    async def respond(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    async with fake_router(respond) as (_router, url), front_to(url) as front:
        front.gate.set_workers(1)
        call = asyncio.create_task(front.session.post(front.url + "/v1/chat/completions"))
        await until(lambda: front.gate.counts().held == 1)
        front.gate.set_workers(1)
        assert (await call).status == 200
        for expected in (500, 400):
            async with front.session.post(front.url + "/v1/chat/completions") as resp:
                assert resp.status == expected
        counts = front.gate.counts()
        assert counts.responses_total == 3
        assert counts.responses_5xx_total == 1
