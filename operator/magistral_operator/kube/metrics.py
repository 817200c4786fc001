"""Scraping the engines' queue gauges from ready pods (the autoscaler's input).

`GET http://<podIP>:<port 'http'>/metrics` of each ready pod, with a short timeout; the
`vllm:num_requests_waiting` and `vllm:num_requests_running` gauges are summed per pod (over
engines and model names). A pod that does not answer, answers garbage, or lacks the gauges has
no sample: the policy never scales on missing metrics.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..autoscale.policy import ReplicaSample

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
PORT_NAME = "http"
TIMEOUT_SECONDS = 1.0
MAX_BYTES = 4 << 20

log = logging.getLogger(__name__)


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def metrics_target(pod: dict[str, Any]) -> tuple[str, int] | None:
    """(IP, port) of a ready pod's engine, or None (not ready, no IP literal, no 'http' port)."""
    if not _ready(pod):
        return None
    raw = str((pod.get("status") or {}).get("podIP") or "")
    try:
        ip = ipaddress.ip_address(raw)  # never a host name: nothing to resolve
    except ValueError:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PORT_NAME and isinstance(port.get("containerPort"), int):
                return str(ip), int(port["containerPort"])
    return None


def parse_sample(text: str) -> ReplicaSample | None:
    """The summed gauges of one /metrics page; None when either gauge is absent."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in (WAITING, RUNNING):
            totals[family.name] = totals.get(family.name, 0.0) + sum(
                s.value for s in family.samples if s.name == family.name
            )
    if WAITING not in totals or RUNNING not in totals:
        return None
    return ReplicaSample(waiting=max(0.0, totals[WAITING]), running=max(0.0, totals[RUNNING]))


def scrape(ip: str, port: int, *, timeout: float = TIMEOUT_SECONDS) -> ReplicaSample | None:
    """One pod's sample; None on any error."""
    host = str(ipaddress.ip_address(ip))
    if ":" in host:
        host = f"[{host}]"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers={"Accept": "text/plain"})
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        return parse_sample(resp.read(MAX_BYTES).decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("scraping %s:%s failed: %s", ip, port, exc)
        return None
    finally:
        conn.close()


def scrape_pods(
    pods: Sequence[dict[str, Any]], *, timeout: float = TIMEOUT_SECONDS
) -> list[ReplicaSample]:
    """Samples of the ready pods that answered, scraped in parallel."""
    targets = [t for t in map(metrics_target, pods) if t is not None]
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        results = list(pool.map(lambda t: scrape(t[0], t[1], timeout=timeout), targets))
    return [r for r in results if r is not None]
