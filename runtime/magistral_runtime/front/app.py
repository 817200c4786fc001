"""The front process: the gate, the router poller, the proxy and the demand port, and shutdown.

On SIGTERM (or SIGINT) the proxy port stops accepting connections; requests already in (held,
queued or in flight, and new ones on open keep-alive connections) go on for up to
``--drain-seconds``: waiting ones are answered 503 + Retry-After at that deadline, and what is
still running then is cut. The demand port answers until the end (``/healthz`` says
``draining``), so the operator can read the last demand.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import aiohttp
from aiohttp import web

from .admission import Gate
from .config import FrontConfig
from .proxy import Proxy
from .report import make_report_app
from .workers import WorkerPoller

log = logging.getLogger("magistral_runtime.front")

CONNECT_TIMEOUT_SECONDS = 5.0
CUT_SECONDS = 1.0
"""After the drain deadline: how long handlers get to end once cancelled."""


def router_session() -> aiohttp.ClientSession:
    """The one client session to the router: no pool limit, no total timeout (a generation
    takes as long as it takes), bodies passed through still encoded, no cookie jar (cookies
    belong to the clients, not to the front), no headers of its own."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_SECONDS),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
    )


def make_proxy_app(
    *, config: FrontConfig, gate: Gate, session: aiohttp.ClientSession
) -> web.Application:
    """The proxy port's application: every method and path goes to the proxy."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", Proxy(config=config, gate=gate, session=session).handle)
    return app


async def serve(config: FrontConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (default: SIGTERM or SIGINT), then drain and return."""
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    start_time = time.time()
    gate = Gate(max_num_seqs=config.max_num_seqs, router_replicas=config.router_replicas)
    async with router_session() as session:
        poller = WorkerPoller(
            session=session,
            router_url=config.router_url,
            gate=gate,
            interval=config.poll_interval_seconds,
        )
        poll_task = asyncio.create_task(poller.run(), name="router-poller")
        proxy_runner = web.AppRunner(
            make_proxy_app(config=config, gate=gate, session=session),
            handler_cancellation=True,  # a client that leaves cancels its request
            access_log=None,
            shutdown_timeout=CUT_SECONDS,
        )
        report_runner = web.AppRunner(
            make_report_app(
                gate=gate, poller=poller, start_time=start_time, draining=lambda: gate.draining
            ),
            access_log=None,
        )
        await proxy_runner.setup()
        await report_runner.setup()
        proxy_site = web.TCPSite(proxy_runner, config.host, config.port)
        await proxy_site.start()
        await web.TCPSite(report_runner, config.host, config.demand_port).start()
        log.info(
            "front listening on http://%s:%d (demand on port %d), router %s, "
            "max-num-seqs %d, router-replicas %d, hold timeout %g s",
            config.host,
            config.port,
            config.demand_port,
            config.router_url,
            config.max_num_seqs,
            config.router_replicas,
            config.hold_timeout_seconds,
        )
        try:
            await stop.wait()
            await drain(config, gate=gate, poller=poller, proxy_site=proxy_site)
        finally:
            await proxy_runner.cleanup()  # cuts what still runs after CUT_SECONDS
            poll_task.cancel()
            await report_runner.cleanup()
    log.info("front stopped")


async def drain(
    config: FrontConfig, *, gate: Gate, poller: WorkerPoller, proxy_site: web.TCPSite
) -> None:
    """Stop accepting, then wait for the requests already in, up to ``--drain-seconds``.

    The router container gets the pod's SIGTERM too, and vllm-router then stops listening at
    once (it finishes what it has in flight, without a time limit). Once a poll finds it gone,
    nothing that waits here can be sent any more: waiting requests get their 503 at once, so
    their clients retry elsewhere, instead of at the drain deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.drain_seconds
    await proxy_site.stop()
    gate.drain(deadline=deadline)
    watcher = asyncio.create_task(_end_waits_without_router(config, gate=gate, poller=poller))
    counts = gate.counts()
    log.info(
        "draining for up to %g s: %d held, %d queued, %d in flight",
        config.drain_seconds,
        counts.held,
        counts.queued,
        counts.in_flight,
    )
    try:
        async with asyncio.timeout_at(deadline):
            await gate.wait_idle()
    except TimeoutError:
        counts = gate.counts()
        log.warning("drain time over: cutting %d request(s) in flight", counts.in_flight)
    finally:
        watcher.cancel()


async def _end_waits_without_router(
    config: FrontConfig, *, gate: Gate, poller: WorkerPoller
) -> None:
    while poller.view.up:
        await asyncio.sleep(config.poll_interval_seconds)
    counts = gate.counts()
    log.info(
        "draining and the router is gone: answering %d waiting request(s) 503",
        counts.held + counts.queued,
    )
    gate.drain(deadline=asyncio.get_running_loop().time())


def run(config: FrontConfig) -> int:
    """The ``magistral-runtime front`` process."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(config))
    return 0
