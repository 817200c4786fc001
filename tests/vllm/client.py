"""HTTP helpers for the real engine's tests (stdlib only: urllib, no client library)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from e2e.real_engine.serve import RealEngine


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    lines: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    engine: RealEngine,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    key: str | None = "default",
    timeout: float = 120.0,
) -> Response:
    """One HTTP request to the engine (POST with a JSON body, else GET); never raises on 4xx."""
    headers = {"Content-Type": "application/json"}
    api_key = engine.api_key if key == "default" else key
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{engine.url}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers.items()), err.read())


def stream_events(engine: RealEngine, path: str, body: dict[str, Any]) -> list[Any]:
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
