"""e2e/loadgen.py: vLLM's own ``vllm bench serve`` (the engine venv's) as the load generator.

The tests marked ``vllm`` run the real command against a simulator process on a loopback
address: they need the real engine's CPU venv (``make vllm-env``) and fail, never skip,
without it. The others check the command line, environment and result parsing without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.loadgen import (
    LoadgenError,
    bench_argv,
    bench_environ,
    parse_result,
    require_engine_env,
    run_vllm_bench,
    start_vllm_bench,
    tiny_model_tokenizer,
)
from e2e.real_engine.env import EngineEnv
from tests.e2e_engine.conftest import SimProcess, metrics, value

HOST = "127.64.41.1"
SERVED = "magistral-loadgen"
KEY = "sk-loadgen-test"
SIM_ARGS = [
    "--host",
    HOST,
    "--port",
    "0",
    "--served-model-name",
    SERVED,
    "--api-key",
    KEY,
    "--max-num-seqs",
    "8",
    "--max-model-len",
    "4096",
    "--ttft-ms",
    "20",
    "--prefill-ms-per-token",
    "0",
    "--itl-ms",
    "5",
]
FINISHED = ("stop", "length", "abort", "error", "repetition")


@pytest.fixture(scope="module")
def engine_env() -> EngineEnv:
    try:
        return require_engine_env()
    except LoadgenError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="module")
def tokenizer(engine_env: EngineEnv) -> Path:
    return tiny_model_tokenizer(engine_env)


@pytest.fixture
def sim_url() -> Iterator[str]:
    sim = SimProcess(*SIM_ARGS)
    try:
        yield sim.wait_listening()
    finally:
        sim.stop()


def successes(url: str) -> dict[str, float]:
    samples = metrics(url)
    return {
        reason: value(samples, "vllm:request_success_total", finished_reason=reason)
        for reason in FINISHED
    }


@pytest.mark.vllm
def test_vllm_bench_serve_completes_every_prompt(
    engine_env: EngineEnv, tokenizer: Path, sim_url: str, tmp_path: Path
) -> None:
    """40 prompts at 10 req/s, at most 8 in flight: all served, and the engine counted them."""
    result = run_vllm_bench(
        base_url=sim_url,
        model=SERVED,
        tokenizer=tokenizer,
        api_key=KEY,
        num_prompts=40,
        request_rate=10.0,
        max_concurrency=8,
        input_len=128,
        output_len=32,
        result_dir=tmp_path,
        timeout=300,
        engine_env=engine_env,
    )
    print(f"\nvllm bench serve: {result}")  # start-up seconds, throughput, TTFT (pytest -s)
    assert (result.num_prompts, result.completed, result.failed) == (40, 40, 0), result.output_tail
    # --ignore-eos: every answer runs to max_completion_tokens, so the engine ends it on length.
    assert result.total_output_tokens == 40 * 32
    assert successes(sim_url) == {"stop": 0, "length": 40, "abort": 0, "error": 0, "repetition": 0}
    assert value(metrics(sim_url), "vllm:generation_tokens_total") == 40 * 32
    assert result.mean_ttft_ms > 0
    assert result.p99_ttft_ms is not None
    assert result.p99_ttft_ms >= result.mean_ttft_ms
    assert result.request_throughput > 0
    assert result.duration > 0
    assert result.startup_seconds is not None
    assert result.startup_seconds > 0
    saved = json.loads(result.result_path.read_text())
    assert (saved["backend"], saved["model_id"], saved["max_concurrency"]) == (
        "openai-chat",
        SERVED,
        8,
    )
    assert "WARNING: /tokenize unavailable" in result.log_path.read_text()


@pytest.mark.vllm
def test_background_load_can_be_watched_and_stopped(
    engine_env: EngineEnv, tokenizer: Path, sim_url: str, tmp_path: Path
) -> None:
    """start_vllm_bench returns at once; load flows while the test watches; stop() ends it."""
    with start_vllm_bench(
        base_url=sim_url,
        model=SERVED,
        tokenizer=tokenizer,
        api_key=KEY,
        num_prompts=400,
        request_rate=10.0,
        max_concurrency=4,
        input_len=64,
        output_len=32,
        result_dir=tmp_path,
        engine_env=engine_env,
    ) as bench:
        assert bench.poll() is None
        startup = bench.wait_started(timeout=180)
        assert startup == bench.startup_seconds
        deadline = time.monotonic() + 30
        while successes(sim_url)["length"] < 5:
            assert bench.poll() is None, bench.tail()
            assert time.monotonic() < deadline, bench.tail()
            time.sleep(0.2)
        assert bench.poll() is None  # 400 prompts at 10/s: still running
        bench.stop()
        assert bench.poll() is not None
        with pytest.raises(LoadgenError, match="failed"):
            bench.wait(5)
    done = successes(sim_url)
    assert 5 <= done["length"] < 400
    assert done["abort"] <= 4  # at most the requests in flight when it stopped


def test_the_command_line(tmp_path: Path) -> None:
    argv = bench_argv(
        "/venv/bin/vllm",
        base_url="http://127.64.0.5:8000/",
        model="magistral",
        tokenizer=Path("/models/tiny"),
        num_prompts=40,
        request_rate=10,
        max_concurrency=8,
        input_len=128,
        output_len=32,
        result_dir=tmp_path,
        result_filename="r.json",
        extra=["--seed", "7"],
    )
    assert " ".join(argv) == (
        "/venv/bin/vllm bench serve --backend openai-chat --base-url http://127.64.0.5:8000 "
        "--endpoint /v1/chat/completions --model magistral --tokenizer /models/tiny "
        "--dataset-name random --random-input-len 128 --random-output-len 32 "
        "--num-prompts 40 --request-rate 10.0 --max-concurrency 8 --save-result "
        f"--result-dir {tmp_path} --result-filename r.json --ignore-eos --disable-tqdm --seed 7"
    )
    unlimited = bench_argv(
        "vllm",
        base_url="http://h:1",
        model="m",
        tokenizer=Path("t"),
        num_prompts=1,
        request_rate=float("inf"),
        max_concurrency=None,
        input_len=1,
        output_len=1,
        result_dir=tmp_path,
        result_filename="r.json",
    )
    assert unlimited[unlimited.index("--request-rate") + 1] == "inf"
    assert "--max-concurrency" not in unlimited
    with pytest.raises(LoadgenError, match="chat/completions"):
        bench_argv(
            "vllm",
            base_url="http://h:1",
            endpoint="/v1/completions",
            model="m",
            tokenizer=Path("t"),
            num_prompts=1,
            request_rate=1,
            max_concurrency=None,
            input_len=1,
            output_len=1,
            result_dir=tmp_path,
            result_filename="r.json",
        )


def test_the_environment_carries_the_key_and_nothing_of_the_callers_vllm() -> None:
    base = {
        "PATH": "/bin",
        "VLLM_API_KEY": "x",
        "VLLM_USE_RUST_BENCH": "1",
        "HF_TOKEN": "t",
        "OPENAI_API_KEY": "caller",
        "OPENAI_BASE_URL": "http://elsewhere",
        "NO_PROXY": "example.com",
    }
    env = bench_environ(base_url="http://127.64.0.5:8000", api_key="sk-1", base=base)
    assert env["OPENAI_API_KEY"] == "sk-1"
    assert "VLLM_API_KEY" not in env
    assert "VLLM_USE_RUST_BENCH" not in env
    assert "HF_TOKEN" not in env
    assert "OPENAI_BASE_URL" not in env
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"] == "/bin"
    assert env["NO_PROXY"] == "example.com,127.64.0.5"
    assert env["no_proxy"] == "127.64.0.5"
    assert "OPENAI_API_KEY" not in bench_environ(base_url="http://h", api_key=None, base=base)


def test_a_missing_engine_venv_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAGISTRAL_E2E_CACHE", str(tmp_path))
    with pytest.raises(LoadgenError, match=r"not installed at .*make vllm-env"):
        require_engine_env()
    with pytest.raises(LoadgenError, match="not installed"):
        run_vllm_bench(
            base_url="http://127.0.0.1:1",
            model="m",
            tokenizer=tmp_path,
            api_key=None,
            num_prompts=1,
            request_rate=1,
            max_concurrency=None,
            input_len=1,
            output_len=1,
            result_dir=tmp_path,
            timeout=1,
        )


def test_results_are_parsed(tmp_path: Path) -> None:
    data = {
        "num_prompts": 3,
        "completed": 2,
        "failed": 1,
        "duration": 1.5,
        "request_throughput": 1.33,
        "output_throughput": 42.0,
        "total_input_tokens": 256,
        "total_output_tokens": 64,
        "mean_ttft_ms": 12.5,
        "p99_ttft_ms": 20.0,
    }
    result = parse_result(data, result_path=tmp_path / "r.json", log_path=tmp_path / "r.log")
    assert (result.completed, result.failed, result.p99_ttft_ms) == (2, 1, 20.0)
    assert result.raw == data
    del data["p99_ttft_ms"]
    assert parse_result(data, result_path=tmp_path, log_path=tmp_path).p99_ttft_ms is None
    del data["failed"]
    with pytest.raises(LoadgenError, match="'failed'"):
        parse_result(data, result_path=tmp_path, log_path=tmp_path, output_tail="the tail")
