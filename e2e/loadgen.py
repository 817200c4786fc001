"""A real load generator for the cluster tests: vLLM's own ``vllm bench serve``.

``vllm bench serve`` is the standard serving benchmark that ships with vLLM. It runs here from
the real engine's CPU venv (:mod:`e2e.real_engine.env`, docs/real-engine.md) as a subprocess,
against any OpenAI-compatible URL on loopback (the engine simulator, a router, a real engine):

    result = run_vllm_bench(base_url="http://127.64.0.5:8000", model="magistral",
                            tokenizer=tiny_model_tokenizer(), api_key="sk-test",
                            num_prompts=40, request_rate=10, max_concurrency=8,
                            input_len=128, output_len=32, result_dir=tmp, timeout=300)
    assert result.completed == 40 and result.failed == 0

or, to keep load running while a test watches the cluster::

    with start_vllm_bench(...) as bench:      # stopped on exit if still running
        bench.wait_started(timeout=120)       # past start-up, requests are going out
        ...                                   # watch pods, scale, kill things
        result = bench.wait(timeout=300)

What ``vllm bench serve`` does with these flags (read in vLLM 0.32.0's and 0.33.0's source,
``vllm/benchmarks/serve.py``, ``datasets/datasets.py``, ``lib/endpoint_request_func.py``; the
flag sets of the two releases are identical):

* ``--backend openai-chat`` posts streamed chat completions (``stream_options.include_usage``,
  ``max_completion_tokens`` = ``--random-output-len``, ``ignore_eos``) to
  ``--base-url`` + ``--endpoint``; the endpoint must end in ``chat/completions``.
* ``--model NAME`` is both the ``model`` sent in every request (``--served-model-name`` is
  only needed when that differs from ``--model``) and, without ``--tokenizer``, what the
  tokenizer is loaded from. So ``--model`` is the server's served name and ``--tokenizer`` a
  local directory: the tiny model's (``tekken.json``; its ``consolidated.safetensors`` makes
  ``--tokenizer-mode auto`` choose mistral-common's tokenizer). The tokenizer only sizes
  the random prompts; the server tokenises them itself.
* ``--dataset-name random`` builds ``--num-prompts`` prompts of exactly
  ``--random-input-len`` tokens (range ratio 0) from random token ids, seeded (``--seed 0``).
  It then asks the server's ``/tokenize`` to re-align them; a server without it (the
  simulator) gets ``WARNING: /tokenize unavailable, skipping alignment.``
* ``--request-rate R`` sends requests as a Poisson process of rate R (``inf``: all at once);
  ``--max-concurrency N`` holds back requests while N are in flight (client-side queue).
* The API key is read from ``OPENAI_API_KEY`` (``Authorization: Bearer …``); there is no flag.
* ``--ready-check-timeout-sec`` defaults to 0: no test request before the run.
* ``--save-result --result-dir D --result-filename F`` writes the summary JSON to D/F.
* It exits 0 even when every request failed (it only warns); ``failed`` counts them and the
  log prints the first ten errors.
* vLLM 0.32.0 (the venv's) takes the first chat chunk with ``choices`` as the first token,
  the role-only opening chunk included; 0.33.0 waits for a chunk with content or reasoning.

Start-up (spawn to "Starting main benchmark run...", :attr:`BenchResult.startup_seconds`) is
13-18 s warm on 2 shared cores (about 25 s with a cold page cache), almost all imports: the
first output line after 10.5-13 s, the parsed arguments after 13-16 s (``vllm bench serve
--help`` alone takes 14.6 s; ``import torch`` alone 2.4-3 s, the rest is vLLM's CLI modules),
then 2.5 s for the tokenizer and the 40 random prompts. Plan for it: :meth:`BenchProcess.
wait_started` returns once requests are going out.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from e2e.real_engine.env import EngineEnv, env_root, is_installed

MAIN_RUN_MARKER = "Starting main benchmark run..."
"""The line ``vllm bench serve`` prints once the tokenizer and the dataset are ready."""
API_KEY_ENV = "OPENAI_API_KEY"
"""Where ``vllm bench serve`` reads the API key (``lib/endpoint_request_func.py``)."""
TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class LoadgenError(RuntimeError):
    """``vllm bench serve`` could not run, failed, or timed out; the message has its tail."""


@dataclass(frozen=True)
class BenchResult:
    """The summary ``vllm bench serve --save-result`` writes, and where it came from."""

    num_prompts: int
    completed: int
    """Requests that succeeded (a streamed answer with at least one chunk)."""
    failed: int
    duration: float
    """Seconds from the first request sent to the last answer (start-up excluded)."""
    request_throughput: float
    """Completed requests per second of ``duration``."""
    output_throughput: float
    total_input_tokens: int
    total_output_tokens: int
    mean_ttft_ms: float
    p99_ttft_ms: float | None
    """None if ``--metric-percentiles`` (in ``extra``) left out 99."""
    startup_seconds: float | None
    """Spawn to ``Starting main benchmark run...`` (imports, tokenizer, dataset)."""
    result_path: Path
    log_path: Path
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    """The whole result JSON."""
    output_tail: str = field(default="", repr=False, compare=False)
    """The last lines of the command's output (for assertion messages)."""


