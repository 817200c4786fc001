"""Deep readiness and liveness: is the engine producing tokens?

vLLM's /health answers 200 while the engine process lives, even when it is wedged and
produces nothing. Here readiness means "a one-token generation went through the engine
recently": `HealthMonitor` runs one (the `probe` coroutine, which the middleware points at
vLLM's own app in-process) with a timeout, and caches the result for `cache_seconds` so
frequent probes cost at most one tiny generation per period. Output that real requests
produce counts as a success too, so a busy engine is not asked for more work.

A saturated engine (every slot taken, requests waiting) queues the one-token generation
behind the others, so it can time out while the engine works flat out, and with
non-streamed requests no output reaches the client for minutes. So when the generation
times out, `engine_tokens` (vLLM's own count of generated tokens, when available) decides:
if the engine generated tokens while the probe waited, it is busy, not wedged, and counts
as serving.

* readiness fails before the first success (loading, warming up), while draining, when
  the last generation failed or timed out, and when `blocker` reports a problem (e.g. the
  system prompt cannot be read);
* liveness fails only when no generation has succeeded for `liveness_budget_seconds`
  (counted from start-up before the first success), never while draining: a restart is the
  cure for a wedged engine, not for a slow or a loading one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("magistral_runtime.health")


class ProbeError(RuntimeError):
    """The one-token generation did not succeed; the message says how."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    ok: bool
    status: str  # ready | serving | starting | unready | draining | alive | wedged
    detail: str = ""

    def body(self) -> bytes:
        return json.dumps({"status": self.status, "detail": self.detail}).encode()


class HealthMonitor:
    def __init__(
        self,
        *,
        probe: Callable[[], Awaitable[None]],
        timeout_seconds: float,
        cache_seconds: float,
        liveness_budget_seconds: float,
        is_draining: Callable[[], bool],
        blocker: Callable[[], str | None] = lambda: None,
        engine_tokens: Callable[[], float | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._timeout = timeout_seconds
        self._cache = cache_seconds
        self._budget = liveness_budget_seconds
        self._is_draining = is_draining
        self._blocker = blocker
        self._engine_tokens = engine_tokens
        self._clock = clock
        self._started = clock()
        self._last_success: float | None = None
        self._last_progress: float | None = None
        self._last_result: tuple[float, HealthReport] | None = None
        self._running: asyncio.Task[HealthReport] | None = None

    def note_progress(self) -> None:
        """Real traffic received output from the engine just now."""
        now = self._clock()
        self._last_progress = now
        self._last_success = now

    async def check(self) -> HealthReport:
        """The cached result of the one-token generation, running one when it is stale."""
        now = self._clock()
        if self._last_result is not None and now - self._last_result[0] < self._cache:
            return self._last_result[1]
        if self._running is None or self._running.done():
            self._running = asyncio.get_running_loop().create_task(self._run_probe())
        # Shielded: a probe request that times out must not cancel the shared check.
        return await asyncio.shield(self._running)

    async def _run_probe(self) -> HealthReport:
        tokens_before = self._engine_tokens()
        started = self._clock()
        try:
            await _within(self._probe(), self._timeout)
        except TimeoutError:
            generated = _increase(tokens_before, self._engine_tokens())
            if generated:
                self.note_progress()
                report = HealthReport(
                    ok=True,
                    status="serving",
                    detail=f"busy: one-token generation did not finish within {self._timeout:g}s "
                    f"but the engine generated {generated:.0f} tokens meanwhile",
                )
            else:
                report = HealthReport(
                    ok=False,
                    status="unready",
                    detail=f"one-token generation did not finish within {self._timeout:g}s",
                )
        except Exception as exc:  # any failure of the engine call is a failed check
            report = HealthReport(
                ok=False, status="unready", detail=f"one-token generation failed: {exc}"
            )
        else:
            self._last_success = self._clock()
            report = HealthReport(ok=True, status="ready", detail="one-token generation ok")
        if not report.ok:
            log.warning("readiness check failed: %s", report.detail)
        ended = self._clock()
        if ended - started > self._timeout + 1:  # the event loop was held up meanwhile
            took = ended - started
            log.warning("readiness check took %.1fs (generation timeout %gs)", took, self._timeout)
        self._last_result = (ended, report)
        return report

    async def readiness(self) -> HealthReport:
        if self._is_draining():
            return HealthReport(ok=False, status="draining", detail="shutting down")
        problem = self._blocker()
        if problem is not None:
            return HealthReport(ok=False, status="unready", detail=problem)
        now = self._clock()
        if self._last_progress is not None and now - self._last_progress < self._cache:
            return HealthReport(ok=True, status="serving", detail="requests are producing output")
        report = await self.check()
        if not report.ok and self._last_success is None:
            return HealthReport(ok=False, status="starting", detail=report.detail)
        return report

    def liveness(self) -> HealthReport:
        """Answers at once; starts a check in the background when the last one is stale."""
        now = self._clock()
        since = self._last_success if self._last_success is not None else self._started
        age = now - since
        if self._is_draining():
            return HealthReport(ok=True, status="draining", detail="shutting down")
        stale = self._last_result is None or now - self._last_result[0] >= self._cache
        if age > self._cache and stale and (self._running is None or self._running.done()):
            self._running = asyncio.get_running_loop().create_task(self._run_probe())
        if age <= self._budget:
            return HealthReport(ok=True, status="alive", detail=f"last success {age:.0f}s ago")
        return HealthReport(
            ok=False,
            status="wedged",
            detail=f"no successful generation for {age:.0f}s (budget {self._budget:g}s)",
        )


async def _within(probe: Awaitable[None], timeout: float) -> None:
    """Await `probe` for at most `timeout` seconds (TimeoutError after that).

    Unlike `asyncio.wait_for`, a timed-out probe is cancelled without waiting for its clean-up
    (the middleware's probe disconnects from vLLM and gives the handler a moment to abort): the
    readiness answer comes at the timeout, whatever the abandoned generation still does."""
    task = asyncio.ensure_future(probe)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_quiet)
        raise TimeoutError
    task.result()


def _quiet(task: asyncio.Future[None]) -> None:
    """An abandoned probe's end: read its outcome so asyncio does not log it as lost."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("an abandoned readiness generation ended with %r", exc)


def _increase(before: float | None, after: float | None) -> float:
    """How much a counter grew (0 when unknown)."""
    if before is None or after is None:
        return 0.0
    return max(0.0, after - before)
