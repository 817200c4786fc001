"""Reading the engines' gauges and counters from ready pods (part of the demand read).

`GET http://<podIP>:<port 'http'>/metrics` of each ready engine pod, with a short timeout:
`vllm:num_requests_waiting`, `vllm:num_requests_running` and `vllm:kv_cache_usage_perc`
(summed per pod over engines and model names; the KV usage averaged), and the lifetime
counters `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` and
`vllm:request_success_total` (for the mean tokens per request). A pod that does not answer,
answers garbage, or lacks the queue gauges has no reading: the demand read reports it as
missing (a partial read), never as idle.
"""

from __future__ import annotations

import http.client
import ipaddress
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..rollout_analysis import Counters

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
SUCCESSES = "vllm:request_success"
_SUMMED = (WAITING, RUNNING, PROMPT_TOKENS, GENERATION_TOKENS, SUCCESSES)
PORT_NAME = "http"
TIMEOUT_SECONDS = 1.0
MAX_BYTES = 4 << 20


def pod_ready(pod: dict[str, Any]) -> bool:
    """Running, Ready and not being deleted."""
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def metrics_target(pod: dict[str, Any], *, port_name: str = PORT_NAME) -> tuple[str, int] | None:
    """(IP, port) of a ready pod's named port, or None (not ready, no IP literal, no port)."""
    if not pod_ready(pod):
        return None
    raw = str((pod.get("status") or {}).get("podIP") or "")
    try:
        ip = ipaddress.ip_address(raw)  # never a host name: nothing to resolve
    except ValueError:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == port_name and isinstance(port.get("containerPort"), int):
                return str(ip), int(port["containerPort"])
    return None


@dataclass(frozen=True)
class EngineReading:
    """One ready engine pod's /metrics, summed over its engines."""

    waiting: float
    running: float
    kv_usage: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    successes: float = 0.0


def parse_sample(text: str) -> EngineReading | None:
    """The reading of one /metrics page; None when a queue gauge is absent."""
    totals: dict[str, float] = {}
    kv: list[float] = []
    for family in text_string_to_metric_families(text):
        # prometheus_client names a counter family without its _total suffix.
        if family.name in _SUMMED:
            wanted = (family.name, f"{family.name}_total")
            totals[family.name] = totals.get(family.name, 0.0) + sum(
                s.value for s in family.samples if s.name in wanted
            )
        elif family.name == KV_USAGE:
            kv.extend(s.value for s in family.samples if s.name == KV_USAGE)
    if WAITING not in totals or RUNNING not in totals:
        return None
    return EngineReading(
        waiting=max(0.0, totals[WAITING]),
        running=max(0.0, totals[RUNNING]),
        kv_usage=min(1.0, max(0.0, sum(kv) / len(kv))) if kv else 0.0,
        prompt_tokens=max(0.0, totals.get(PROMPT_TOKENS, 0.0)),
        generation_tokens=max(0.0, totals.get(GENERATION_TOKENS, 0.0)),
        successes=max(0.0, totals.get(SUCCESSES, 0.0)),
    )


def http_get(ip: str, port: int, path: str, *, timeout: float = TIMEOUT_SECONDS) -> str:
    """The body of `GET http://ip:port/path` (an IP literal, never a name); OSError, HTTPException
    or ValueError on any failure, a non-200 answer included."""
    host = str(ipaddress.ip_address(ip))
    if ":" in host:
        host = f"[{host}]"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "text/plain, application/json"})
        resp = conn.getresponse()
        body = resp.read(MAX_BYTES).decode("utf-8", "replace")
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status}")
        return body
    finally:
        conn.close()


TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
MAX_TOKENS = "vllm:request_params_max_tokens"


def _buckets(samples: dict[float, float]) -> tuple[tuple[float, float], ...]:
    return tuple(sorted(samples.items()))


def parse_counters(text: str) -> Counters | None:
    """The canary analysis' counters of one /metrics page (rollout_analysis.Counters), summed
    over engines and model names; None when the page has no `vllm:request_success` counter."""
    ttft: dict[float, float] = {}
    itl: dict[float, float] = {}
    finishes: dict[str, float] = {}
    probes = 0.0
    seen = False
    for family in text_string_to_metric_families(text):
        if family.name in (TTFT, ITL):
            into = ttft if family.name == TTFT else itl
            for s in family.samples:
                if s.name == f"{family.name}_bucket":
                    le = float(s.labels.get("le", "inf"))
                    into[le] = into.get(le, 0.0) + s.value
        elif family.name == SUCCESSES:
            seen = True
            for s in family.samples:
                if s.name in (SUCCESSES, f"{SUCCESSES}_total"):
                    reason = s.labels.get("finished_reason", "")
                    finishes[reason] = finishes.get(reason, 0.0) + s.value
        elif family.name == MAX_TOKENS:
            for s in family.samples:
                if s.name == f"{MAX_TOKENS}_bucket" and float(s.labels.get("le", "inf")) == 1.0:
                    probes += s.value
    if not seen:
        return None
    return Counters(ttft=_buckets(ttft), itl=_buckets(itl), finishes=finishes, probes=probes)