def parse_result(
    data: Mapping[str, Any],
    *,
    result_path: Path,
    log_path: Path,
    startup_seconds: float | None = None,
    output_tail: str = "",
) -> BenchResult:
    """A :class:`BenchResult` from the saved JSON; LoadgenError if a field is missing."""
    try:
        p99 = data.get("p99_ttft_ms")
        return BenchResult(
            num_prompts=int(data["num_prompts"]),
            completed=int(data["completed"]),
            failed=int(data["failed"]),
            duration=float(data["duration"]),
            request_throughput=float(data["request_throughput"]),
            output_throughput=float(data["output_throughput"]),
            total_input_tokens=int(data["total_input_tokens"]),
            total_output_tokens=int(data["total_output_tokens"]),
            mean_ttft_ms=float(data["mean_ttft_ms"]),
            p99_ttft_ms=None if p99 is None else float(p99),
            startup_seconds=startup_seconds,
            result_path=result_path,
            log_path=log_path,
            raw=dict(data),
            output_tail=output_tail,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise LoadgenError(
            f"{result_path}: not a vllm bench serve result ({type(err).__name__}: {err}); "
            f"last lines of its output:\n{output_tail}"
        ) from err


def require_engine_env() -> EngineEnv:
    """The installed engine venv (never installs it: that takes minutes and the network)."""
    env = EngineEnv(env_root())
    if not is_installed(env):
        raise LoadgenError(
            f"the real vLLM engine's CPU venv is not installed at {env.root} "
            "(vllm bench serve runs from it): run `make vllm-env` "
            "(= python -m e2e.real_engine.env; a cold install takes about 4 minutes)"
        )
    return env


def tiny_model_tokenizer(env: EngineEnv | None = None) -> Path:
    """The tiny model's directory (generated once, as tests/vllm/ do): its ``tekken.json``."""
    from e2e.real_engine.serve import EngineError, ensure_model

    try:
        return ensure_model(env or require_engine_env())
    except EngineError as err:
        raise LoadgenError(str(err)) from err


def _format_rate(rate: float) -> str:
    if math.isinf(rate):
        return "inf"
    if not rate > 0:
        raise LoadgenError(f"request_rate must be positive or inf, not {rate}")
    return repr(float(rate))


def bench_argv(
    vllm: Path | str,
    *,
    base_url: str,
    model: str,
    tokenizer: Path,
    endpoint: str = "/v1/chat/completions",
    num_prompts: int,
    request_rate: float,
    max_concurrency: int | None,
    input_len: int,
    output_len: int,
    result_dir: Path,
    result_filename: str,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``vllm bench serve`` command line (``extra`` last: argparse keeps the last value)."""
    if not endpoint.rstrip("/").endswith("chat/completions"):
        raise LoadgenError(f"--backend openai-chat needs a chat/completions endpoint: {endpoint}")
    if num_prompts < 1 or input_len < 1 or output_len < 1:
        raise LoadgenError("num_prompts, input_len and output_len must be at least 1")
    if max_concurrency is not None and max_concurrency < 1:
        raise LoadgenError(f"max_concurrency must be at least 1 (or None), not {max_concurrency}")
    argv = [
        str(vllm),
        "bench",
        "serve",
        "--backend",
        "openai-chat",
        "--base-url",
        base_url.rstrip("/"),
        "--endpoint",
        endpoint,
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(input_len),
        "--random-output-len",
        str(output_len),
        "--num-prompts",
        str(num_prompts),
        "--request-rate",
        _format_rate(request_rate),
    ]
    if max_concurrency is not None:
        argv += ["--max-concurrency", str(max_concurrency)]
    argv += [
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        result_filename,
        "--ignore-eos",
        "--disable-tqdm",
        *extra,
    ]
    return argv


def bench_environ(
    *, base_url: str, api_key: str | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The command's environment: ``base`` (default: ours) without the caller's vLLM,
    Hugging Face or OpenAI settings, plus the key, offline mode, and no proxy for the target."""
    out = {
        name: value
        for name, value in (os.environ if base is None else base).items()
        if not name.startswith(("VLLM_", "HF_", "OPENAI_"))
    }
    host = urlsplit(base_url).hostname or ""
    for name in ("NO_PROXY", "no_proxy"):  # aiohttp's session trusts the proxy variables
        out[name] = ",".join(p for p in (out.get(name, ""), host) if p)
    out.update(
        {
            "VLLM_TARGET_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",  # lines as they happen (start-up time, tails)
        }
    )
    if api_key is not None:
        out[API_KEY_ENV] = api_key
    return out


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class BenchProcess:
    """A running ``vllm bench serve``: its output goes to ``log_path`` and a tail in memory."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], result_path: Path, log_path: Path
    ) -> None:
        self.argv = list(argv)
        self.result_path = result_path
        self.log_path = log_path
        self.started_at = time.monotonic()
        self.main_run_at: float | None = None
        self._main_run = threading.Event()
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        self._lock = threading.Lock()
        self._result: BenchResult | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = log_path.open("w", encoding="utf-8")
        self._log.write(f"# {' '.join(self.argv)}\n")
        self._log.flush()
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        except OSError as err:
            self._log.close()
            raise LoadgenError(f"cannot start {self.argv[0]}: {err}") from err
        self._reader = threading.Thread(target=self._read, name="vllm-bench-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _read(self) -> None:
        stdout = self._popen.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if self.main_run_at is None and MAIN_RUN_MARKER in line:
                    self.main_run_at = time.monotonic()
                    self._main_run.set()
                with self._lock:
                    self._tail.append(line)
                    self._log.write(line + "\n")
                    self._log.flush()
        finally:
            stdout.close()
            with self._lock:
                self._log.close()

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of the output so far."""
        with self._lock:
            return "\n".join(list(self._tail)[-lines:])

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        return self._popen.poll()

    @property
    def startup_seconds(self) -> float | None:
        """Spawn to the main run's start, once it has started."""
        return None if self.main_run_at is None else self.main_run_at - self.started_at

    def wait_started(self, timeout: float) -> float:
        """Block until requests are being sent; return the start-up seconds."""
        deadline = time.monotonic() + timeout
        while not self._main_run.wait(0.2):
            if self.poll() is not None:
                self._reader.join(5)
                if self._main_run.is_set():
                    break
                raise LoadgenError(self._describe(f"exited with code {self.poll()} before the run"))
            if time.monotonic() > deadline:
                raise LoadgenError(self._describe(f"did not start its run within {timeout:.0f} s"))
        assert self.main_run_at is not None
        return self.main_run_at - self.started_at

    def wait(self, timeout: float | None = None) -> BenchResult:
        """Wait for the end and parse the result; on a timeout the command is stopped."""
        if self._result is not None:
            return self._result
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise LoadgenError(
                self._describe(f"did not finish within {timeout:.0f} s (stopped)")
            ) from None
        self._reader.join(10)
        if code != 0:
            raise LoadgenError(self._describe(f"failed (exit code {code})"))
        try:
            data = json.loads(self.result_path.read_text())
        except (OSError, ValueError) as err:
            raise LoadgenError(
                self._describe(f"exited 0 but its result {self.result_path} is unreadable ({err})")
            ) from err
        if not isinstance(data, dict):
            raise LoadgenError(self._describe(f"wrote a non-object result to {self.result_path}"))
        self._result = parse_result(
            data,
            result_path=self.result_path,
            log_path=self.log_path,
            startup_seconds=self.startup_seconds,
            output_tail=self.tail(),
        )
        return self._result

    def stop(self, *, grace: float = 5.0) -> int | None:
        """SIGTERM its process group, SIGKILL after ``grace`` seconds; the exit code."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if self._popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(wait)
        self._reader.join(5)
        return self._popen.poll()

    def _describe(self, what: str) -> str:
        return (
            f"vllm bench serve {what}; log {self.log_path}\n"
            f"command: {' '.join(self.argv)}\nlast lines of its output:\n{self.tail()}"
        )

    def __enter__(self) -> BenchProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_vllm_bench(
    *,
    base_url: str,
    model: str,
    tokenizer: Path,
    endpoint: str = "/v1/chat/completions",
    api_key: str | None,
    num_prompts: int,
    request_rate: float,
    max_concurrency: int | None,
    input_len: int,
    output_len: int,
    result_dir: Path,
    extra: Sequence[str] = (),
    engine_env: EngineEnv | None = None,
) -> BenchProcess:
    """Start ``vllm bench serve`` and return at once (see :func:`run_vllm_bench`)."""
    env = engine_env or require_engine_env()
    if not Path(tokenizer).is_dir():
        raise LoadgenError(f"tokenizer {tokenizer}: not a directory (the hub is not reachable)")
    result_dir = Path(result_dir).resolve()
    result_dir.mkdir(parents=True, exist_ok=True)
    stem = f"vllm-bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    argv = bench_argv(
        env.vllm_cli,
        base_url=base_url,
        model=model,
        tokenizer=Path(tokenizer),
        endpoint=endpoint,
        num_prompts=num_prompts,
        request_rate=request_rate,
        max_concurrency=max_concurrency,
        input_len=input_len,
        output_len=output_len,
        result_dir=result_dir,
        result_filename=f"{stem}.json",
        extra=extra,
    )
    return BenchProcess(
        argv,
        env=bench_environ(base_url=base_url, api_key=api_key),
        result_path=result_dir / f"{stem}.json",
        log_path=result_dir / f"{stem}.log",
    )


def run_vllm_bench(
    *,
    base_url: str,
    model: str,
    tokenizer: Path,
    endpoint: str = "/v1/chat/completions",
    api_key: str | None,
    num_prompts: int,
    request_rate: float,
    max_concurrency: int | None,
    input_len: int,
    output_len: int,
    result_dir: Path,
    timeout: float,
    extra: Sequence[str] = (),
    engine_env: EngineEnv | None = None,
) -> BenchResult:
    """Run ``vllm bench serve`` to the end (``timeout`` seconds, start-up included).

    ``model`` is the server's served model name; ``tokenizer`` a local tokenizer directory
    (:func:`tiny_model_tokenizer`); ``api_key`` goes in ``OPENAI_API_KEY``. The result JSON
    and the command's log land in ``result_dir``. Raises :class:`LoadgenError` with the
    output's tail if the command fails, times out, or leaves no result; failed *requests*
    are counted in :attr:`BenchResult.failed`, not raised.
    """
    bench = start_vllm_bench(
        base_url=base_url,
        model=model,
        tokenizer=tokenizer,
        endpoint=endpoint,
        api_key=api_key,
        num_prompts=num_prompts,
        request_rate=request_rate,
        max_concurrency=max_concurrency,
        input_len=input_len,
        output_len=output_len,
        result_dir=result_dir,
        extra=extra,
        engine_env=engine_env,
    )
    with bench:
        return bench.wait(timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.loadgen",
        description="Run vllm bench serve (the engine venv's) against an OpenAI-compatible URL.",
    )
    parser.add_argument("--base-url", required=True, help="e.g. http://127.64.0.5:8000")
    parser.add_argument("--model", required=True, help="the server's served model name")
    parser.add_argument("--tokenizer", type=Path, help="default: the tiny model's directory")
    parser.add_argument("--endpoint", default="/v1/chat/completions")
    parser.add_argument("--api-key", default=None, help=f"default: ${API_KEY_ENV}")
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--request-rate", type=float, default=10.0)
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--result-dir", type=Path, default=Path("vllm-bench-results"))
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("extra", nargs="*", help="more vllm bench serve flags, after --")
    args = parser.parse_args(argv)
    try:
        result = run_vllm_bench(
            base_url=args.base_url,
            model=args.model,
            tokenizer=args.tokenizer or tiny_model_tokenizer(),
            endpoint=args.endpoint,
            api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV),
            num_prompts=args.num_prompts,
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            input_len=args.input_len,
            output_len=args.output_len,
            result_dir=args.result_dir,
            timeout=args.timeout,
            extra=args.extra,
        )
    except LoadgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in vars(result).items() if k not in ("raw", "output_tail")}
    print(json.dumps(summary, default=str, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
