"""The router front (`magistral-runtime front`) in front of the REAL vllm-router 0.1.17 binary
and the engine simulator, all on 127.0.0.1: hold at zero workers, the hold timeout's 503,
streaming, per-worker admission, a router restart, client disconnects, draining, refusals.

vllm-router comes from the dev extras (`make venv`); without it these tests fail, never skip.
Waits are bounded polls for a state (`wait_until`), never timing assertions.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from magistral_runtime.front.proxy import says_no_workers
from magistral_runtime.front.workers import parse_workers
from tests.e2e_engine.conftest import ROOT, ThreadedSimulator

HOST = "127.0.0.1"
ROUTER_BINARY = Path(sys.executable).parent / "vllm-router"
JSON = {"Content-Type": "application/json"}
CHAT = {"model": "magistral-test", "messages": [{"role": "user", "content": "hello"}]}
SLOW = {"itl_ms": 20.0, "output_tokens_min": 100, "output_tokens_max": 100}
"""A simulated replica whose answers take about 2 s (100 tokens, 20 ms apart)."""
LONGER = {**SLOW, "output_tokens_min": 300, "output_tokens_max": 300}
"""About 6 s an answer: for tests that must see a request still running after a chain of
polls and signals (2 s is little on a loaded 2-core runner)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, what: str, timeout: float = 30.0, log: Callable[[], str]
) -> Any:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (and the logs) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            result = predicate()
            if result:
                return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log()}")
        time.sleep(0.05)


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: dict[str, Any] | bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=data, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class Background:
    """A request on its own thread; ``result()`` waits for its answer."""

    def __init__(self, port: int, body: dict[str, Any], **kwargs: Any) -> None:
        self._out: list[tuple[int, dict[str, str], bytes]] = []
        self._errors: list[BaseException] = []

        def run() -> None:
            try:
                self._out.append(
                    request(port, "/v1/chat/completions", method="POST", body=body, **kwargs)
                )
            except BaseException as exc:
                self._errors.append(exc)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        self._thread.join(timeout)
        if self._errors:
            raise self._errors[0]
        assert self._out, "the request did not finish"
        return self._out[0]


class Process:
    """A child process whose output goes to a file (shown when a test fails)."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return (
            f"--- {self.argv[0]} ({self.log_path}):\n"
            + self.log_path.read_text(errors="replace")[-4000:]
        )

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self._log.close()


class Stack:
    """vllm-router and the front on loopback ports; the test adds simulators."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.router_port = free_port()
        self.router_metrics_port = free_port()
        self.front_port = free_port()
        self.demand_port = free_port()
        self.router: Process | None = None
        self.front: Process | None = None
        self._all: list[Process] = []

    def logs(self) -> str:
        return "\n".join(p.output() for p in self._all)

    def start_router(self, *worker_urls: str) -> None:
        argv = [
            str(ROUTER_BINARY),
            "--host",
            HOST,
            "--port",
            str(self.router_port),
            "--prometheus-host",
            HOST,
            "--prometheus-port",
            str(self.router_metrics_port),
            "--log-level",
            "error",  # (0.1.17 reads "warning" as info)
        ]
        if worker_urls:
            argv += ["--worker-urls", *worker_urls]
        self.router = Process(argv, self.tmp_path / "router.log")
        self._all.append(self.router)
        wait_until(
            lambda: request(self.router_port, "/liveness")[0] == 200,
            what="vllm-router to listen",
            log=self.logs,
        )

    def add_worker(self, url: str) -> None:
        status, _, body = request(self.router_port, f"/add_worker?url={url}", method="POST")
        assert status == 200, body

    def start_front(self, *flags: str) -> None:
        argv = [
            sys.executable,
            "-m",
            "magistral_runtime.cli",
            "front",
            "--host",
            HOST,
            "--port",
            str(self.front_port),
            "--demand-port",
            str(self.demand_port),
            "--router-url",
            f"http://{HOST}:{self.router_port}",
            "--poll-interval-seconds",
            "0.1",
            "--log-level",
            "debug",
            *flags,
        ]
        self.front = Process(argv, self.tmp_path / "front.log")
        self._all.append(self.front)
        wait_until(self.demand, what="the front's /demand", log=self.logs)

    def demand(self) -> dict[str, Any]:
        status, _, body = request(self.demand_port, "/demand", timeout=10)
        assert status == 200
        document: dict[str, Any] = json.loads(body)
        return document

    def wait_demand(self, what: str, predicate: Callable[[dict[str, Any]], bool]) -> None:
        wait_until(lambda: predicate(self.demand()), what=what, log=self.logs)

    def chat(self, body: dict[str, Any] | None = None, **kwargs: Any) -> Background:
        return Background(self.front_port, body or CHAT, **kwargs)

    def close(self) -> None:
        for proc in self._all:
            proc.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if not ROUTER_BINARY.exists():
        pytest.fail(
            f"vllm-router is not installed ({ROUTER_BINARY} is missing): run `make venv` "
            "(the dev extras pin vllm-router==0.1.17)"
        )
    started = Stack(tmp_path)
    yield started
    started.close()


