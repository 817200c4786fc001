"""The data plane on a real control plane: the real vllm-router and the front in each router
pod, simulated vLLM engines, the operator's demand autoscaler (issue #10).

Router and engine pods run as processes on their loopback pod IPs (the pod supervisor); the
tests send requests to the router pods' front port, as the endpoint's Service would. Engines
are slow on purpose (50 ms per token, 2 sequences each) so that a few requests make a backlog.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.cluster import LocalCluster
from e2e.engine.supervisor import RouterProcessInfo, Supervisor, serving, serving_pods
from e2e.loadgen import run_vllm_bench, tiny_model_tokenizer
from e2e.operator_process import OperatorProcess

from .conftest import (
    apply_manifest,
    condition,
    endpoint_manifest,
    get_endpoint,
    passes_completed,
    swapped_operator,
    wait_for,
)

pytestmark = pytest.mark.router_processes  # the Supervisor runs the routers and their readiness

SLOW = ["--itl-ms", "50", "--ttft-ms", "20"]
KEY = "k"  # the namespace fixture's Secret
TOKENS = 200  # x 50 ms: a request holds a sequence for about 10 s


@pytest.fixture
def supervisor(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        sim_args=SLOW,
        log_dir=tmp_path / "pods",
        honor_prestop=False,
    ) as sup:
        yield sup


def _manifest(name: str, namespace: str, scaling: dict[str, Any]) -> dict[str, Any]:
    return endpoint_manifest(
        name,
        namespace,
        runtime={"maxNumSeqs": 2},
        scaling={"prefillTokensPerSecond": 100, **scaling},
        router={"replicas": 2},
    )


def fronts(sup: Supervisor) -> list[RouterProcessInfo]:
    """The front process of each router pod whose containers all serve."""
    return [
        info
        for infos in serving_pods(sup.routers()).values()
        for info in infos
        if info.container == "front"
    ]


def routers_serving(sup: Supervisor, count: int = 2) -> list[RouterProcessInfo]:
    """The fronts, once `count` router pods serve."""
    sup.wait_for_routers(lambda r: len(serving_pods(r)) == count, timeout=120)
    return fronts(sup)


@dataclass
class Answer:
    status: int = 0
    body: str = ""
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def chat(
    front: RouterProcessInfo, *, model: str, tokens: int = TOKENS, timeout: float = 240
) -> Answer:
    """One chat completion through a router pod's front (its pod IP, never another address)."""
    assert front.port is not None
    assert ipaddress.ip_address(front.ip).is_loopback, front.ip
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Count slowly."}],
            "max_tokens": tokens,
            "ignore_eos": True,
        }
    )
    conn = http.client.HTTPConnection(front.ip, front.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        return Answer(
            status=resp.status,
            body=resp.read().decode("utf-8", "replace"),
            headers={k.lower(): v for k, v in resp.getheaders()},
        )
    except OSError as exc:
        return Answer(error=repr(exc))
    finally:
        conn.close()


class Burst:
    """`count` requests sent at once, spread over the fronts, answered in threads."""

    def __init__(
        self, targets: list[RouterProcessInfo], *, model: str, count: int, tokens: int = TOKENS
    ) -> None:
        self.answers: list[Answer] = [Answer() for _ in range(count)]
        self.tokens = tokens
        self.threads = [
            threading.Thread(
                target=self._one, args=(i, targets[i % len(targets)], model), daemon=True
            )
            for i in range(count)
        ]
        for t in self.threads:
            t.start()

    def _one(self, i: int, target: RouterProcessInfo, model: str) -> None:
        self.answers[i] = chat(target, model=model, tokens=self.tokens)

    def join(self, timeout: float) -> list[Answer]:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "requests still unanswered"
        return self.answers


def engine_successes(url: str) -> float:
    """vllm:request_success_total of one engine, summed over its labels."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    assert ipaddress.ip_address(host).is_loopback, host
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total")
    )


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_endpoint(api, namespace, name).get("status") or {})


def replicas(api: client.ApiClient, namespace: str, name: str) -> int:
    return int(status(api, namespace, name).get("replicas") or 0)


def events(api: client.ApiClient, namespace: str, name: str, reason: str) -> list[Any]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},reason={reason}"
    )
    return list(listed.items)


def served_model(api: client.ApiClient, namespace: str, name: str) -> str:
    return str(
        wait_for(
            "the served model name",
            lambda: status(api, namespace, name).get("servedModelName"),
            timeout=60,
        )
    )


def test_a_backlog_is_served_by_new_replicas_then_the_fleet_scales_back(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
) -> None:
    """1 -> 3 -> 1: requests queued in the routers while one replica runs go to the replicas
    that become Ready, and every request is answered, balanced over the three engines."""
    name = "backlog"
    scaling = {"minReplicas": 1, "maxReplicas": 3, "scaleDownWindowSeconds": 45}
    apply_manifest(admin_kubeconfig, _manifest(name, namespace, scaling))
    (first,) = supervisor.wait_for(lambda s: len(serving(s)) == 1, timeout=120)
    targets = routers_serving(supervisor)
    model = served_model(api, namespace, name)
    wait_for(
        "Ready",
        lambda: (
            (condition(get_endpoint(api, namespace, name), "Ready") or {}).get("status") == "True"
        ),
        timeout=60,
    )
    assert replicas(api, namespace, name) == 1

    # 12 requests at once and nothing after: the one replica runs 2, the fronts hold 10. Each
    # holds a sequence for about 20 s, so the one replica alone would take 2 minutes: longer
    # than a new replica takes to start and be added by the routers' discovery (it polls a new
    # pod's /health every 30 s), so that each new replica gets part of the backlog.
    burst = Burst(targets, model=model, count=12, tokens=2 * TOKENS)
    wait_for("a scale-up to 3 replicas", lambda: replicas(api, namespace, name) == 3, timeout=60)
    up = wait_for("a ScaledUp event", lambda: events(api, namespace, name, "ScaledUp"), timeout=30)
    assert any("scaled up from 1 to 3" in e.message for e in up), [e.message for e in up]
    sims = supervisor.wait_for(lambda s: len(serving(s)) == 3, timeout=120)
    # A restart resumes from status.autoscaler: no collapse to minReplicas and back.
    operator.kill()
    operator.start()
    passes_completed(operator, namespace, name)  # several passes of the new process
    assert replicas(api, namespace, name) == 3
    assert not events(api, namespace, name, "ScaledDown")
    answers = burst.join(timeout=240)
    assert [a.status for a in answers] == [200] * 12, [a.error or a.body[:200] for a in answers]
    # The backlog was taken by the replicas that started after it was created.
    new = [s for s in sims if s.uid != first.uid]
    served = {s.pod: engine_successes(s.url) for s in sims}
    assert all(served[s.pod] >= 1 for s in new), served
    assert sum(served.values()) == 12, served
    auto = status(api, namespace, name)["autoscaler"]
    assert auto["read"] == "ok", auto
    assert auto["lastScaleDemand"]["queued"] >= 1, auto  # it scaled on the routers' queue

    # Idle: after the scale-down window the fleet goes back to minReplicas (in one step, or in
    # two when the draining backlog needed 2 replicas within the window: the staircase).
    wait_for("a scale-down to 1", lambda: replicas(api, namespace, name) == 1, timeout=150)
    wait_for(
        "a ScaledDown event to 1 replica",
        lambda: [
            e
            for e in events(api, namespace, name, "ScaledDown")
            if "to 1 replicas" in (e.message or "")
        ],
        timeout=30,
    )
    downs = [e.message for e in events(api, namespace, name, "ScaledDown")]
    assert all("scaled down from " in m for m in downs), downs


def test_scale_from_zero_holds_the_first_request_and_answers_it(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
) -> None:
    name = "zero"
    scaling = {"minReplicas": 0, "maxReplicas": 1, "scaleDownWindowSeconds": 20}
    apply_manifest(admin_kubeconfig, _manifest(name, namespace, scaling))
    targets = routers_serving(supervisor)
    model = served_model(api, namespace, name)
    ready = wait_for(
        "Ready at zero replicas",
        lambda: (
            (c := condition(get_endpoint(api, namespace, name), "Ready"))
            and c["reason"] == "ScaledToZero"
            and c
        ),
        timeout=60,
    )
    assert ready["status"] == "True", ready
    assert replicas(api, namespace, name) == 0
    assert not serving(supervisor.simulators())

    burst = Burst(targets[:1], model=model, count=1)
    event = wait_for(
        "a ScaledFromZero event",
        lambda: events(api, namespace, name, "ScaledFromZero"),
        timeout=60,
    )
    assert "1 requests held at zero replicas" in event[0].message, event[0].message
    assert status(api, namespace, name)["autoscaler"]["lastScaleDemand"]["queued"] == 1
    (answer,) = burst.join(timeout=180)
    assert answer.status == 200, answer
    assert json.loads(answer.body)["choices"][0]["message"]["content"]

    # Idle again: back to zero after the window.
    wait_for("a scale-down to zero", lambda: replicas(api, namespace, name) == 0, timeout=120)
    supervisor.wait_for(lambda s: not serving(s), timeout=60)


def test_a_silent_router_is_reported_never_read_as_no_demand_and_recovers(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
) -> None:
    """Both router pods hang (SIGSTOP): the demand read fails and says so, the replicas are
    held although the spec now allows fewer, the endpoint is reported unavailable; when the
    routers come back the read is ok again and the replicas follow the demand."""
    name = "silent"
    scaling = {"minReplicas": 2, "maxReplicas": 2, "scaleDownWindowSeconds": 0}
    apply_manifest(admin_kubeconfig, _manifest(name, namespace, scaling))
    supervisor.wait_for(lambda s: len(serving(s)) == 2, timeout=120)
    routers_serving(supervisor)
    wait_for(
        "the first ok read",
        lambda: (status(api, namespace, name).get("autoscaler") or {}).get("read") == "ok",
        timeout=60,
    )
    stopped = [t.pid for t in supervisor.routers() if t.pid is not None]
    assert len(stopped) == 4  # a router and a front in each of the two pods
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        failed = wait_for(
            "a failed read in status",
            lambda: (
                (a := status(api, namespace, name).get("autoscaler") or {}).get("read") == "failed"
                and a
            ),
            timeout=60,
        )
        assert failed["readError"], failed
        # Allow fewer replicas: a read taken as "no demand" would now scale to 1.
        manifest = _manifest(name, namespace, {**scaling, "minReplicas": 1})
        apply_manifest(admin_kubeconfig, manifest)
        generation = get_endpoint(api, namespace, name)["metadata"]["generation"]

        def judged() -> bool:
            st = status(api, namespace, name)
            return bool(
                st.get("observedGeneration") == generation
                and (st.get("autoscaler") or {}).get("read") == "failed"
            )

        wait_for("a pass under the new spec", judged, timeout=60)
        passes_completed(operator, namespace, name)  # several more, each a failed read
        assert judged()
        assert replicas(api, namespace, name) == 2
        deployment = client.AppsV1Api(api).read_namespaced_deployment(
            f"{name}-reserved-h100", namespace
        )
        assert deployment.spec.replicas == 2
        assert not events(api, namespace, name, "ScaledDown")
        unavailable = wait_for(
            "Ready=False, RouterUnavailable",
            lambda: (
                (c := condition(get_endpoint(api, namespace, name), "Ready"))
                and c["reason"] == "RouterUnavailable"
                and c
            ),
            timeout=60,
        )
        assert unavailable["status"] == "False"
        assert status(api, namespace, name)["router"]["readyReplicas"] == 0
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    # Back: the read is ok, the idle endpoint goes to its new minimum, Ready again.
    wait_for("a scale-down to 1", lambda: replicas(api, namespace, name) == 1, timeout=90)
    # Posted right after the status write that records it (announce.py).
    wait_for("a ScaledDown event", lambda: events(api, namespace, name, "ScaledDown"), timeout=30)
    wait_for(
        "Ready with the routers back",
        lambda: (
            (condition(get_endpoint(api, namespace, name), "Ready") or {}).get("status") == "True"
        ),
        timeout=60,
    )
    # Ready needs one router; the other may turn Ready a probe period later.
    wait_for(
        "both routers ready again",
        lambda: status(api, namespace, name)["router"]["readyReplicas"] == 2,
        timeout=60,
    )


@pytest.mark.vllm  # vLLM's own load generator runs from the engine venv
@pytest.mark.usefixtures("operator")
def test_real_load_scales_one_to_n_to_one(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    namespace: str,
    supervisor: Supervisor,
    tmp_path: Path,
) -> None:
    """`vllm bench serve` through a router pod: the fleet grows from 1 to 3 under the load,
    every prompt is answered, and it shrinks back to 1 once the load is over."""
    name = "loadgen"
    scaling = {"minReplicas": 1, "maxReplicas": 3, "scaleDownWindowSeconds": 30}
    apply_manifest(admin_kubeconfig, _manifest(name, namespace, scaling))
    supervisor.wait_for(lambda s: len(serving(s)) == 1, timeout=120)
    (target, *_) = routers_serving(supervisor)
    model = served_model(api, namespace, name)
    # 3 requests/s of 128 prompt tokens is 4.8 replicas of prefill at 100 tokens/s, and each
    # request holds one of a replica's 2 sequences for 64 x 50 ms.
    result = run_vllm_bench(
        base_url=target.url,
        model=model,
        tokenizer=tiny_model_tokenizer(),
        api_key=KEY,
        num_prompts=150,
        request_rate=3.0,
        max_concurrency=12,
        input_len=128,
        output_len=64,
        result_dir=tmp_path / "bench",
        timeout=600,
    )
    assert (result.completed, result.failed) == (150, 0), result.output_tail
    up = events(api, namespace, name, "ScaledUp")
    assert any("scaled up from 1 to" in e.message for e in up), [e.message for e in up]
    assert max(int(e.message.split(" to ")[1].split()[0]) for e in up) == 3
    wait_for("a scale-down to 1", lambda: replicas(api, namespace, name) == 1, timeout=150)
    supervisor.wait_for(lambda s: len(serving(s)) == 1, timeout=90)


@pytest.fixture
def production_timing_operator(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The session operator, swapped for one with the production timings (a 30 s resync, a
    10 s demand collector, its 5 s re-read), for the test that measures the lost-node bound."""
    with swapped_operator(
        cluster, operator, tmp_path, resync_seconds=30.0, scrape_seconds=10.0
    ) as own:
        yield own


def test_a_replica_that_stops_answering_is_reported_unreachable_then_back(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    production_timing_operator: OperatorProcess,
    namespace: str,
    supervisor: Supervisor,
) -> None:
    """One of two engines hangs (SIGSTOP), as behind a lost node: Kubernetes still shows its
    pod Ready (kwok keeps it so, as the API server does for ~40 s after a node goes silent),
    but the demand collector's reads miss it, so the operator reports it unreachable
    (Degraded=True ReplicasUnreachable naming it, readyReplicas 1) without waiting for the
    resync; when it answers again it counts as ready again. Prints the time it took."""
    name = "lost"
    scaling = {"minReplicas": 2, "maxReplicas": 2}
    apply_manifest(admin_kubeconfig, _manifest(name, namespace, scaling))
    sims = supervisor.wait_for(lambda s: len(serving(s)) == 2, timeout=120)
    routers_serving(supervisor)

    def degraded() -> dict[str, Any]:
        return condition(get_endpoint(api, namespace, name), "Degraded") or {}

    wait_for(
        "Ready with 2 replicas and an ok read",
        lambda: (
            (st := status(api, namespace, name)).get("readyReplicas") == 2
            and (st.get("autoscaler") or {}).get("read") == "ok"
            and degraded().get("reason") == "AsExpected"
        ),
        timeout=90,
    )
    hung = sims[0]
    assert hung.pid is not None
    os.kill(hung.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        lost = wait_for(
            "Degraded ReplicasUnreachable",
            lambda: (c := degraded()).get("reason") == "ReplicasUnreachable" and c,
            timeout=60,
        )
        seconds = time.monotonic() - stopped_at
        print(f"\nunreachable replica reported {seconds:.1f} s after it stopped answering")
        assert hung.pod in lost["message"], lost
        assert status(api, namespace, name)["readyReplicas"] == 1
        pod = client.CoreV1Api(api).read_namespaced_pod(hung.pod, namespace)
        assert any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    finally:
        os.kill(hung.pid, signal.SIGCONT)
    wait_for(
        "the replica back",
        lambda: (
            status(api, namespace, name).get("readyReplicas") == 2
            and degraded().get("reason") == "AsExpected"
        ),
        timeout=60,
    )
