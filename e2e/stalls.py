"""How long this process was not scheduled: the test machine's stalls, measured.

On the 2-core test machine a busy CPU engine can keep every other process off the CPU for
seconds: a Python loop sleeping 50 ms once woke 29.4 s late while three streams ran
(docs/real-engine.md, "Stalls of the test machine"). A test that times an answer measures
the stall with it. A `Heartbeat` thread sleeps in short steps and records each wake-up that
came late; a test subtracts the stall that overlapped what it timed (`stalled`), so that a
bound on the answer is a bound on the software, not on the machine's scheduler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

STEP_SECONDS = 0.05
"""How long the heartbeat sleeps between looks at the clock."""
LATE_SECONDS = 0.25
"""A wake-up this much later than asked for counts as a stall (the whole gap is recorded)."""

Gap = tuple[float, float]
"""(start, end) on the monotonic clock: the heartbeat slept from start and woke at end."""


def overlap(gaps: Iterable[Gap], since: float, until: float) -> float:
    """Seconds of `gaps` that fall inside [since, until]."""
    total = 0.0
    for start, end in gaps:
        total += max(0.0, min(end, until) - max(start, since))
    return total


class Heartbeat:
    """A daemon thread recording the gaps in which it was not woken on time.

    Use as a context manager (or `start` and `stop`); `stalled(since, until)` is the stall
    inside a span timed with `time.monotonic()`."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        step: float = STEP_SECONDS,
        late: float = LATE_SECONDS,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._step = step
        self._late = late
        self._gaps: list[Gap] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def gaps(self) -> list[Gap]:
        with self._lock:
            return list(self._gaps)

    def stalled(self, since: float, until: float) -> float:
        """Seconds in [since, until] in which this process was not scheduled."""
        return overlap(self.gaps, since, until)

    def _run(self) -> None:
        before = self._clock()
        while not self._stop.is_set():
            self._sleep(self._step)
            now = self._clock()
            if now - before > self._step + self._late:
                with self._lock:
                    self._gaps.append((before, now))
            before = now


_PROCESS: list[Heartbeat] = []
_PROCESS_LOCK = threading.Lock()


def process_heartbeat() -> Heartbeat:
    """One heartbeat for the whole process, started on first use (waits share it)."""
    with _PROCESS_LOCK:
        if not _PROCESS:
            _PROCESS.append(Heartbeat().start())
        return _PROCESS[0]


class Waited(NamedTuple):
    """How a `poll` ended."""

    value: Any
    """The check's last result: truthy when it was met."""
    seconds: float
    """From the first check to the last."""
    stalled: float
    """Of those seconds, how long the process was not scheduled."""


def poll(
    check: Callable[[], Any],
    *,
    timeout: float,
    interval: float,
    stalls: Callable[[float, float], float],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Waited:
    """Call `check` every `interval` seconds until it returns something truthy, or until
    `timeout` seconds have passed not counting `stalls(since, until)` (a `Heartbeat`'s
    `stalled`): a stall of the machine does not use up a wait's time. The check always runs
    once more after the last sleep, so a stall inside that sleep cannot fail a condition that
    holds by then."""
    start = clock()
    while True:
        value = check()
        now = clock()
        stalled = stalls(start, now)
        if value or now - start - stalled >= timeout:
            return Waited(value, now - start, stalled)
        sleep(interval)


def run_delay(pid: int, tid: int | None = None, *, proc: Path = Path("/proc")) -> float | None:
    """Seconds thread `tid` of process `pid` (its main thread by default) has spent runnable
    but waiting for a CPU, from the kernel's schedstat (its second field, in nanoseconds).

    Another process's stall, measured: the engine's API server answers from one event loop in
    its main thread, and on the 2-core test machine the engine's own compute threads can keep
    that thread waiting for a CPU while this process runs. The growth of this counter across an
    answer is time the answer spent off the CPU, not in the software. None when the thread is
    gone or the kernel does not keep the counter."""
    thread = pid if tid is None else tid
    try:
        fields = (proc / str(pid) / "task" / str(thread) / "schedstat").read_text().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def run_delay_meter(pid: int, *, proc: Path = Path("/proc")) -> Callable[[], float]:
    """Started now: each call gives how much `run_delay(pid)` has grown since (0.0 when either
    read fails, e.g. once the process has exited)."""
    before = run_delay(pid, proc=proc)

    def waited() -> float:
        after = run_delay(pid, proc=proc)
        return after - before if after is not None and before is not None else 0.0

    return waited
