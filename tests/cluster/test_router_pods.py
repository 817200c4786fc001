"""Router pods run as processes in the harness: vllm-router and the front on each pod's IP.

A router-shaped Deployment (the operator's contract, written by hand here: CPU only, no
tolerations, no nodeSelector) and two engine pods: the router pods schedule onto the CPU pool;
the pod supervisor starts every router container's command on the router pod's loopback IP,
never a simulator; vllm-router's Kubernetes service discovery finds the engine pods through the
local API server (with the token of the pod's ServiceAccount) and routes a chat completion to a
simulator. A router pod is Ready exactly while its front's readiness probe (``/healthz`` on the
``demand`` port) passes, by its label alone: kwok leaves its readiness to the supervisor.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.kubeapi import JSON, KubeApi
from e2e.cluster.nodepools import CPU_POOLS, GPU_PRODUCT_LABEL, GPU_RESOURCE, H100, POOL_LABEL
from e2e.cluster.stages import SIM_READY_LABEL, SIM_UNREADY_LABEL
from e2e.engine.pods import ARGS_ANNOTATION
from e2e.engine.supervisor import RouterProcessInfo, Supervisor, serving, serving_pods
from tests.cluster.conftest import wait_for
from tests.e2e_engine.conftest import fetch, metrics
from tests.e2e_engine.router_contract import (
    MANAGED,
    engine_labels,
    router_containers,
    router_labels,
)

pytestmark = pytest.mark.router_processes  # the Supervisor plays the routers and their readiness

VENV_BIN = Path(sys.executable).parent
ENDPOINT = "ep"
ENGINE_LABELS = engine_labels(ENDPOINT)
ROUTER_LABELS = router_labels(ENDPOINT)
FAST = ["--itl-ms", "2", "--ttft-ms", "5", "--output-tokens-max", "64"]
TOLERATE_GPU_TAINT = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]


def engine_deployment(ns: str) -> dict[str, Any]:
    vllm = shlex.join(
        [
            *("vllm", "serve", "/models/Magistral-Small-2506", "--served-model-name", "magistral"),
            *("--host", "0.0.0.0", "--port", "8000", "--max-model-len", "40960"),
        ]
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{ENDPOINT}-reserved-h100", "namespace": ns, "labels": MANAGED},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": ENGINE_LABELS},
            "template": {
                "metadata": {"labels": ENGINE_LABELS, "annotations": {ARGS_ANNOTATION: vllm}},
                "spec": {
                    "nodeSelector": {GPU_PRODUCT_LABEL: H100.product},
                    "tolerations": TOLERATE_GPU_TAINT,
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "registry.invalid/magistral/runtime:test",
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "resources": {
                                "limits": {GPU_RESOURCE: "1"},
                                "requests": {GPU_RESOURCE: "1"},
                            },
                        }
                    ],
                },
            },
        },
    }


def router_deployment(ns: str, *, replicas: int = 2) -> dict[str, Any]:
    """The operator's router Deployment, as the contract describes it: CPU only, no
    tolerations, no nodeSelector, no simulation env (its label alone gates its readiness)."""
    containers = router_containers(namespace=ns, endpoint=ENDPOINT)
    selector = {
        k: ROUTER_LABELS[k] for k in ("app.kubernetes.io/component", "magistral.dev/endpoint")
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{ENDPOINT}-router", "namespace": ns, "labels": ROUTER_LABELS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": ROUTER_LABELS},
                "spec": {
                    "serviceAccountName": f"{ENDPOINT}-router",
                    "terminationGracePeriodSeconds": 15,
                    "containers": containers,
                },
            },
        },
    }


def router_rbac(ns: str) -> list[tuple[str, dict[str, Any]]]:
    """What the router's service discovery needs: list and watch the namespace's pods."""
    name = f"{ENDPOINT}-router"
    return [
        (f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": name}}),
        (
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
            {
                "metadata": {"name": name},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
                ],
            },
        ),
        (
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            },
        ),
    ]


def front_is_installed() -> bool:
    result = subprocess.run(
        [str(VENV_BIN / "magistral-runtime"), "front", "--help"], capture_output=True, check=False
    )
    return result.returncode == 0


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """The venv's bin, or (while ``magistral-runtime front`` is not installed) a bin dir whose
    ``magistral-runtime front`` is tests/cluster/front_standin.py."""
    router = VENV_BIN / "vllm-router"
    assert router.is_file(), (
        f"{router} is missing: install the dev extras (pip install -e '.[dev]')"
    )
    if front_is_installed():
        return VENV_BIN
    stand_in = tmp_path / "bin"
    stand_in.mkdir()
    (stand_in / "vllm-router").symlink_to(router)
    wrapper = stand_in / "magistral-runtime"
    script = shlex.join([sys.executable, str(Path(__file__).with_name("front_standin.py"))])
    real = shlex.quote(str(VENV_BIN / "magistral-runtime"))
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = front ]; then shift; exec {script} "$@"; fi\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return stand_in


@pytest.fixture
def gated_bin_dir(bin_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A bin dir whose ``magistral-runtime front`` waits until a gate file exists, then execs
    ``bin_dir``'s (same pid), and the gate file (absent): the test decides when a front starts
    serving, so when its ``/healthz`` can first answer."""
    gate = tmp_path / "front-gate"
    gated = tmp_path / "gated-bin"
    gated.mkdir()
    (gated / "vllm-router").symlink_to(bin_dir / "vllm-router")
    wait = f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.1; done"
    real = shlex.quote(str(bin_dir / "magistral-runtime"))
    wrapper = gated / "magistral-runtime"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = front ]; then {wait}; fi\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return gated, gate


