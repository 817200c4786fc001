"""The simulator as a process: start-up delay, SIGTERM draining, refusals, health signals."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_engine.conftest import SimProcess, fetch, metrics, middleware_runtime_config, value

FAST = ["--ttft-ms", "5", "--prefill-ms-per-token", "0", "--max-model-len", "4096"]
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def processes() -> Iterator[list[SimProcess]]:
    started: list[SimProcess] = []
    yield started
    for proc in started:
        proc.stop()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def stream(url: str, *, max_tokens: int) -> tuple[list[str], http.client.HTTPResponse]:
    """Start a streamed chat request; return its first event and the response to read on."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"messages": MESSAGES, "stream": True, "max_tokens": max_tokens, "ignore_eos": True}
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    first = resp.readline().decode()
    assert first.startswith("data: {")
    return [first], resp


def read_rest(resp: http.client.HTTPResponse, into: list[str]) -> None:
    """Read the rest of a streamed response (an aborted one ends early)."""
    try:
        while line := resp.readline():
            into.append(line.decode())
    except (http.client.HTTPException, OSError):
        return


def test_port_opens_only_after_the_startup_delay(processes: list[SimProcess]) -> None:
    host = "127.64.0.5"  # a pod-like loopback address: binding needs no setup on Linux
    port = free_port(host)
    proc = SimProcess("--host", host, "--port", str(port), "--startup-delay", "1.5", *FAST)
    processes.append(proc)
    assert refused(host, port)  # "loading the model": nothing listens yet
    url = proc.wait_listening()
    assert url == f"http://{host}:{port}"
    assert fetch(url + "/health")[0] == 200


def test_sigterm_drains_in_flight_requests(processes: list[SimProcess]) -> None:
    """Running and queued requests all finish; the port closes; the process exits 0."""
    proc = SimProcess(
        "--port", "0", "--itl-ms", "50", "--shutdown-timeout", "60", "--max-num-seqs", "2", *FAST
    )  # 5 s a request: the third still queued when the signal comes, whatever the load
    processes.append(proc)
    url = proc.wait_listening()
    outputs: list[list[str]] = [[] for _ in range(3)]

    def one(into: list[str]) -> None:
        lines, resp = stream(url, max_tokens=100)
        into.extend(lines)
        read_rest(resp, into)

    readers = [threading.Thread(target=one, args=(out,)) for out in outputs]
    for reader in readers:
        reader.start()
    while True:  # 2 running and 1 queued when the signal comes
        samples = metrics(url)
        running = value(samples, "vllm:num_requests_running")
        waiting = value(samples, "vllm:num_requests_waiting")
        if (running, waiting) == (2, 1):
            break
        assert value(samples, "vllm:request_success_total", finished_reason="length") == 0
    proc.proc.send_signal(signal.SIGTERM)
    for reader in readers:
        reader.join(timeout=60)
    assert proc.proc.wait(timeout=60) == 0
    for lines in outputs:
        text = "".join(lines)
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        assert '"finish_reason":"length"' in text
    host, port = url.removeprefix("http://").split(":")
    assert refused(host, int(port))
    assert any("draining 3 in-flight requests" in line for line in proc.lines)


def test_sigterm_with_no_shutdown_timeout_aborts(processes: list[SimProcess]) -> None:
    proc = SimProcess("--port", "0", "--itl-ms", "10", *FAST)  # vLLM's default: 0
    processes.append(proc)
    url = proc.wait_listening()
    lines, resp = stream(url, max_tokens=3000)
    proc.proc.send_signal(signal.SIGTERM)
    read_rest(resp, lines)
    assert proc.proc.wait(timeout=30) == 0
    assert "data: [DONE]" not in "".join(lines)
    assert any("aborting 1 requests" in line for line in proc.lines)


def test_new_requests_are_refused_while_draining(processes: list[SimProcess]) -> None:
    proc = SimProcess("--port", "0", "--itl-ms", "10", "--shutdown-timeout", "60", *FAST)
    processes.append(proc)
    url = proc.wait_listening()
    lines, resp = stream(url, max_tokens=300)
    host, port = url.removeprefix("http://").split(":")
    proc.proc.send_signal(signal.SIGTERM)
    while not any("draining" in line for line in proc.lines):
        assert proc.proc.poll() is None
        threading.Event().wait(0.05)
    assert refused(host, int(port))  # the listener is closed at once
    read_rest(resp, lines)
    assert "".join(lines).rstrip().endswith("data: [DONE]")
    assert proc.proc.wait(timeout=30) == 0