SimFactory = Callable[..., ThreadedSimulator]


def test_vllm_router_answers_the_front_relies_on(stack: Stack, sim_factory: SimFactory) -> None:
    """What the front reads from vllm-router 0.1.17: its "no workers" 503s and GET /workers."""
    stack.start_router()
    completion = {"model": "magistral-test", "prompt": "hello"}
    for method, path, body in [
        ("POST", "/v1/chat/completions", CHAT),  # "No available workers (all circuits ...)"
        ("POST", "/v1/completions", completion),
        ("GET", "/v1/models", None),  # "No workers are currently available"
        ("GET", "/version", None),  # "No available workers"
    ]:
        status, _, answer = request(stack.router_port, path, method=method, body=body)
        assert says_no_workers(status, answer), (path, status, answer)
    status, _, body = request(stack.router_port, "/workers")
    assert status == 200
    assert parse_workers(json.loads(body)) == (0, {})
    sim = sim_factory()
    stack.add_worker(sim.url)
    status, _, body = request(stack.router_port, "/workers")
    assert parse_workers(json.loads(body)) == (1, {sim.url: 0})


def test_held_at_zero_workers_then_served_when_a_worker_comes(
    stack: Stack, sim_factory: SimFactory
) -> None:
    stack.start_router()  # no worker: vllm-router alone would answer 503 at once
    stack.start_front()
    stack.wait_demand("the router up with 0 workers", lambda d: d["router"]["up"])
    pending = stack.chat()
    stack.wait_demand("the request held", lambda d: d["held"] == 1)
    demand = stack.demand()
    assert (demand["queued"], demand["inFlight"], demand["workers"], demand["capacity"]) == (
        0,
        0,
        0,
        0,
    )
    sim = sim_factory()
    stack.add_worker(sim.url)
    status, _, body = pending.result()
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"]
    demand = stack.demand()
    assert demand["held"] == 0
    assert (demand["arrivalsTotal"], demand["completedTotal"]) == (1, 1)
    assert demand["workers"] == 1
    assert demand["capacity"] == 128  # ceil(1 * 256 / 2) with the default flags
    assert list(demand["workerLoads"]) == [sim.url]


def test_hold_timeout_answers_503_with_retry_after(stack: Stack) -> None:
    stack.start_router()
    stack.start_front("--hold-timeout-seconds", "1", "--retry-after-seconds", "7")
    stack.wait_demand("the router up", lambda d: d["router"]["up"])
    status, headers, body = stack.chat().result()
    assert status == 503
    assert headers["Retry-After"] == "7"
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["type"] == "ServiceUnavailable"
    assert (error["param"], error["code"]) == (None, 503)
    assert "no replica of this endpoint became ready within 1 s" in error["message"]
    assert "retry after 7 s" in error["message"]
    demand = stack.demand()
    assert (demand["held"], demand["holdTimeoutsTotal"], demand["arrivalsTotal"]) == (0, 1, 1)


def test_streaming_passes_through_as_it_comes(stack: Stack, sim_factory: SimFactory) -> None:
    sim = sim_factory(**LONGER)  # still running after a stall between two reads
    stack.start_router(sim.url)
    stack.start_front()
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    conn = http.client.HTTPConnection(HOST, stack.front_port, timeout=60)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({**CHAT, "stream": True}),
        headers=JSON,
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    first = resp.readline().decode()
    assert first.startswith("data: {")
    # The first event is here while the request still runs: relayed, not buffered.
    assert stack.demand()["inFlight"] == 1
    events = [first.strip()] + [
        line.strip() for line in resp.read().decode().splitlines() if line.strip()
    ]
    conn.close()
    assert len(events) > 10
    assert events[-1] == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)
    stack.wait_demand("the stream completed", lambda d: d["completedTotal"] == 1)