@pytest.fixture
def supervisor(
    cluster: LocalCluster, namespace: str, bin_dir: Path, tmp_path: Path
) -> Iterator[Supervisor]:
    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        sim_args=FAST,
        log_dir=tmp_path / "logs",
        bin_dir=bin_dir,
    ) as sup:
        yield sup


def pod_ips(cluster: LocalCluster, ns: str, component: str) -> dict[str, str]:
    """Pod name -> IP of the running, not terminating pods of a component."""
    items = cluster.api().get(
        f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/component={component}"
    )["items"]
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in items
        if p.get("status", {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
    }


def router_pods(api: KubeApi, ns: str) -> list[JSON]:
    items: list[JSON] = api.get(
        f"/api/v1/namespaces/{ns}/pods?labelSelector=app.kubernetes.io/component=router"
    )["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: JSON) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def assert_on_cpu_nodes(api: KubeApi, pods: list[JSON]) -> None:
    """The pods run on the CPU pool's untainted nodes, without tolerating the GPU taint."""
    cpu_pools = {pool.name for pool in CPU_POOLS}
    for pod in pods:
        tolerations = pod["spec"].get("tolerations") or []
        assert not [t for t in tolerations if t.get("key") == GPU_RESOURCE], tolerations
        assert not pod["spec"].get("nodeSelector")
        node = api.get(f"/api/v1/nodes/{pod['spec']['nodeName']}")
        assert node["metadata"]["labels"][POOL_LABEL] in cpu_pools, node["metadata"]["name"]
        assert not node["spec"].get("taints")
        assert GPU_RESOURCE not in node["status"]["allocatable"]


def healthz(ip: str) -> int | None:
    """The status of the front's /healthz on the ``demand`` port (None: no answer)."""
    try:
        return fetch(f"http://{ip}:9090/healthz", timeout=2)[0]
    except OSError:
        return None


def workers(ip: str) -> list[str] | None:
    status, body = fetch(f"http://{ip}:8001/list_workers", timeout=5)
    return sorted(json.loads(body)["urls"]) if status == 200 else None


def requests_served(urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        samples = metrics(url).get("vllm:request_success_total", {})
        total += sum(samples.values())
    return total


def assert_service_account_identity(kubeconfig: Path, ns: str) -> None:
    """The containers' kubeconfig is the router ServiceAccount's: its Role lets it list the
    namespace's pods, nothing else."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    core.list_namespaced_pod(ns)
    with pytest.raises(ApiException) as denied:
        core.list_namespaced_pod("default")
    assert denied.value.status == 403
    assert f"system:serviceaccount:{ns}:{ENDPOINT}-router" in str(denied.value.body)


def no_simulator_on_routers(sup: Supervisor, routers: set[str], log_dir: Path, ns: str) -> None:
    assert not {s.pod for s in sup.simulators()} & routers
    for pod in routers:
        assert not (log_dir / f"{ns}.{pod}.log").exists(), f"a simulator ran for {pod}"


def test_router_pods_run_vllm_router_and_discover_the_engines(
    cluster: LocalCluster, namespace: str, supervisor: Supervisor, bin_dir: Path, tmp_path: Path
) -> None:
    ns, api, log_dir = namespace, cluster.api(), tmp_path / "logs"
    for path, body in router_rbac(ns):
        api.create(path, body)
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", engine_deployment(ns))
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", router_deployment(ns))

    engines = supervisor.wait_for(lambda s: len(serving(s)) == 2, timeout=60)
    engine_urls = sorted(s.url for s in engines)
    procs = supervisor.wait_for_routers(lambda r: len(serving_pods(r)) == 2, timeout=60)
    routers = pod_ips(cluster, ns, "router")
    assert len(routers) == 2
    assert len(set(routers.values())) == 2
    assert {s.pod for s in engines}.isdisjoint(routers)
    assert_on_cpu_nodes(api, router_pods(api, ns))  # no toleration needed: the CPU pool

    # Every container runs its command from the venv, on its pod's IP.
    by_pod: dict[str, dict[str, RouterProcessInfo]] = {}
    for info in procs:
        by_pod.setdefault(info.pod, {})[info.container] = info
    assert set(by_pod) == set(routers)
    for pod, ip in routers.items():
        router, front = by_pod[pod]["router"], by_pod[pod]["front"]
        assert router.ip == front.ip == ip
        assert (router.port, front.port) == (8001, 8000)
        assert Path(router.argv[0]).name == "vllm-router"
        assert router.argv[router.argv.index("--host") + 1] == ip
        assert router.argv[router.argv.index("--prometheus-host") + 1] == ip
        assert front.argv[1] == "front"
        assert front.argv[front.argv.index("--host") + 1] == ip
        assert front.argv[front.argv.index("--router-url") + 1] == f"http://{ip}:8001"
        for info in (router, front):
            assert not any("127.0.0.1" in a or "0.0.0.0" in a for a in info.argv), info.argv
            assert info.pid is not None
            os.kill(info.pid, 0)  # alive
        assert "KUBECONFIG" in Path(router.log_path).read_text().splitlines()[0]
        assert router.kubeconfig is not None
        assert router.kubeconfig == front.kubeconfig
        assert_service_account_identity(Path(router.kubeconfig), ns)
    no_simulator_on_routers(supervisor, set(routers), log_dir, ns)

    # Readiness: router pods are gated by their label; the supervisor's probe of the front's
    # /healthz opens them.
    def ready_routers() -> bool:
        items = router_pods(api, ns)
        return len(items) == 2 and all(
            p["metadata"]["labels"].get(SIM_READY_LABEL) == "true" and is_ready(p) for p in items
        )

    wait_for("both router pods Ready through the supervisor's probe", ready_routers, timeout=60)
    assert all(i.ready for i in supervisor.routers() if i.container == "front")

    # Discovery: each router lists both engine pods (service discovery through the local API
    # server, with the pod's ServiceAccount token).
    for ip in routers.values():
        wait_for(
            f"router {ip} to list both engines",
            lambda ip=ip: workers(ip) == engine_urls,
            timeout=60,
        )

    # A chat completion through each router (and through the front, client -> front -> router
    # -> engine, when it is the real one) is answered by an engine simulator.
    ports = [8001] if bin_dir != VENV_BIN else [8001, 8000]
    before = requests_served(engine_urls)
    for ip in routers.values():
        for port in ports:
            status, body = fetch(
                f"http://{ip}:{port}/v1/chat/completions",
                method="POST",
                body=json.dumps(
                    {
                        "model": "magistral",
                        "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 8,
                    }
                ).encode(),
            )
            assert status == 200, (port, body)
            answer = json.loads(body)
            assert answer["model"] == "magistral"
            assert "magistral-sim" in answer["system_fingerprint"]
    assert requests_served(engine_urls) == before + len(routers) * len(ports)

    # A process that dies while its pod runs is restarted (back-off 1 s).
    (victim, victim_ip) = sorted(routers.items())[0]
    old = by_pod[victim]["router"]
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    supervisor.wait_for_routers(
        lambda r: any(
            i.pod == victim and i.container == "router" and i.restarts == 1 and i.state == "serving"
            for i in r
        ),
        timeout=30,
    )
    wait_for(
        "the restarted router to list both engines",
        lambda: workers(victim_ip) == engine_urls,
        timeout=60,
    )

    # Deleting a router pod stops its processes (SIGTERM; they exit within the grace period);
    # its ReplicaSet's new pod gets processes of its own.
    pids = [i.pid for i in supervisor.routers() if i.pod == victim]
    api.delete(f"/api/v1/namespaces/{ns}/pods/{victim}")
    supervisor.wait_for_routers(lambda r: all(i.pod != victim for i in r), timeout=30)
    for pid in pids:
        assert pid is not None
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    exits = {e.container: e for e in supervisor.exits() if e.pod == victim}
    assert set(exits) == {"router", "front"}
    for record in exits.values():
        assert record.sigterm_at is not None
        assert not record.sigkilled
        # Measured from the SIGTERM: the watch that delivers the deletion is not the router's.
        assert record.exited_at - record.sigterm_at < 15
    procs = supervisor.wait_for_routers(
        lambda r: len(serving_pods(r)) == 2 and victim not in serving_pods(r), timeout=60
    )
    routers = pod_ips(cluster, ns, "router")
    assert set(serving_pods(procs)) == set(routers)
    no_simulator_on_routers(supervisor, set(routers) | {victim}, log_dir, ns)


def test_router_pod_is_ready_only_while_its_front_answers(
    cluster: LocalCluster,
    namespace: str,
    gated_bin_dir: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """No env, no toleration: a router pod lands on the CPU pool, stays Running but not Ready
    until its front's /healthz answers, turns unready when the front stops answering (SIGSTOP)
    or its process is killed (SIGKILL), and Ready again once it answers (SIGCONT, restart)."""
    ns, api = namespace, cluster.api()
    gated, gate = gated_bin_dir
    for path, body in router_rbac(ns):
        api.create(path, body)
    api.create(f"/apis/apps/v1/namespaces/{ns}/deployments", router_deployment(ns, replicas=1))

    def the_pod() -> JSON:
        (pod,) = router_pods(api, ns)
        return pod

    def front_snapshot(sup: Supervisor) -> RouterProcessInfo:
        (info,) = [i for i in sup.routers() if i.container == "front"]
        return info

    def shows(ready: bool) -> JSON | None:
        pod = the_pod()
        return pod if is_ready(pod) == ready else None

    def stays_unready(seconds: float) -> JSON:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pod = the_pod()
            assert pod["status"]["phase"] == "Running"
            assert not is_ready(pod), "the router pod turned Ready while its front did not answer"
            time.sleep(0.2)
        return the_pod()

    with Supervisor(
        kubeconfig=cluster.kubeconfig,
        namespace=ns,
        sim_args=FAST,
        log_dir=tmp_path / "logs",
        bin_dir=gated,
    ) as sup:
        # Scheduled onto the CPU pool; Running with an IP, its router serving, its front held at
        # the gate: not Ready, and it stays so while the front's probe fails (period 1 s).
        sup.wait_for_routers(
            lambda r: any(i.container == "router" and i.state == "serving" for i in r),
            timeout=60,
        )
        pod = stays_unready(3.0)
        assert_on_cpu_nodes(api, [pod])
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        assert SIM_READY_LABEL not in pod["metadata"]["labels"]
        ready_condition = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready_condition["reason"] == "ContainersNotReady", ready_condition
        front = front_snapshot(sup)
        assert (front.state, front.ready) == ("starting", False), front
        assert healthz(ip) is None  # nothing listens yet

        # The front starts: its /healthz answers, the supervisor labels the pod, kwok shows it
        # Ready (same pod, same IP).
        gate.touch()
        pod = wait_for("the router pod Ready once its front answers", lambda: shows(True))
        assert (pod["metadata"]["name"], pod["status"]["podIP"]) == (name, ip)
        assert pod["metadata"]["labels"][SIM_READY_LABEL] == "true"
        assert healthz(ip) == 200
        front = front_snapshot(sup)
        assert front.ready
        assert front.pid is not None

        # The front stops answering (SIGSTOP: its probe times out): not Ready; SIGCONT: Ready.
        os.kill(front.pid, signal.SIGSTOP)
        try:
            pod = wait_for(
                "the router pod unready while its front is stopped",
                lambda: shows(False),
                timeout=30,
            )
            assert pod["metadata"]["labels"].get(SIM_UNREADY_LABEL) == "true"
        finally:
            os.kill(front.pid, signal.SIGCONT)
        pod = wait_for("the router pod Ready again after SIGCONT", lambda: shows(True), timeout=30)
        assert SIM_UNREADY_LABEL not in pod["metadata"]["labels"]

        # The front is killed (SIGKILL through the snapshot's pid); the supervisor restarts it,
        # held at the gate again: the pod turns unready and stays so until the front answers.
        gate.unlink()
        os.kill(front.pid, signal.SIGKILL)
        wait_for("the router pod unready once its front is killed", lambda: shows(False))
        sup.wait_for_routers(
            lambda r: any(
                i.container == "front" and i.restarts == 1 and i.pid not in (None, front.pid)
                for i in r
            ),
            timeout=30,
        )
        pod = stays_unready(2.0)
        assert pod["metadata"]["labels"].get(SIM_UNREADY_LABEL) == "true"
        gate.touch()
        pod = wait_for("the router pod Ready after its front's restart", lambda: shows(True))
        assert (pod["metadata"]["name"], pod["status"]["podIP"]) == (name, ip)
        assert SIM_UNREADY_LABEL not in pod["metadata"]["labels"]
        restarted = front_snapshot(sup)
        assert (restarted.ready, restarted.restarts) == (True, 1)
        assert healthz(ip) == 200
