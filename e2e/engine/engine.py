"""The simulated engine core: continuous batching with a FIFO queue and a paged KV cache.

One asyncio task plays vLLM V1's scheduler loop. A request first spends the fixed part of the
time to first token in the "frontend" (tokenising, the API server), then joins the FIFO
waiting queue. At every step the scheduler admits waiting requests while fewer than
``max_num_seqs`` run and the KV cache has room for their prompt (head-of-line blocking, like
vLLM's FCFS policy); an admitted request prefills for ``prompt_tokens x prefill_ms_per_token``
and then emits one token per step. A step lasts ``itl_ms x (1 + itl_batch_factor x (running -
1))``. Every running sequence holds ``ceil(tokens / block_size)`` KV blocks; when a decoding
sequence needs a block and none is free, the most recently admitted sequence is preempted
(its blocks freed, back to the head of the queue, recomputed later), as vLLM does.

With ``error_rate`` a share of the requests fails inside the engine (``config.fails_at``
picks them, in the order they are submitted): such a request queues and prefills like any
other, and at the step that would give its first token it finishes with ``error`` instead
(vLLM's ``FinishReason.ERROR``). No token is emitted, so it adds no TTFT or ITL observation.

Tokens are pushed to each request's sink synchronously from the step, so a busy replica costs
one timer per step, not one per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from prometheus_client import CollectorRegistry

from e2e.engine.config import SimConfig, blocks_for, fails_at
from e2e.engine.metrics import EngineMetrics

log = logging.getLogger("e2e.engine")


class Phase(Enum):
    ARRIVING = "arriving"
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"


class Sink(Protocol):
    """Receives a request's tokens, in the engine step that produces them."""

    def on_token(self, index: int, *, last: bool) -> None: ...


@dataclass(eq=False, slots=True)
class Sequence:
    """One request inside the engine."""

    request_id: str
    prompt_tokens: int
    output_tokens: int
    """How many tokens it will generate before ``finish_reason``."""
    finish_reason: str
    sink: Sink
    done: asyncio.Future[str]
    """Resolves to the finish reason: ``stop``, ``length``, ``abort`` or ``error``."""
    max_tokens_param: int | None = None
    fails: bool = False
    """Finishes with ``error`` at the step of its first token (set by ``Engine.submit`` from
    ``error_rate``)."""
    phase: Phase = Phase.ARRIVING
    generated: int = 0
    arrival: float = 0.0
    queued_at: float = 0.0
    admitted_at: float | None = None
    prefill_done_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float = 0.0
    kv_blocks: int = 0
    preemptions: int = 0
    _frontend: asyncio.TimerHandle | None = field(default=None, repr=False)


class EngineClosedError(RuntimeError):
    """The engine is shutting down and takes no new requests."""


