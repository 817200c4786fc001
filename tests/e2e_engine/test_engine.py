"""The simulated engine core on its own: FIFO admission, max_num_seqs, KV cache, preemption."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from e2e.engine.config import SimConfig
from e2e.engine.engine import Engine, Phase, Sequence

BASE = SimConfig(
    max_num_seqs=2,
    max_model_len=4096,
    kv_cache_tokens=65536,
    ttft_ms=0.0,
    prefill_ms_per_token=0.0,
    itl_ms=1.0,
)


class Recorder:
    """A sink that records every token it gets, and what the engine looked like then."""

    def __init__(self, name: int, log: list[tuple[int, int]], engine: Engine) -> None:
        self.name = name
        self.log = log
        self.engine = engine
        self.indexes: list[int] = []
        self.max_kv = 0.0
        self.max_running = 0

    def on_token(self, index: int, *, last: bool) -> None:
        self.indexes.append(index)
        self.log.append((self.name, index))
        self.max_kv = max(self.max_kv, self.engine.kv_usage())
        self.max_running = max(self.max_running, self.engine.num_running)


def make_seq(engine: Engine, sink: Recorder, *, prompt: int, output: int) -> Sequence:
    return Sequence(
        request_id=f"r{sink.name}",
        prompt_tokens=prompt,
        output_tokens=output,
        finish_reason="length",
        sink=sink,
        done=asyncio.get_running_loop().create_future(),
    )


def sample(engine: Engine, name: str, **labels: str) -> float:
    all_labels = {"model_name": engine.config.served_model_name, "engine": "0", **labels}
    value = engine.metrics.registry.get_sample_value(name, all_labels)
    assert value is not None, name
    return value


async def _until(predicate: object, *, steps: int = 10_000) -> None:
    for _ in range(steps):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_fifo_admission_respects_max_num_seqs() -> None:
    async def scenario() -> None:
        engine = Engine(BASE)
        engine.start()
        log: list[tuple[int, int]] = []
        sinks = [Recorder(i, log, engine) for i in range(6)]
        seqs = [make_seq(engine, s, prompt=10, output=20) for s in sinks]
        for seq in seqs:
            engine.submit(seq)
        await _until(lambda: engine.num_running == 2)
        assert engine.num_waiting == 4
        reasons = await asyncio.gather(*(s.done for s in seqs))
        assert reasons == ["length"] * 6
        first_tokens = [name for name, index in log if index == 0]
        assert first_tokens == [0, 1, 2, 3, 4, 5]  # FIFO
        assert max(s.max_running for s in sinks) == 2
        assert all(s.indexes == list(range(20)) for s in sinks)
        assert engine.num_running == engine.num_waiting == 0
        assert engine.kv_usage() == 0
        await engine.close()

    asyncio.run(scenario())


def test_kv_cache_full_preempts_and_recomputes() -> None:
    config = replace(BASE, max_num_seqs=4, kv_cache_tokens=64, block_size=16, max_model_len=64)

    async def scenario() -> None:
        engine = Engine(config)
        engine.start()
        log: list[tuple[int, int]] = []
        sinks = [Recorder(i, log, engine) for i in range(3)]
        seqs = [make_seq(engine, s, prompt=15, output=40) for s in sinks]
        for seq in seqs:
            engine.submit(seq)
        await asyncio.gather(*(s.done for s in seqs))
        assert sample(engine, "vllm:num_preemptions_total") > 0
        assert all(s.indexes == list(range(40)) for s in sinks)  # every token once, in order
        assert max(s.max_kv for s in sinks) <= 1.0
        assert max(s.max_kv for s in sinks) > 0.9  # the cache did fill up
        assert engine.kv_usage() == 0
        await engine.close()

    asyncio.run(scenario())


def test_head_of_line_blocking_when_the_prompt_does_not_fit() -> None:
    """A waiting request whose prompt has no room keeps the ones behind it waiting (FCFS)."""
    config = replace(BASE, max_num_seqs=4, kv_cache_tokens=64, max_model_len=64)

    async def scenario() -> None:
        engine = Engine(config)
        engine.start()
        log: list[tuple[int, int]] = []
        big, small = Recorder(0, log, engine), Recorder(1, log, engine)
        blocker = Recorder(2, log, engine)
        first = make_seq(engine, blocker, prompt=40, output=10)
        engine.submit(first)
        await _until(lambda: engine.num_running == 1)
        second = make_seq(engine, big, prompt=40, output=5)
        third = make_seq(engine, small, prompt=1, output=5)
        engine.submit(second)
        engine.submit(third)
        await asyncio.gather(first.done, second.done, third.done)
        order = [name for name, index in log if index == 0]
        assert order == [2, 0, 1]
        await engine.close()

    asyncio.run(scenario())


def test_abort_frees_the_slot_and_the_cache() -> None:
    async def scenario() -> None:
        engine = Engine(replace(BASE, max_num_seqs=1))
        engine.start()
        log: list[tuple[int, int]] = []
        running = make_seq(engine, Recorder(0, log, engine), prompt=100, output=10_000)
        queued = make_seq(engine, Recorder(1, log, engine), prompt=10, output=10_000)
        engine.submit(running)
        engine.submit(queued)
        await _until(lambda: engine.num_running == 1 and engine.num_waiting == 1)
        engine.abort(queued)
        assert await queued.done == "abort"
        assert engine.num_waiting == 0
        engine.abort(running)
        assert await running.done == "abort"
        assert running.phase is Phase.DONE
        assert engine.num_running == 0
        assert engine.kv_usage() == 0
        assert sample(engine, "vllm:request_success_total", finished_reason="abort") == 2
        await engine.close()

    asyncio.run(scenario())
