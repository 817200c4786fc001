"""Polling vllm-router for its workers: how many are healthy, and how loaded each one is.

vllm-router 0.1.17's ``GET /workers`` answers (checked against the binary,
tests/e2e_engine/test_front_router.py)::

    {"workers": [{"url": "http://10.0.0.7:8000", "is_healthy": true, "load": 3, ...}],
     "total": 1, "stats": {...}}

``load`` is the router's own count of requests it has in flight on that worker. Its other
listings say less: ``/list_workers`` (``{"urls": [...]}``) keeps a worker its health checks
failed, and ``/get_loads`` asks each worker's ``/get_load``, which vLLM does not serve, so
every load there is ``-1``. The front counts only healthy workers: the router answers 503 for
a request it has only unhealthy workers for, just as with none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from .admission import Gate

log = logging.getLogger("magistral_runtime.front.workers")

WORKERS_PATH = "/workers"
POLL_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class RouterView:
    """What the last poll of the router found."""

    up: bool
    """The router answered the last poll with a worker list."""
    error: str | None
    workers: int
    """Healthy workers (0 when the router is down)."""
    loads: Mapping[str, int] = field(default_factory=dict)
    """Requests the router has in flight, per worker URL."""
    urls: tuple[str, ...] = ()
    """The healthy workers' URLs (the operator starts a canary's window once every router
    routes to it)."""


NOT_POLLED = RouterView(up=False, error="not polled yet", workers=0)


def parse_workers(payload: object) -> tuple[int, dict[str, int]]:
    """Healthy workers and loads from ``GET /workers``; ValueError when the shape is not it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("workers"), list):
        raise ValueError("GET /workers: expected an object with a 'workers' list")
    healthy = 0
    loads: dict[str, int] = {}
    for index, worker in enumerate(payload["workers"]):
        if not isinstance(worker, dict) or not isinstance(worker.get("url"), str):
            raise ValueError(f"GET /workers: workers[{index}] has no 'url' string")
        if worker.get("is_healthy") is True:
            healthy += 1
        load = worker.get("load")
        if isinstance(load, int) and not isinstance(load, bool):
            loads[worker["url"]] = load
    return healthy, loads


def healthy_urls(payload: object) -> tuple[str, ...]:
    """The URLs of the healthy workers in a ``GET /workers`` answer (checked by
    :func:`parse_workers` first), sorted."""
    assert isinstance(payload, dict)
    return tuple(sorted(w["url"] for w in payload["workers"] if w.get("is_healthy") is True))


class WorkerPoller:
    """Reads the router's workers every ``interval`` seconds into the gate and ``view``."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        router_url: str,
        gate: Gate,
        interval: float,
    ) -> None:
        self._session = session
        self._url = router_url + WORKERS_PATH
        self._gate = gate
        self._interval = interval
        self.view = NOT_POLLED
        self.polled_at: float | None = None
        """Unix time of the last poll, answered or not."""

    async def poll_once(self) -> RouterView:
        """One read; a failed one counts as zero workers (requests are then held)."""
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_SECONDS)
        try:
            async with self._session.get(self._url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ValueError(f"GET {WORKERS_PATH} answered {resp.status}")
                payload = await resp.json(content_type=None)
                workers, loads = parse_workers(payload)
            view = RouterView(
                up=True, error=None, workers=workers, loads=loads, urls=healthy_urls(payload)
            )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            view = RouterView(up=False, error=f"{type(exc).__name__}: {exc}".strip(), workers=0)
        if view.up != self.view.up or view.workers != self.view.workers:
            log.info(
                "router %s, %d healthy worker(s)%s",
                "up" if view.up else "down",
                view.workers,
                f" ({view.error})" if view.error else "",
            )
        self.view = view
        self.polled_at = time.time()
        self._gate.set_workers(view.workers)
        return view

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug, not the router: keep polling, say so
                log.exception("polling the router failed")
            await asyncio.sleep(self._interval)