def test_admission_per_worker_keeps_the_rest_queued(stack: Stack, sim_factory: SimFactory) -> None:
    sim = sim_factory(**LONGER)
    stack.start_router(sim.url)
    stack.start_front("--max-num-seqs", "2", "--router-replicas", "1")
    stack.wait_demand("the worker", lambda d: d["workers"] == 1 and d["capacity"] == 2)
    seen: list[dict[str, Any]] = []
    engine: list[int] = []

    def sample(d: dict[str, Any]) -> dict[str, Any]:
        seen.append(d)
        engine.append(sim.in_loop(lambda: sim.sim.engine.in_flight if sim.sim else -1))
        return d

    pending = [stack.chat() for _ in range(5)]
    stack.wait_demand(
        "2 in flight and 3 queued",
        lambda d: (sample(d)["inFlight"], d["queued"], d["held"]) == (2, 3, 0),
    )
    results = [p.result() for p in pending]
    assert [status for status, _, _ in results] == [200] * 5
    stack.wait_demand("all 5 completed", lambda d: sample(d)["completedTotal"] == 5)
    assert max(d["inFlight"] for d in seen) == 2
    # The engine only ever ran what the front admitted (the router sends on at once).
    assert max(engine) <= 2
    assert all(load <= 2 for d in seen for load in d["workerLoads"].values())
    final = stack.demand()
    assert (final["inFlight"], final["queued"], final["arrivalsTotal"]) == (0, 0, 5)


def test_router_restart_holds_requests_and_health_follows(
    stack: Stack, sim_factory: SimFactory
) -> None:
    sim = sim_factory()
    stack.start_router(sim.url)
    stack.start_front()
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    assert request(stack.demand_port, "/healthz")[0] == 200
    assert stack.router is not None
    stack.router.stop(signal.SIGKILL)
    wait_until(
        lambda: request(stack.demand_port, "/healthz")[0] == 503,
        what="/healthz 503 with the router gone",
        log=stack.logs,
    )
    demand = stack.demand()
    assert demand["router"]["up"] is False
    assert demand["router"]["error"]
    assert demand["workers"] == 0
    pending = stack.chat()
    stack.wait_demand("the request held", lambda d: d["held"] == 1)
    stack.start_router(sim.url)
    status, _, body = pending.result()
    assert status == 200, body
    wait_until(
        lambda: request(stack.demand_port, "/healthz")[0] == 200,
        what="/healthz 200 with the router back",
        log=stack.logs,
    )
    assert stack.demand()["router"] == {"up": True, "error": None}


