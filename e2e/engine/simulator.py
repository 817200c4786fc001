"""One simulated vLLM replica: ``python -m e2e.engine.simulator --host 127.64.0.5 …``.

Like ``vllm serve``, it does not listen until the model is "loaded" (``--startup-delay``), and on
SIGTERM it stops accepting, lets in-flight requests finish for up to ``--shutdown-timeout``
seconds (vLLM's flag; 0 aborts them at once) and exits. SIGUSR1 makes ``/health`` answer 503
(a failing engine), SIGUSR2 makes it healthy again. It binds loopback addresses only.

    from e2e.engine.simulator import Simulator
    sim = Simulator(SimConfig(port=0)); await sim.start(); ...; await sim.shutdown(timeout=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry

from e2e.engine.api import OpenAIApp
from e2e.engine.asgi import AsgiBridge, SimulatorAsgi, load_middlewares
from e2e.engine.config import SimConfig, config_from_args
from e2e.engine.engine import Engine
from e2e.engine.http import Handler, HttpServer

log = logging.getLogger("e2e.engine.simulator")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def is_loopback(host: str) -> bool:
    """True for a 127.x.y.z address (or a name that resolves only to such addresses)."""
    try:
        return ipaddress.ip_address(host) in LOOPBACK
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]) in LOOPBACK for i in infos)


class Simulator:
    """The engine, the API and the HTTP server of one replica, in the running event loop."""

    def __init__(self, config: SimConfig, *, registry: CollectorRegistry | None = None) -> None:
        """``registry``: for the engine's metrics (the process main passes the default one)."""
        if not is_loopback(config.host):
            raise ValueError(f"refusing to bind {config.host!r}: only 127.0.0.0/8 is allowed")
        self.config = config
        self.engine = Engine(config, registry=registry)
        self.app = OpenAIApp(config=config, engine=self.engine)
        handler: Handler = self.app
        self.bridge: AsgiBridge | None = None
        if config.middlewares:
            stack = load_middlewares(SimulatorAsgi(self.app), config.middlewares)
            self.bridge = AsgiBridge(stack, host=config.host)
            handler = self.bridge
        self.server = HttpServer(
            handler, keep_alive_s=config.keep_alive_s, access=config.access_log
        )
        self.port = config.port

    async def start(self) -> int:
        """Start the engine and listen; return the bound port."""
        self.engine.start()
        if self.bridge is not None:
            await self.bridge.startup()  # like uvicorn: lifespan first, then listen
        self.port = await self.server.start(host=self.config.host, port=self.config.port)
        if self.bridge is not None:
            self.bridge.port = self.port
        return self.port

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def set_healthy(self, healthy: bool) -> None:
        self.app.healthy = healthy
        log.info("health set to %s", "ok" if healthy else "failing (503)")

    async def shutdown(self, *, timeout: float, force: asyncio.Event | None = None) -> int:
        """Stop accepting; finish in-flight requests for up to ``timeout`` s; abort the rest.

        Returns how many requests were aborted.
        """
        self.app.draining = True
        self.engine.stop_accepting()
        self.server.begin_drain()
        if timeout > 0 and self.engine.in_flight:
            log.info("draining %d in-flight requests (up to %gs)", self.engine.in_flight, timeout)
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._finish_in_flight())]
            if force is not None:
                waits.append(asyncio.ensure_future(force.wait()))
            _, pending = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
        aborted = self.engine.in_flight
        if aborted:
            log.warning("aborting %d requests still in flight", aborted)
        await self.engine.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_quiet(), 1.0)
        self.server.close_all()
        if self.bridge is not None:
            await self.bridge.shutdown()
        return aborted

    async def _finish_in_flight(self) -> object:
        await self.engine.wait_idle()
        await self.server.wait_quiet()
        return None


async def serve(config: SimConfig) -> int:
    """The process main: load (delay), listen, run until SIGTERM/SIGINT, drain, exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()
    health = [config.start_healthy]
    sim: Simulator | None = None

    def set_health(healthy: bool) -> None:
        health[0] = healthy
        if sim is not None:
            sim.set_healthy(healthy)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, set_health, False)
    loop.add_signal_handler(signal.SIGUSR2, set_health, True)
    if config.startup_delay_s > 0:
        log.info("loading the model (%.1fs; the port stays closed)", config.startup_delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.startup_delay_s)
        if stop.is_set():
            log.info("stopped while loading")
            return 0
    try:
        # One replica per process: its metrics in the default registry, as vLLM's are.
        sim = Simulator(config, registry=REGISTRY)
        sim.app.healthy = health[0]
        port = await sim.start()
    except OSError as err:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, err)
        return 1
    except Exception:
        log.exception("start-up failed")
        return 1
    print(
        f"Uvicorn running on http://{config.host}:{port} (simulated vLLM, model "
        f"{config.served_model_name}, max_num_seqs {config.max_num_seqs}, KV "
        f"{config.kv_cache_tokens} tokens, ITL {config.itl_ms:g} ms)",
        flush=True,
    )
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, force.set)  # a second signal aborts at once
    log.info("shutting down (timeout %gs)", config.shutdown_timeout_s)
    await sim.shutdown(timeout=config.shutdown_timeout_s, force=force)
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = config_from_args(argv)
    if not is_loopback(config.host):
        log.error("refusing to bind %r: only 127.0.0.0/8 addresses are allowed", config.host)
        return 2
    problems = config.problems()
    for problem in problems:
        log.error("%s", problem)
    if problems:
        return 1
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
