"""The front's admission gate (magistral_runtime.front.admission): capacity, FIFO, held vs
queued, timeouts, cancellation, the router's "no workers" and draining. Pure asyncio: no
network, no clock assertions (timeouts are short deadlines whose *outcome* is checked)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magistral_runtime.front.admission import (
    Gate,
    GateCounts,
    HoldTimeoutError,
    Ticket,
    admission_capacity,
)

LONG = 3600.0
"""A hold timeout no test reaches."""


@pytest.mark.parametrize(
    ("workers", "max_num_seqs", "router_replicas", "capacity"),
    [
        (0, 256, 2, 0),  # no worker: nothing is admitted, everything is held
        (1, 256, 2, 128),
        (1, 256, 1, 256),
        (3, 256, 2, 384),
        (1, 3, 2, 2),  # 1.5 rounds up: the replicas together may use every slot
        (1, 1, 2, 1),
        (5, 7, 3, 12),  # 35 / 3 = 11.67
        (2, 1, 3, 1),
        (4, 1024, 4, 1024),
    ],
)
def test_capacity_formula(
    workers: int, max_num_seqs: int, router_replicas: int, capacity: int
) -> None:
    assert (
        admission_capacity(
            workers=workers, max_num_seqs=max_num_seqs, router_replicas=router_replicas
        )
        == capacity
    )


@given(
    workers=st.integers(min_value=0, max_value=500),
    max_num_seqs=st.integers(min_value=1, max_value=4096),
    router_replicas=st.integers(min_value=1, max_value=16),
)
def test_capacity_is_the_ceiling_of_the_share(
    workers: int, max_num_seqs: int, router_replicas: int
) -> None:
    capacity = admission_capacity(
        workers=workers, max_num_seqs=max_num_seqs, router_replicas=router_replicas
    )
    slots = workers * max_num_seqs
    assert capacity * router_replicas >= slots  # the replicas' shares cover every slot
    assert capacity == 0 or (capacity - 1) * router_replicas < slots  # and no more


def test_gate_refuses_nonsense_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Gate(max_num_seqs=0, router_replicas=1)
    with pytest.raises(ValueError, match="at least 1"):
        Gate(max_num_seqs=1, router_replicas=0)


async def settle() -> None:
    """Let every runnable task run until none makes progress."""
    for _ in range(10):
        await asyncio.sleep(0)


class Client:
    """One request: takes a ticket, waits for admission, then waits to be told to finish."""

    def __init__(self, gate: Gate, name: str, order: list[str], *, hold: float = LONG) -> None:
        self.name = name
        self.ticket: Ticket = gate.ticket(hold_timeout=hold)
        self.finish = asyncio.Event()
        self.outcome: str | None = None
        self.error: HoldTimeoutError | None = None
        self._order = order
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.ticket:
            try:
                await self.ticket.admit()
            except HoldTimeoutError as exc:
                self.error = exc
                self.outcome = "timeout"
                return
            self._order.append(self.name)
            await self.finish.wait()
            self.outcome = "done"


async def test_fifo_order_and_held_then_queued_accounting() -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    clients = [Client(gate, name, order) for name in "ABCD"]
    await settle()
    # No worker: everything waits, and it waits *held* (scale from zero).
    assert order == []
    assert gate.counts() == GateCounts(
        held=4,
        queued=0,
        in_flight=0,
        workers=0,
        capacity=0,
        arrivals_total=4,
        completed_total=0,
        hold_timeouts_total=0,
        cancelled_total=0,
    )
    gate.set_workers(1)  # capacity 1
    await settle()
    assert order == ["A"]
    counts = gate.counts()
    assert (counts.held, counts.queued, counts.in_flight, counts.capacity) == (0, 3, 1, 1)
    # A later arrival queues behind the ones already waiting, even when a slot frees.
    late = Client(gate, "E", order)
    for client in clients:
        client.finish.set()
        await settle()
    assert order == ["A", "B", "C", "D", "E"]
    late.finish.set()
    await asyncio.gather(*(c.task for c in [*clients, late]))
    counts = gate.counts()
    assert (counts.in_flight, counts.completed_total, counts.arrivals_total) == (0, 5, 5)


async def test_more_workers_admit_more_at_once() -> None:
    gate = Gate(max_num_seqs=2, router_replicas=1)
    order: list[str] = []
    clients = [Client(gate, str(i), order) for i in range(7)]
    gate.set_workers(1)
    await settle()
    assert order == ["0", "1"]
    gate.set_workers(3)  # capacity 6
    await settle()
    assert order == ["0", "1", "2", "3", "4", "5"]
    assert (gate.counts().in_flight, gate.counts().queued) == (6, 1)
    gate.set_workers(1)  # capacity 2 < in flight: nothing is admitted until below it again
    for client in clients[:4]:
        client.finish.set()
    await settle()
    assert order == ["0", "1", "2", "3", "4", "5"]
    clients[4].finish.set()
    await settle()
    assert order[-1] == "6"
    for client in clients:
        client.finish.set()
    await asyncio.gather(*(c.task for c in clients))


@pytest.mark.parametrize("workers", [0, 1])
async def test_timeout_raises_and_says_held_or_queued(workers: int) -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    gate.set_workers(workers)
    busy = Client(gate, "busy", order)  # takes the one slot when there is a worker
    await settle()
    late = Client(gate, "late", order, hold=0.01)
    await late.task
    assert late.outcome == "timeout"
    assert late.error is not None
    assert late.error.held is (workers == 0)
    assert late.error.draining is False
    counts = gate.counts()
    assert counts.hold_timeouts_total == 1
    assert counts.cancelled_total == 0  # timed out is not "its client left"
    assert late.name not in order
    # The one that timed out left the queue: a freed slot goes to nobody else.
    assert counts.held + counts.queued == (1 if workers == 0 else 0)
    busy.finish.set()
    gate.set_workers(1)
    await busy.task
    assert gate.counts().in_flight == 0


async def test_cancelled_waiter_leaves_the_queue_and_is_counted() -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    gate.set_workers(1)
    first, second, third = (Client(gate, n, order) for n in ("first", "second", "third"))
    await settle()
    second.task.cancel()  # its client went away while it waited
    await settle()
    assert gate.counts().queued == 1
    assert gate.counts().cancelled_total == 1
    first.finish.set()
    await settle()
    assert order == ["first", "third"]
    third.finish.set()
    await asyncio.gather(first.task, third.task)
    assert gate.counts().in_flight == 0


async def test_cancelled_in_flight_request_releases_its_slot() -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    gate.set_workers(1)
    running, waiting = Client(gate, "running", order), Client(gate, "waiting", order)
    await settle()
    assert order == ["running"]
    running.task.cancel()  # the client disconnected mid-response
    await settle()
    assert order == ["running", "waiting"]
    assert gate.counts().in_flight == 1
    assert gate.counts().completed_total == 1  # finished (badly) after admission
    waiting.finish.set()
    await waiting.task


async def test_slot_granted_to_a_cancelled_waiter_goes_to_the_next() -> None:
    """Granted and cancelled in the same loop turn: the slot must not leak."""
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    a, b = Client(gate, "a", order), Client(gate, "b", order)
    await settle()
    gate.set_workers(1)  # grants a's future ...
    a.task.cancel()  # ... and a's client leaves before a runs
    await settle()
    assert order == ["b"]
    assert gate.counts().in_flight == 1
    b.finish.set()
    await asyncio.gather(a.task, b.task, return_exceptions=True)
    assert gate.counts().in_flight == 0


async def test_no_workers_gives_the_slot_back_and_retries_first() -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    gate.set_workers(1)
    first = gate.ticket(hold_timeout=LONG)
    await first.admit()
    order: list[str] = []
    behind = Client(gate, "behind", order)
    await settle()
    assert gate.counts().queued == 1
    first.no_workers()  # the router said it has no worker after all
    counts = gate.counts()
    # The gate now counts zero workers: nothing admitted, both held, the slot not reused.
    assert (counts.workers, counts.in_flight, counts.held, counts.queued) == (0, 0, 1, 0)
    retry = asyncio.create_task(first.admit())
    await settle()
    assert gate.counts().held == 2
    gate.set_workers(1)
    await settle()
    assert retry.done()  # the retried request went first, before the one behind it
    assert order == []
    first.close()
    await settle()
    assert order == ["behind"]
    behind.finish.set()
    await behind.task
    assert gate.counts().completed_total == 2
    assert gate.counts().arrivals_total == 2  # a retry is not a new arrival


async def test_drain_times_out_waiters_and_wait_idle_returns() -> None:
    gate = Gate(max_num_seqs=1, router_replicas=1)
    order: list[str] = []
    held = [Client(gate, str(i), order) for i in range(3)]
    await settle()
    idle = asyncio.create_task(gate.wait_idle())
    await settle()
    assert not idle.done()
    gate.drain(deadline=asyncio.get_running_loop().time())
    # (a bound, not a timing: without the drain they would wait an hour)
    await asyncio.wait_for(asyncio.gather(*(c.task for c in held)), timeout=60)
    assert [c.outcome for c in held] == ["timeout"] * 3
    assert all(c.error is not None and c.error.draining and c.error.held for c in held)
    await asyncio.wait_for(idle, timeout=60)  # fails if a ticket stayed open
    # New arrivals while draining wait no longer than the drain deadline either.
    late = Client(gate, "late", order)
    await asyncio.wait_for(late.task, timeout=60)
    assert late.outcome == "timeout"
    assert late.error is not None
    assert late.error.draining


# ----------------------------------------------------------------------------- a model


@dataclass
class Model:
    """What the gate should do, in the simplest terms: one queue, admit from its head."""

    capacity_per_worker: int
    workers: int = 0
    waiting: deque[int] = field(default_factory=deque)
    admitted: set[int] = field(default_factory=set)

    def settle(self) -> None:
        while self.waiting and len(self.admitted) < self.workers * self.capacity_per_worker:
            self.admitted.add(self.waiting.popleft())


class ModelClient:
    def __init__(self, gate: Gate, ident: int) -> None:
        self.ident = ident
        self.ticket = gate.ticket(hold_timeout=LONG)
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        with self.ticket:
            while True:
                await self.ticket.admit()
                if await self.commands.get() == "finish":
                    return
                self.ticket.no_workers()


OPS = st.lists(
    st.one_of(
        st.just(("arrive", 0)),
        st.tuples(st.just("workers"), st.integers(min_value=0, max_value=3)),
        st.tuples(st.sampled_from(["finish", "cancel", "no_workers"]), st.integers(0, 50)),
    ),
    max_size=40,
)


@given(ops=OPS, max_num_seqs=st.integers(min_value=1, max_value=3))
def test_gate_matches_the_model(ops: list[tuple[str, int]], max_num_seqs: int) -> None:
    asyncio.run(_run_model(ops, max_num_seqs))


async def _run_model(ops: list[tuple[str, int]], max_num_seqs: int) -> None:
    gate = Gate(max_num_seqs=max_num_seqs, router_replicas=1)
    model = Model(capacity_per_worker=max_num_seqs)
    clients: dict[int, ModelClient] = {}
    finished = cancelled = 0
    for op, arg in ops:
        if op == "arrive":
            ident = len(clients)
            clients[ident] = ModelClient(gate, ident)
            model.waiting.append(ident)
        elif op == "workers":
            gate.set_workers(arg)
            model.workers = arg
        elif op in ("finish", "no_workers") and model.admitted:
            ident = sorted(model.admitted)[arg % len(model.admitted)]
            clients[ident].commands.put_nowait(op)
            model.admitted.discard(ident)
            if op == "finish":
                finished += 1
            else:
                model.workers = 0
                model.waiting.appendleft(ident)
        elif op == "cancel" and model.waiting:
            ident = model.waiting[arg % len(model.waiting)]
            clients[ident].task.cancel()
            model.waiting.remove(ident)
            cancelled += 1
        await settle()
        model.settle()
        counts = gate.counts()
        assert counts.in_flight == len(model.admitted)
        assert counts.held + counts.queued == len(model.waiting)
        assert counts.held == (len(model.waiting) if model.workers == 0 else 0)
        assert counts.capacity == model.workers * max_num_seqs
        assert counts.completed_total == finished
        assert counts.cancelled_total == cancelled
        live = counts.held + counts.queued + counts.in_flight
        assert counts.arrivals_total == live + finished + cancelled + counts.hold_timeouts_total
        running = {c.ident for c in clients.values() if c.ticket.admitted and not c.task.done()}
        assert running == model.admitted  # the same requests, so the same (FIFO) order
    for client in clients.values():
        client.task.cancel()
    await asyncio.gather(*(c.task for c in clients.values()), return_exceptions=True)
    assert gate.counts().in_flight == 0
    await asyncio.wait_for(gate.wait_idle(), timeout=5)
