"""HTTP helpers for the real engine's tests (stdlib only: urllib, no client library)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families


class Server(Protocol):
    """A real engine (RealEngine) or a simulator started like one."""

    @property
    def url(self) -> str: ...

    @property
    def api_key(self) -> str | None: ...


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    engine: Server,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = "default",
    timeout: float = 120.0,
    raw: bytes | None = None,
    method: str | None = None,
) -> Response:
    """One HTTP request (POST with a JSON body, else GET); never raises on 4xx/5xx."""
    headers = {"Content-Type": "application/json"}
    api_key = engine.api_key if key == "default" else key
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{engine.url}{path}", data=data, headers=headers, method=method
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            content = resp.read()
            return Response(
                resp.status, dict(resp.headers.items()), content, time.monotonic() - started
            )
    except urllib.error.HTTPError as err:
        content = err.read()
        return Response(err.code, dict(err.headers.items()), content, time.monotonic() - started)


def stream_events(engine: Server, path: str, body: dict[str, Any]) -> list[Any]:
    """The SSE `data:` payloads of a streamed request, JSON-decoded ('[DONE]' kept as is)."""
    request = urllib.request.Request(
        f"{engine.url}{path}",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {engine.api_key}",
        },
    )
    events: list[Any] = []
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 200
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def families(engine: Server) -> dict[str, Any]:
    """``/metrics`` parsed by prometheus_client: family name -> family."""
    text = call(engine, "/metrics", key=None).body.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def one_sample(metrics: dict[str, Any], name: str) -> float:
    """The value of a one-sample family of a scrape (:func:`families`)."""
    (sample,) = metrics[name].samples
    return float(sample.value)


def gauge(engine: Server, name: str) -> float:
    """The value of a one-sample gauge such as ``vllm:num_requests_waiting``."""
    return one_sample(families(engine), name)


class Background:
    """A request run in a thread on its own connection: streamed (SSE events kept with their
    arrival times) or not; ``cancel`` shuts the socket, which vLLM sees as a disconnect."""

    def __init__(self, engine: Server, path: str, body: dict[str, Any]) -> None:
        host, port = engine.url.removeprefix("http://").split(":")
        self._conn = http.client.HTTPConnection(host, int(port), timeout=600)
        self._path = path
        self._body = body
        self._headers = {"Content-Type": "application/json"}
        if engine.api_key:
            self._headers["Authorization"] = f"Bearer {engine.api_key}"
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.events: list[tuple[float, Any]] = []
        self.body = b""
        self.error: BaseException | None = None
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Background:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._conn.request("POST", self._path, json.dumps(self._body), self._headers)
            resp = self._conn.getresponse()
            self.status = resp.status
            self.headers = {k.lower(): v for k, v in resp.getheaders()}
            if not self._body.get("stream") or resp.status != 200:
                self.body = resp.read()
                return
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data: "):
                    payload = line[len("data: ") :]
                    event = payload if payload == "[DONE]" else json.loads(payload)
                    self.events.append((time.monotonic(), event))
        except (OSError, http.client.HTTPException, ValueError) as err:
            self.error = err
        finally:
            self.ended = time.monotonic()

    def wait_for_events(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert self.ended is None, f"ended early: {self.status} {self.error} {self.events}"
            assert time.monotonic() < deadline, f"fewer than {count} events in {timeout} s"
            time.sleep(0.02)

    def join(self, timeout: float = 120) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self._path} still running after {timeout} s"

    def cancel(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.join(30)
        self._conn.close()

    @property
    def payloads(self) -> list[Any]:
        return [event for _, event in self.events]