def test_client_disconnect_frees_the_slot_and_the_engine(
    stack: Stack, sim_factory: SimFactory
) -> None:
    sim = sim_factory(**SLOW)
    stack.start_router()
    stack.start_front("--max-num-seqs", "1", "--router-replicas", "1")
    stack.wait_demand("the router up", lambda d: d["router"]["up"])
    # Held, then the client leaves: it is counted as cancelled and nothing stays held.
    conn = http.client.HTTPConnection(HOST, stack.front_port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(CHAT), headers=JSON)
    stack.wait_demand("the request held", lambda d: d["held"] == 1)
    conn.close()
    stack.wait_demand(
        "the held request cancelled", lambda d: (d["held"], d["cancelledTotal"]) == (0, 1)
    )
    # In flight (streaming), then the client leaves: the slot and the engine are freed.
    stack.add_worker(sim.url)
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    conn = http.client.HTTPConnection(HOST, stack.front_port, timeout=60)
    conn.request(
        "POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}), headers=JSON
    )
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: {")
    assert stack.demand()["inFlight"] == 1
    conn.close()
    stack.wait_demand("the slot released", lambda d: (d["inFlight"], d["completedTotal"]) == (0, 1))
    wait_until(
        lambda: sim.in_loop(lambda: sim.sim.engine.in_flight if sim.sim else -1) == 0,
        what="the engine to drop the abandoned request",
        log=stack.logs,
    )
    status, _, _ = stack.chat().result()  # the one slot is free again
    assert status == 200


def test_sigterm_lets_in_flight_finish_and_answers_held_at_the_deadline(
    stack: Stack, sim_factory: SimFactory
) -> None:
    sim = sim_factory(**LONGER)
    stack.start_router(sim.url)
    stack.start_front("--max-num-seqs", "1", "--router-replicas", "1", "--drain-seconds", "30")
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    running = stack.chat()
    stack.wait_demand("one in flight", lambda d: d["inFlight"] == 1)
    assert stack.front is not None
    stack.front.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection((HOST, stack.front_port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, what="the front to stop accepting", log=stack.logs)
    assert stack.demand()["inFlight"] == 1  # still running, still reported
    status, _, body = running.result()
    assert status == 200, body
    assert stack.front.proc.wait(timeout=60) == 0


def test_pod_shutdown_router_gone_answers_queued_at_once(
    stack: Stack, sim_factory: SimFactory
) -> None:
    """SIGTERM to both containers, as in a terminating pod: vllm-router stops listening at
    once but finishes what it has; the front's queued request can no longer be sent, so it
    gets its 503 then, not at the (10-minute) drain deadline."""
    sim = sim_factory(**LONGER)
    stack.start_router(sim.url)
    stack.start_front("--max-num-seqs", "1", "--router-replicas", "1", "--drain-seconds", "600")
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    running = stack.chat()
    stack.wait_demand("one in flight", lambda d: d["inFlight"] == 1)
    queued = stack.chat()
    stack.wait_demand("one queued", lambda d: d["queued"] == 1)
    assert stack.router is not None
    assert stack.front is not None
    stack.router.proc.send_signal(signal.SIGTERM)
    stack.front.proc.send_signal(signal.SIGTERM)
    status, headers, body = queued.result(timeout=120)
    assert status == 503
    assert "shutting down" in json.loads(body)["error"]["message"]
    assert "Retry-After" in headers
    status, _, body = running.result()
    assert status == 200, body  # the router finished what it had
    assert stack.front.proc.wait(timeout=120) == 0


def test_drain_deadline_answers_held_requests_503(stack: Stack) -> None:
    stack.start_router()
    stack.start_front("--drain-seconds", "0.5", "--retry-after-seconds", "3")
    stack.wait_demand("the router up", lambda d: d["router"]["up"])
    pending = stack.chat()
    stack.wait_demand("the request held", lambda d: d["held"] == 1)
    assert stack.front is not None
    stack.front.proc.send_signal(signal.SIGTERM)
    status, headers, body = pending.result()
    assert status == 503
    assert headers["Retry-After"] == "3"
    assert "shutting down" in json.loads(body)["error"]["message"]
    assert stack.front.proc.wait(timeout=60) == 0


def test_refusals_and_authorization_pass_through(stack: Stack, sim_factory: SimFactory) -> None:
    sim = sim_factory(api_keys=("secret-key",))
    stack.start_router(sim.url)
    stack.start_front("--max-body-bytes", "2000")
    stack.wait_demand("the worker", lambda d: d["workers"] == 1)
    auth = {"Authorization": "Bearer secret-key"}
    status, _, body = request(
        stack.front_port, "/v1/chat/completions", method="POST", body=CHAT, headers=auth
    )
    assert status == 200, body
    status, _, _ = request(stack.front_port, "/v1/chat/completions", method="POST", body=CHAT)
    assert status == 401  # the engine saw no key: the front forwards what the client sent
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}
    status, _, body = request(
        stack.front_port, "/v1/chat/completions", method="POST", body=big, headers=auth
    )
    assert status == 413
    assert json.loads(body)["error"]["code"] == 413
    for path in ("/add_worker?url=http://127.0.0.1:1", "/%61dd_worker", "//workers", "/workers/x"):
        status, _, body = request(stack.front_port, path, method="POST")
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == 404
    status, _, body = request(stack.router_port, "/list_workers")
    assert json.loads(body)["urls"] == [sim.url]  # nobody added a worker through the front
    assert stack.demand()["arrivalsTotal"] == 2  # refused requests never reach the gate
