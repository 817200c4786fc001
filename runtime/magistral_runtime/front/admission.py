"""The admission gate: which requests go to the router now and which wait, and why (pure asyncio).

A request takes a ``Ticket`` when it arrives and ``admit()``s it before it is sent to the
router. At most ``capacity`` tickets are admitted at once:

    capacity = ceil(workers * max_num_seqs / router_replicas)   (0 without workers)

The others wait in one FIFO. While the router has no worker every waiting ticket is *held*
(scale from zero); while it has some they are *queued* (waiting for a slot). A ticket that
waits past its deadline gets ``HoldTimeoutError``. A ticket whose request the router turned away
for want of workers calls ``no_workers()``: its slot is given back, the gate counts zero
workers until the router says otherwise, and its next ``admit()`` puts it back at the head.

No network and no clock of its own: deadlines are the running loop's time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from types import TracebackType


def admission_capacity(*, workers: int, max_num_seqs: int, router_replicas: int) -> int:
    """How many requests one router replica admits at once: its share of the workers' slots."""
    if workers <= 0:
        return 0
    return -(-(workers * max_num_seqs) // router_replicas)


class HoldTimeoutError(Exception):
    """A request waited until its deadline without being admitted."""

    def __init__(self, *, held: bool, draining: bool, waited: float) -> None:
        super().__init__(f"not admitted after {waited:.1f} s")
        self.held = held
        """No worker when it timed out (else: workers, but no free slot)."""
        self.draining = draining
        """The deadline was the shutdown's, not the hold timeout."""
        self.waited = waited


@dataclass(frozen=True, slots=True)
class GateCounts:
    """The gate's state and counters at one moment."""

    held: int
    queued: int
    in_flight: int
    workers: int
    capacity: int
    arrivals_total: int
    completed_total: int
    hold_timeouts_total: int
    cancelled_total: int
    responses_total: int = 0
    """Answers relayed from the router (or the front's 502 when it broke off)."""
    responses_5xx_total: int = 0
    """Of those, 5xx: what clients saw fail (the canary analysis reads it)."""


class _Waiter:
    __slots__ = ("future", "timeout")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.timeout: asyncio.Timeout | None = None

    @property
    def granted(self) -> bool:
        return self.future.done() and not self.future.cancelled()


class Gate:
    """Admitted, waiting and finished requests of one front."""

    def __init__(self, *, max_num_seqs: int, router_replicas: int) -> None:
        if max_num_seqs < 1 or router_replicas < 1:
            raise ValueError("max_num_seqs and router_replicas must be at least 1")
        self.max_num_seqs = max_num_seqs
        self.router_replicas = router_replicas
        self._workers = 0
        self._in_flight = 0
        self._waiters: deque[_Waiter] = deque()
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_deadline: float | None = None
        self._arrivals = 0
        self._completed = 0
        self._timeouts = 0
        self._cancelled = 0
        self._responses = 0
        self._responses_5xx = 0

    # ------------------------------------------------------------------ state

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def capacity(self) -> int:
        return admission_capacity(
            workers=self._workers,
            max_num_seqs=self.max_num_seqs,
            router_replicas=self.router_replicas,
        )

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def counts(self) -> GateCounts:
        waiting = len(self._waiters)
        held = waiting if self._workers == 0 else 0
        return GateCounts(
            held=held,
            queued=waiting - held,
            in_flight=self._in_flight,
            workers=self._workers,
            capacity=self.capacity,
            arrivals_total=self._arrivals,
            completed_total=self._completed,
            hold_timeouts_total=self._timeouts,
            cancelled_total=self._cancelled,
            responses_total=self._responses,
            responses_5xx_total=self._responses_5xx,
        )

    def responded(self, status: int) -> None:
        """Count an answer the router gave (the front's own hold-timeout 503s are not)."""
        self._responses += 1
        if status >= 500:
            self._responses_5xx += 1

    # ------------------------------------------------------------------ inputs

    def set_workers(self, workers: int) -> None:
        """The router's worker count as last seen; admits waiters when slots opened."""
        self._workers = max(0, workers)
        self._wake()

    def ticket(self, *, hold_timeout: float) -> Ticket:
        """A new request (counted as an arrival) that may wait ``hold_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        self._arrivals += 1
        self._open += 1
        self._idle.clear()
        return Ticket(self, arrived=loop.time(), deadline=loop.time() + hold_timeout)

    def drain(self, *, deadline: float) -> None:
        """Shutting down: no request waits past ``deadline`` (loop time), waiting or new."""
        self._drain_deadline = deadline
        for waiter in self._waiters:
            if waiter.timeout is not None and not waiter.future.done():
                when = waiter.timeout.when()
                waiter.timeout.reschedule(deadline if when is None else min(when, deadline))

    async def wait_idle(self) -> None:
        """Return once no request is waiting, admitted or between the two."""
        await self._idle.wait()

    # ------------------------------------------------------------------ tickets

    async def _acquire(self, ticket: Ticket, *, first: bool) -> None:
        if not self._waiters and self._in_flight < self.capacity:
            self._in_flight += 1
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        deadline = ticket.deadline
        if self._drain_deadline is not None:
            deadline = min(deadline, self._drain_deadline)
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                waiter.timeout = timeout
                await waiter.future
        except TimeoutError:
            if waiter.granted:
                return  # admitted in the same instant the deadline passed: go
            self._forget(waiter)
            self._timeouts += 1
            raise HoldTimeoutError(
                held=self._workers == 0,
                draining=self._drain_deadline is not None
                and self._drain_deadline < ticket.deadline,
                waited=loop.time() - ticket.arrived,
            ) from None
        except asyncio.CancelledError:
            if waiter.granted:
                self._release()
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: _Waiter) -> None:
        # Already off the queue when _wake skipped it (its future was cancelled).
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.capacity:
            waiter = self._waiters.popleft()
            if waiter.future.done():
                continue  # its task was cancelled and has not run its cleanup yet
            self._in_flight += 1
            waiter.future.set_result(None)

    def _close(self, ticket: Ticket) -> None:
        if ticket.admitted:
            self._completed += 1
            self._release()
        elif not ticket.timed_out:
            self._cancelled += 1
        self._open -= 1
        if self._open == 0:
            self._idle.set()


class Ticket:
    """One request's passage through the gate; close it (``with``) when the request ends."""

    def __init__(self, gate: Gate, *, arrived: float, deadline: float) -> None:
        self._gate = gate
        self.arrived = arrived
        self.deadline = deadline
        self.admitted = False
        self.timed_out = False
        self._retry = False
        self._closed = False

    async def admit(self) -> None:
        """Wait for a slot (raises HoldTimeoutError at the deadline)."""
        if self.admitted:
            return
        try:
            await self._gate._acquire(self, first=self._retry)
        except HoldTimeoutError:
            self.timed_out = True
            raise
        self.admitted = True

    def no_workers(self) -> None:
        """The router had no worker for this request: give the slot back, wait at the head."""
        self._gate.set_workers(0)  # first: the freed slot must not admit the next in line
        if self.admitted:
            self.admitted = False
            self._gate._release()
        self._retry = True

    def close(self) -> None:
        """The request is over (answered, failed, timed out or abandoned by its client)."""
        if not self._closed:
            self._closed = True
            self._gate._close(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
