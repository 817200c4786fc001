"""The queue-depth autoscaler on a real control plane, with a simulated vLLM per pod.

Slow simulated engines (2 sequences each, 50 ms per token) get more concurrent streams than they
can run, so `vllm:num_requests_waiting` builds; the operator scrapes it and scales the endpoint
up, keeps the replicas through an operator restart, and scales back to minReplicas once the
load stops. Traffic goes only to the pods' loopback IPs (127.64.x.y).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.cluster import LocalCluster
from e2e.engine.supervisor import Supervisor, serving
from e2e.operator_process import OperatorProcess

from .conftest import apply_manifest, endpoint_manifest, get_endpoint, wait_for

SLOW = ["--max-num-seqs", "2", "--itl-ms", "50", "--ttft-ms", "20"]
STREAMS = 10  # 2 running + 8 waiting on one replica: ceil(10 / (2 + 2)) = 3 replicas
LOAD_SECONDS = 240.0  # an upper bound on the load, whatever happens


class Load:
    """`STREAMS` threads, each streaming chat completions to one pod until stopped."""

    def __init__(self, *, ip: str, port: int, key: str, model: str) -> None:
        assert ipaddress.ip_address(ip).is_loopback, ip  # never leave the machine
        self.ip, self.port, self.key, self.model = ip, port, key, model
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + LOAD_SECONDS
        self.completed = 0
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(STREAMS)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def _running(self) -> bool:
        return not self.stop_event.is_set() and time.monotonic() < self.deadline

    def _worker(self) -> None:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": "Count slowly."}],
                "stream": True,
                "max_tokens": 200,
                "ignore_eos": True,
            }
        )
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        while self._running():
            conn = http.client.HTTPConnection(self.ip, self.port, timeout=30)
            try:
                conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
                resp = conn.getresponse()
                while self._running() and resp.readline():
                    pass
                self.completed += 1
            except OSError:
                time.sleep(0.5)
            finally:
                conn.close()  # a disconnect aborts the request in the engine


def events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    )
    return list(listed.items)


def replicas(api: client.ApiClient, namespace: str, name: str) -> int:
    return int((get_endpoint(api, namespace, name).get("status") or {}).get("replicas") or 0)


@pytest.fixture
def supervisor(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        sim_args=SLOW,
        log_dir=tmp_path / "sims",
        honor_prestop=False,
    ) as sup:
        yield sup


def test_queue_depth_scales_up_survives_a_restart_and_scales_down(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
) -> None:
    name = "auto"
    scaling = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetQueueDepth": 2,
        "scaleUpWindowSeconds": 2,
        "scaleDownWindowSeconds": 10,
    }
    apply_manifest(admin_kubeconfig, endpoint_manifest(name, namespace, scaling=scaling))
    (sim,) = supervisor.wait_for(lambda s: len(serving(s)) == 1, timeout=120)
    model = wait_for(
        "the served model name",
        lambda: (get_endpoint(api, namespace, name).get("status") or {}).get("servedModelName"),
        timeout=60,
    )
    assert replicas(api, namespace, name) == 1

    with Load(ip=sim.ip, port=sim.port, key="k", model=model):
        wait_for(
            "a scale-up to maxReplicas on the queue",
            lambda: replicas(api, namespace, name) == 3,
            timeout=150,
        )
        up = wait_for(
            "a ScaledUp event", lambda: events(api, namespace, name, "ScaledUp"), timeout=30
        )
        # Events are listed by name (random suffixes), not by time: the first scale-up is
        # the one that starts from 1, wherever it is in the list.
        assert any("scaled up from 1 to" in e.message for e in up), [e.message for e in up]
        wait_for(
            "the new replicas' engines to serve",
            lambda: len(serving(supervisor.simulators())) == replicas(api, namespace, name),
            timeout=120,
        )
        scaled = replicas(api, namespace, name)
        state = get_endpoint(api, namespace, name)["status"]["autoscaler"]
        assert state["desiredReplicas"] == scaled
        ups_before = len(events(api, namespace, name, "ScaledUp"))

        # A restart resumes from status.autoscaler: no collapse to minReplicas and back.
        operator.kill()
        operator.start()
        time.sleep(3 * operator.resync_seconds)  # several passes of the new process
        assert replicas(api, namespace, name) == scaled
        deployment = client.AppsV1Api(api).read_namespaced_deployment(
            f"{name}-reserved-h100", namespace
        )
        assert deployment.spec.replicas == scaled
        assert len(events(api, namespace, name, "ScaledUp")) == ups_before
        assert not events(api, namespace, name, "ScaledDown")

    wait_for(
        "a scale-down to minReplicas after the load",
        lambda: replicas(api, namespace, name) == 1,
        timeout=120,
    )
    # The Event follows the status write that persisted the decision: wait for it too.
    down = wait_for(
        "a ScaledDown event", lambda: events(api, namespace, name, "ScaledDown"), timeout=30
    )
    assert f"scaled down from {scaled} to" in down[0].message or len(down) > 1