class Engine:
    """vLLM's engine core, simulated. Create and use it inside one running event loop."""

    def __init__(self, config: SimConfig, *, registry: CollectorRegistry | None = None) -> None:
        """``registry``: where the metrics go (default: a registry of their own)."""
        self.config = config
        self.total_blocks = max(1, config.num_gpu_blocks)
        self._free_blocks = self.total_blocks
        self._arriving: set[Sequence] = set()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._last_step = 0.0
        self._accepting = True
        self._submitted = 0
        self.metrics = EngineMetrics(
            model_name=config.served_model_name,
            max_model_len=config.max_model_len,
            running=lambda: len(self._running),
            waiting=lambda: len(self._waiting),
            kv_usage=self.kv_usage,
            cache_info={
                "block_size": str(config.block_size),
                "cache_dtype": config.kv_cache_dtype,
                "enable_prefix_caching": "True",
                "engine": "0",
                "gpu_memory_utilization": f"{config.gpu_memory_utilization:g}",
                "num_gpu_blocks": str(config.num_gpu_blocks),
            },
            registry=registry,
        )

    # ------------------------------------------------------------------ state
    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def in_flight(self) -> int:
        return len(self._arriving) + len(self._waiting) + len(self._running)

    def kv_usage(self) -> float:
        return (self.total_blocks - self._free_blocks) / self.total_blocks

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="engine")

    async def close(self) -> None:
        """Abort everything and stop the scheduler loop."""
        self._accepting = False
        self.abort_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def stop_accepting(self) -> None:
        self._accepting = False

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # --------------------------------------------------------------- requests
    def submit(self, seq: Sequence) -> None:
        """Take a request; it reaches the waiting queue after the frontend delay."""
        if not self._accepting:
            raise EngineClosedError("the engine is shutting down")
        loop = asyncio.get_running_loop()
        self._submitted += 1
        if fails_at(self._submitted, self.config.error_rate):
            seq.fails = True
        seq.arrival = loop.time()
        seq.phase = Phase.ARRIVING
        self._arriving.add(seq)
        self._idle.clear()
        delay = self.config.ttft_ms / 1000
        if delay > 0:
            seq._frontend = loop.call_later(delay, self._enqueue, seq)
        else:
            self._enqueue(seq)

    def _enqueue(self, seq: Sequence) -> None:
        seq._frontend = None
        if seq.phase is not Phase.ARRIVING:
            return
        self._arriving.discard(seq)
        seq.phase = Phase.WAITING
        seq.queued_at = asyncio.get_running_loop().time()
        self._waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        """Drop a request wherever it is (client gone, shutdown)."""
        if seq.phase is Phase.DONE:
            return
        if seq.phase is Phase.ARRIVING:
            if seq._frontend is not None:
                seq._frontend.cancel()
            self._arriving.discard(seq)
        elif seq.phase is Phase.WAITING:
            with contextlib.suppress(ValueError):
                self._waiting.remove(seq)
        self._finish(seq, reason="abort", now=asyncio.get_running_loop().time())

    def abort_all(self) -> None:
        for seq in [*self._arriving, *self._waiting, *self._running]:
            self.abort(seq)

    # -------------------------------------------------------------- scheduler
    def _step_seconds(self) -> float:
        batch = max(1, len(self._running))
        return self.config.itl_ms / 1000 * (1 + self.config.itl_batch_factor * (batch - 1))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._admit(now)
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            step = self._step_seconds()
            if any(s.phase is Phase.DECODE for s in self._running):
                self._reserve_decode_blocks()
                step = self._step_seconds()
                # Steps follow each other on the clock: the time spent writing tokens and a
                # late wake-up are part of the step, not added to the next one.
                target = self._last_step + step
            else:  # only prefills: wake when the first one is done (or to admit arrivals)
                target = min(now + step, *(s.prefill_done_at for s in self._running))
            if target > now:
                await asyncio.sleep(target - now)
            actual = loop.time()
            self._last_step = target if actual - target < step else actual
            try:
                self._advance(actual)
            except Exception:  # a bug must not wedge every request
                log.exception("engine step failed")

    def _admit(self, now: float) -> None:
        cfg = self.config
        while self._waiting and len(self._running) < cfg.max_num_seqs:
            seq = self._waiting[0]
            held = seq.prompt_tokens + seq.generated
            need = blocks_for(held + 1, block_size=cfg.block_size)
            if need > self._free_blocks:
                break  # FCFS: the head of the queue waits for room, the rest wait behind it
            self._waiting.popleft()
            self._free_blocks -= need
            seq.kv_blocks = need
            seq.phase = Phase.PREFILL
            if seq.admitted_at is None:
                seq.admitted_at = now
                self.metrics.queue_time.observe(now - seq.queued_at)
                self.metrics.prefix_cache_queries.inc(seq.prompt_tokens)
            seq.prefill_done_at = now + held * cfg.prefill_ms_per_token / 1000
            self._running.append(seq)

    def _reserve_decode_blocks(self) -> None:
        """Every decoding sequence needs room for its next token; preempt from the back."""
        bs = self.config.block_size
        for seq in list(self._running):
            if seq.phase is not Phase.DECODE:
                continue
            need = blocks_for(seq.prompt_tokens + seq.generated + 1, block_size=bs) - seq.kv_blocks
            while need > self._free_blocks and seq.phase is Phase.DECODE:
                self._preempt(self._running[-1])
            if seq.phase is Phase.DECODE and need > 0:
                self._free_blocks -= need
                seq.kv_blocks += need

    def _preempt(self, seq: Sequence) -> None:
        self._running.remove(seq)
        self._free_blocks += seq.kv_blocks
        seq.kv_blocks = 0
        seq.phase = Phase.WAITING
        seq.preemptions += 1
        self._waiting.appendleft(seq)
        self.metrics.preemptions.inc()

    def _advance(self, now: float) -> None:
        tokens = 0
        for seq in list(self._running):
            if seq.phase is Phase.DECODE:
                tokens += 1
                self._emit(seq, now)
            elif seq.phase is Phase.PREFILL and now >= seq.prefill_done_at:
                tokens += seq.prompt_tokens + seq.generated
                seq.phase = Phase.DECODE
                self._emit(seq, now)
        if tokens:
            self.metrics.iteration_tokens.observe(tokens)

    def _emit(self, seq: Sequence, now: float) -> None:
        if seq.fails:  # an engine-side failure, where its first token would have been
            self._finish(seq, reason="error", now=now)
            return
        index = seq.generated
        seq.generated += 1
        m = self.metrics
        m.generation_tokens.inc()
        if index == 0:
            seq.first_token_at = now
            m.ttft.observe(now - seq.arrival)
            m.prompt_tokens.inc(seq.prompt_tokens)
        else:
            m.itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        last = seq.generated >= seq.output_tokens
        try:
            seq.sink.on_token(index, last=last)
        except Exception:
            log.exception("request %s: sink failed; aborting it", seq.request_id)
            self.abort(seq)
            return
        if last and seq.phase is not Phase.DONE:
            self._finish(seq, reason=seq.finish_reason, now=now)

    def _finish(self, seq: Sequence, *, reason: str, now: float) -> None:
        was_running = seq.phase in (Phase.PREFILL, Phase.DECODE)
        seq.phase = Phase.DONE
        if was_running:
            self._running.remove(seq)
            self._free_blocks += seq.kv_blocks
            seq.kv_blocks = 0
        m = self.metrics
        m.request_success[reason].inc()
        if reason != "abort" and seq.admitted_at is not None and seq.first_token_at is not None:
            m.e2e.observe(now - seq.arrival)
            m.inference_time.observe(now - seq.admitted_at)
            m.prefill_time.observe(seq.first_token_at - seq.admitted_at)
            m.decode_time.observe(now - seq.first_token_at)
            m.request_prompt_tokens.observe(seq.prompt_tokens)
            m.request_generation_tokens.observe(seq.generated)
            if seq.max_tokens_param:
                m.request_max_tokens.observe(seq.max_tokens_param)
            if seq.generated > 1:
                m.tpot.observe((now - seq.first_token_at) / (seq.generated - 1))
        if not seq.done.done():
            seq.done.set_result(reason)
        if not (self._arriving or self._waiting or self._running):
            self._idle.set()
