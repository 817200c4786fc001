"""The middleware's added time per request and per streamed chunk.

The same fake vLLM app (tests/unit/runtime/fake_vllm.py) is called in-process, with and
without MagistralMiddleware in front, interleaved in one run so both see the same machine
state. Reported: median and p99 of each, and the difference (the middleware's share).

    .venv/bin/python bench/middleware_overhead.py [--iterations 3000]

Scenarios:
* request: a non-streamed chat completion (request checks and defaults, system prompt
  insertion, JSON rewrite of the response);
* stream-reasoning: a streamed answer of 240 chunks, 160 of them inside <think>…</think>
  (every reasoning chunk is parsed and re-encoded);
* stream-plain: the same length without reasoning (the pass-through path: no parsing).
Per-chunk numbers are the per-stream difference divided by the number of chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from magistral_runtime.config import RuntimeConfig  # noqa: E402
from magistral_runtime.middleware import MagistralMiddleware, Settings  # noqa: E402
from tests.unit.runtime.fake_vllm import FakeVllm, call  # noqa: E402

KEY = "sk-bench"
AUTH = [(b"authorization", b"Bearer " + KEY.encode()), (b"content-type", b"application/json")]
CHUNK_CHARS = 4
REASONING = "Let me think about this step by step. " * 17  # 160 chunks of 4 characters
ANSWER = "The answer is four, as computed above..." * 2  # 20 chunks
PLAIN = "x" * len(f"<think>\n{REASONING}\n</think>\n{ANSWER}")
MESSAGES = [
    {"role": "user", "content": "What is 2+2? " * 20},
    {"role": "assistant", "content": "<think>\nadd\n</think>\nFour."},
    {"role": "user", "content": "And 3+3?"},
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(run: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter_ns()
    await run()
    return (time.perf_counter_ns() - start) / 1000  # µs


async def scenario(
    *, name: str, answer: str, stream: bool, iterations: int, prompt_file: Path
) -> dict[str, Any]:
    config = RuntimeConfig(
        model="mistralai/Magistral-Small-2506",
        served_model_name="magistral-small",
        tensor_parallel_size=1,
        max_model_len=40960,
        gpu_memory_utilization=0.9,
        system_prompt={"mode": "custom", "path": str(prompt_file)},
    )
    settings = Settings.from_config(config, env={"VLLM_API_KEY": KEY}, install_signal_handler=False)
    fake = FakeVllm(api_key=KEY, answer=answer, chunk_chars=CHUNK_CHARS)
    app = MagistralMiddleware(fake, settings=settings)
    body = json.dumps({"model": "magistral-small", "messages": MESSAGES, "stream": stream})
    raw = body.encode()
    # Without the middleware, vLLM would get the request as the middleware forwards it.
    forwarded = json.dumps(
        {**json.loads(raw), "temperature": 0.7, "top_p": 0.95, "max_tokens": 40000}
    ).encode()

    async def with_mw() -> Any:
        return await call(app, method="POST", path="/v1/chat/completions", body=raw, headers=AUTH)

    async def without() -> Any:
        return await call(
            fake, method="POST", path="/v1/chat/completions", body=forwarded, headers=AUTH
        )

    for _ in range(200):  # warm-up
        await with_mw()
        await without()
    fake.requests.clear()
    a: list[float] = []
    b: list[float] = []
    for i in range(iterations):
        if i % 2:
            a.append(await timed(with_mw))
            b.append(await timed(without))
        else:
            b.append(await timed(without))
            a.append(await timed(with_mw))
        fake.requests.clear()
    chunks = (len(answer) + CHUNK_CHARS - 1) // CHUNK_CHARS + 2 if stream else 0
    added = [x - y for x, y in zip(a, b, strict=True)]  # paired: run back to back
    return {
        "name": name,
        "chunks": chunks,
        "iterations": iterations,
        "with_median": statistics.median(a),
        "with_p99": percentile(a, 0.99),
        "without_median": statistics.median(b),
        "without_p99": percentile(b, 0.99),
        "added_median": statistics.median(added),
        "added_p99": percentile(added, 0.99),
    }


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | runs | chunks | without: median / p99 (µs) | with: median / p99 (µs) "
        "| added: median / p99 (µs) | added per chunk: median / p99 (µs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        added_median = r["added_median"]
        added_p99 = r["added_p99"]
        per_chunk = (
            f"{added_median / r['chunks']:.2f} / {added_p99 / r['chunks']:.2f}"
            if r["chunks"]
            else "-"
        )
        lines.append(
            f"| {r['name']} | {r['iterations']} | {r['chunks'] or '-'} "
            f"| {r['without_median']:.0f} / {r['without_p99']:.0f} "
            f"| {r['with_median']:.0f} / {r['with_p99']:.0f} "
            f"| {added_median:.0f} / {added_p99:.0f} | {per_chunk} |"
        )
    return "\n".join(lines)


async def main_async(iterations: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        prompt = Path(folder) / "SYSTEM_PROMPT.txt"
        prompt.write_text("You are a helpful assistant. Think step by step. " * 30)
        reasoning_answer = f"<think>\n{REASONING}\n</think>\n{ANSWER}"
        rows = [
            await scenario(
                name="request (non-streamed)",
                answer=reasoning_answer,
                stream=False,
                iterations=iterations,
                prompt_file=prompt,
            ),
            await scenario(
                name="stream-reasoning",
                answer=reasoning_answer,
                stream=True,
                iterations=iterations // 3,
                prompt_file=prompt,
            ),
            await scenario(
                name="stream-plain",
                answer=PLAIN,
                stream=True,
                iterations=iterations // 3,
                prompt_file=prompt,
            ),
        ]
    return report(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3000)
    args = parser.parse_args()
    print(asyncio.run(main_async(args.iterations)))


if __name__ == "__main__":
    main()
