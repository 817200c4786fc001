"""Graceful draining: on SIGTERM readiness fails first, new requests are refused, and
requests already running are left to finish until shortly before vLLM's own deadline,
when those still running are ended cleanly (cutoff.py).

vLLM 0.33.0 handles SIGTERM itself (vllm/entrypoints/launchers/launcher.py: an asyncio
signal handler that shuts the engine down in "drain" mode for `--shutdown-timeout` seconds,
then stops the HTTP server). The middleware adds the HTTP side: its own Python-level
SIGTERM handler, installed over the event loop's no-op one. Both run: the loop learns of
the signal through the wake-up fd, which a Python handler does not replace, so vLLM's
shutdown goes on as before and the previous handler is called too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("magistral_runtime.drain")

SignalHandler = Callable[[int, FrameType | None], object]


class DrainController:
    """Whether the server drains, and how many requests are still in flight."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        cutoff_seconds: float | None = None,
        on_cutoff: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self._draining_since: float | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set `cutoff_seconds` after draining begins: requests still in flight are ended then
        # (cutoff.py). None: never (requests are left to vLLM).
        self._cutoff_seconds = cutoff_seconds
        self._on_cutoff = on_cutoff
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self) -> None:
        """Remember the running event loop (the signal handler may run outside it)."""
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @property
    def draining(self) -> bool:
        return self._draining_since is not None

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin(self) -> None:
        """Start draining (idempotent)."""
        if self._draining_since is None:
            self._draining_since = self._clock()
            log.info("draining: %d request(s) in flight", self._in_flight)
            if self._cutoff_seconds is not None and self._loop is not None:
                # Thread-safe: SIGTERM's Python handler is not a loop callback.
                self._loop.call_soon_threadsafe(self._arm_cutoff)

    def _arm_cutoff(self) -> None:
        assert self._loop is not None
        assert self._cutoff_seconds is not None
        log.info("requests still in flight in %.1f s will be ended", self._cutoff_seconds)
        self._loop.call_later(self._cutoff_seconds, self._cut)

    def _cut(self) -> None:
        log.info("drain deadline: ending %d request(s) still in flight", self._in_flight)
        if self._on_cutoff is not None:
            self._on_cutoff()

    def enter(self) -> None:
        if self._loop is None:
            self.bind_loop()
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, *, timeout: float) -> bool:
        """Wait until no request is in flight; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def install_sigterm_handler(on_term: Callable[[], None]) -> Callable[[], None] | None:
    """Call `on_term` on SIGTERM, then the handler that was there before.

    Returns a function that restores the previous handler, or None when handlers cannot be
    installed here (not the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        on_term()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # Nobody else handles SIGTERM (not under vLLM's loop): terminate as before.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
