"""What the router front costs and how fast it releases held requests (docs/router-front.md).

Real processes on 127.0.0.1: the engine simulator, vllm-router 0.1.17 (from the venv) and
`magistral-runtime front` with its default flags. Requests go one at a time over keep-alive
connections, alternately straight to the router and through the front, so both see the same
machine state.

    .venv/bin/python bench/front_overhead.py [--iterations 300] [--releases 10]

Reported:
* request: a non-streamed chat completion (16 tokens), router alone vs front + router;
* first event: time to the first SSE event of a streamed one;
* release: with the router at zero workers, a held request; the time from `POST /add_worker`
  returning to the request's answer (the front notices the worker at its next poll, every
  0.5 s by default, then sends at once). The worker is removed again between rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ROUTER = Path(sys.executable).parent / "vllm-router"
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


@contextlib.contextmanager
def started(argv: list[str], ready: Callable[[], bool], what: str) -> Iterator[None]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready, what)
        yield
    finally:
        proc.kill()
        proc.wait()


def timed_request(conn: http.client.HTTPConnection, *, stream: bool) -> float:
    """Milliseconds to the whole answer (stream=False) or to the first event (stream=True)."""
    body = json.dumps({**CHAT, "stream": stream})
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers=JSON)
    resp = conn.getresponse()
    if stream:
        resp.readline()
        elapsed = time.perf_counter() - start
        resp.read()
    else:
        resp.read()
        elapsed = time.perf_counter() - start
    if resp.status != 200:
        raise SystemExit(f"unexpected status {resp.status}")
    return elapsed * 1000


def summary(name: str, direct: list[float], front: list[float]) -> None:
    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    d50, f50 = statistics.median(direct), statistics.median(front)
    print(
        f"{name:12s} router p50 {d50:7.2f} ms p99 {pct(direct, 0.99):7.2f} ms | "
        f"front+router p50 {f50:7.2f} ms p99 {pct(front, 0.99):7.2f} ms | "
        f"added p50 {f50 - d50:+.2f} ms"
    )


def overhead(router_port: int, front_port: int, iterations: int) -> None:
    direct_conn = http.client.HTTPConnection(HOST, router_port, timeout=30)
    front_conn = http.client.HTTPConnection(HOST, front_port, timeout=30)
    for stream, name in ((False, "request"), (True, "first event")):
        direct: list[float] = []
        front: list[float] = []
        for _ in range(10):  # warm-up: connections, caches
            timed_request(direct_conn, stream=stream)
            timed_request(front_conn, stream=stream)
        for _ in range(iterations):
            direct.append(timed_request(direct_conn, stream=stream))
            front.append(timed_request(front_conn, stream=stream))
        summary(name, direct, front)


def answer_time(front_port: int, out: list[float]) -> None:
    conn = http.client.HTTPConnection(HOST, front_port, timeout=120)
    timed_request(conn, stream=False)
    out.append(time.perf_counter())


def releases(router_port: int, front_port: int, demand_port: int, sim_url: str, n: int) -> None:
    def post(port: int, path: str) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        conn.request("POST", path)
        conn.getresponse().read()
        conn.close()

    def held() -> bool:
        conn = http.client.HTTPConnection(HOST, demand_port, timeout=10)
        conn.request("GET", "/demand")
        document = json.loads(conn.getresponse().read())
        conn.close()
        return bool(document["held"] == 1)

    delays: list[float] = []
    for _ in range(n):
        post(router_port, f"/remove_worker?url={sim_url}")
        wait_for(lambda: not held() and get_status(demand_port, "/healthz") == 200, "idle")
        done: list[float] = []
        thread = threading.Thread(target=answer_time, args=(front_port, done))
        thread.start()
        wait_for(held, "a held request")
        post(router_port, f"/add_worker?url={sim_url}")
        added = time.perf_counter()
        thread.join()
        delays.append((done[0] - added) * 1000)
    print(
        f"release      after add_worker: median {statistics.median(delays):.0f} ms, "
        f"max {max(delays):.0f} ms over {n} (poll interval 500 ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--releases", type=int, default=10)
    args = parser.parse_args()
    if not ROUTER.exists():
        raise SystemExit(f"{ROUTER} is missing: run `make venv`")
    sim_port, router_port, metrics_port, front_port, demand_port = (free_port() for _ in range(5))
    sim_url = f"http://{HOST}:{sim_port}"
    sim = [sys.executable, "-m", "e2e.engine.simulator", "--host", HOST, "--port", str(sim_port)]
    sim += ["--served-model-name", "bench", "--max-model-len", "4096", "--ttft-ms", "5"]
    sim += ["--itl-ms", "1", "--output-tokens-min", "16", "--output-tokens-max", "16"]
    sim += ["--prefill-ms-per-token", "0", "--kv-cache-tokens", "65536"]
    router = [str(ROUTER), "--host", HOST, "--port", str(router_port), "--log-level", "error"]
    router += ["--prometheus-host", HOST, "--prometheus-port", str(metrics_port)]
    router += ["--worker-urls", sim_url]
    front = [sys.executable, "-m", "magistral_runtime.cli", "front", "--host", HOST]
    front += ["--port", str(front_port), "--demand-port", str(demand_port)]
    front += ["--router-url", f"http://{HOST}:{router_port}", "--log-level", "warning"]
    with (
        started(sim, lambda: get_status(sim_port, "/health") == 200, "the simulator"),
        started(router, lambda: get_status(router_port, "/readiness") == 200, "vllm-router"),
        started(front, lambda: get_status(demand_port, "/healthz") == 200, "the front"),
    ):
        wait_for(lambda: get_status(front_port, "/v1/models") == 200, "the front's first worker")
        overhead(router_port, front_port, args.iterations)
        releases(router_port, front_port, demand_port, sim_url, args.releases)


if __name__ == "__main__":
    main()