def test_health_follows_sigusr1_and_sigusr2(processes: list[SimProcess]) -> None:
    proc = SimProcess("--port", "0", "--start-unhealthy", *FAST)
    processes.append(proc)
    url = proc.wait_listening()
    assert fetch(url + "/health")[0] == 503
    assert fetch(url + "/v1/models")[0] == 200  # a failing probe, not a dead server
    proc.proc.send_signal(signal.SIGUSR2)
    while fetch(url + "/health")[0] != 200:
        assert proc.proc.poll() is None
    proc.proc.send_signal(signal.SIGUSR1)
    while fetch(url + "/health")[0] != 503:
        assert proc.proc.poll() is None
    assert value(metrics(url), "vllm:num_requests_running") == 0


def test_refuses_non_loopback_addresses(processes: list[SimProcess]) -> None:
    proc = SimProcess("--host", "0.0.0.0", "--port", "0")
    processes.append(proc)
    assert proc.proc.wait(timeout=30) == 2
    assert proc.proc.stdout is not None
    assert "refusing to bind" in proc.proc.stdout.read()


def test_fails_like_vllm_when_the_weights_do_not_fit(processes: list[SimProcess]) -> None:
    proc = SimProcess("--port", "0", "--gpu", "NVIDIA-L40S")  # 47 GB of bf16 on one 48 GB GPU
    processes.append(proc)
    assert proc.proc.wait(timeout=30) == 1
    assert proc.proc.stdout is not None
    assert "No available memory for the cache blocks" in proc.proc.stdout.read()


def test_runtime_middleware_runs_inside_like_in_vllm(
    processes: list[SimProcess], tmp_path: Path
) -> None:
    """`--middleware magistral_runtime.middleware.MagistralMiddleware`, as the pods run it."""
    path = middleware_runtime_config(tmp_path)
    proc = SimProcess(
        "--port", "0", "--served-model-name", "magistral-test", "--itl-ms", "2",
        "--middleware", "magistral_runtime.middleware.MagistralMiddleware", *FAST,
        env={"MAGISTRAL_RUNTIME_CONFIG": str(path)},
    )  # fmt: skip
    processes.append(proc)
    url = proc.wait_listening()
    body = json.dumps({"model": "magistral-test", "messages": MESSAGES}).encode()
    status, raw = fetch(url + "/v1/chat/completions", method="POST", body=body)
    assert status == 200, raw
    message = json.loads(raw)["choices"][0]["message"]
    assert "<think>" not in message["content"]
    assert message.get("reasoning") or message.get("reasoning_content")
    lines, resp = stream(url, max_tokens=40)
    read_rest(resp, lines)
    deltas = [
        json.loads(line.removeprefix("data: "))["choices"]
        for line in lines
        if line.startswith("data: {")
    ]
    text = "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
    assert "think>" not in text
    status, raw = fetch(url + "/magistral/ready")  # one real generation through the stack
    assert status == 200, raw
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(timeout=30) == 0


def test_a_saturated_simulator_with_the_middleware_stays_ready(
    processes: list[SimProcess], tmp_path: Path
) -> None:
    """As on the real engine (tests/vllm/test_runtime_options.py): with every slot taken by
    non-streamed requests, the readiness generation waits in the queue and times out, but the
    engine's `vllm:generation_tokens_total` (in the process's default registry, as in vLLM)
    grows, so the replica is busy, not unready; the timed-out generation leaves the queue."""
    config = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-test",
        "tensor_parallel_size": 1,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        "system_prompt": {"mode": "none"},
        "api_key_required": False,
        "health": {"generation_timeout_seconds": 0.5, "cache_seconds": 0},
    }
    path = tmp_path / "runtime.json"
    path.write_text(json.dumps(config))
    proc = SimProcess(
        "--port", "0", "--served-model-name", "magistral-test", "--itl-ms", "5",
        "--max-num-seqs", "1", "--middleware", "magistral_runtime.middleware.MagistralMiddleware",
        *FAST, env={"MAGISTRAL_RUNTIME_CONFIG": str(path)},
    )  # fmt: skip
    processes.append(proc)
    url = proc.wait_listening()
    long = json.dumps(
        {"model": "magistral-test", "messages": MESSAGES, "max_tokens": 2000, "ignore_eos": True}
    ).encode()

    def request() -> None:
        with contextlib.suppress(OSError):  # the process is killed at the end of the test
            fetch(url + "/v1/chat/completions", method="POST", body=long, timeout=60)

    threads = [threading.Thread(target=request, daemon=True) for _ in range(2)]  # 1 runs, 1 waits
    for thread in threads:
        thread.start()
    samples = metrics(url)
    for _ in range(100):
        if value(samples, "vllm:num_requests_waiting") == 1:
            break
        threading.Event().wait(0.05)
        samples = metrics(url)
    assert value(samples, "vllm:num_requests_waiting") == 1
    status, raw = fetch(url + "/magistral/ready")
    report = json.loads(raw)
    assert (status, report["status"]) == (200, "serving"), report
    assert report["detail"].startswith("busy:")
    assert value(metrics(url), "vllm:num_requests_waiting") == 1  # the generation was aborted
