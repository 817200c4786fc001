"""End-to-end check of the harness itself: ``python -m e2e.cluster.smoke``.

Starts a cluster, creates the default node pools and checks what the operator's tests
rely on: the real scheduler binds a GPU Deployment's pods to fake GPU nodes and a CPU pod
without tolerations to the CPU pool, kwok runs them with loopback pod IPs, the simulation
labels keep pods unready or make them fail, a router pod stays unready until labelled ready,
PodSecurity admission rejects a privileged pod, a ServiceAccount kubeconfig authenticates
as that ServiceAccount, a drained node's pods move elsewhere; then stops the cluster and
checks that no process is left. Prints the timings it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.kubeapi import JSON, ApiError, KubeApi
from e2e.cluster.nodepools import (
    CPU_POOLS,
    DEFAULT_LAYOUT,
    GPU_POOLS,
    GPU_RESOURCE,
    POOL_LABEL,
    create_pools,
    drain,
)
from e2e.cluster.stages import (
    COMPONENT_LABEL,
    ROUTER_COMPONENT,
    SIM_FAIL_LABEL,
    SIM_READY_LABEL,
    SIM_STARTUP_ANNOTATION,
    SIM_UNREADY_LABEL,
)

NS = "harness-smoke"
IMAGE = "registry.invalid/magistral/runtime:smoke"  # never pulled: kwok runs no containers


class SmokeError(AssertionError):
    """A check of the smoke run failed."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise SmokeError(message)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def wait_for(what: str, probe: Callable[[], bool], *, timeout: float = 60.0) -> float:
    """Poll ``probe`` until true; return seconds waited; raise TimeoutError naming ``what``."""
    start = time.monotonic()
    while True:
        try:
            if probe():
                return time.monotonic() - start
        except ApiError:
            pass
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def _condition(pod: JSON, kind: str) -> str | None:
    for cond in pod.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def pod_container(labels: dict[str, str], *, restart_policy: str | None = None) -> JSON:
    spec: JSON = {
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [
            {
                "name": "engine",
                "image": IMAGE,
                "resources": {"limits": {GPU_RESOURCE: "1"}, "requests": {GPU_RESOURCE: "1"}},
            }
        ],
    }
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {"metadata": {"labels": labels}, "spec": spec}


def deployment(name: str, replicas: int, extra_labels: dict[str, str] | None = None) -> JSON:
    labels = {"app": name, **(extra_labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_container(labels),
        },
    }


def pods(api: KubeApi, selector: str) -> list[JSON]:
    items: list[JSON] = api.get(f"/api/v1/namespaces/{NS}/pods", labelSelector=selector)["items"]
    return items


def check_deployment(api: KubeApi) -> float:
    api.create(f"/apis/apps/v1/namespaces/{NS}/deployments", deployment("gpu-app", 3))

    def all_ready() -> bool:
        items = pods(api, "app=gpu-app")
        return len(items) == 3 and all(
            p["status"].get("phase") == "Running" and _condition(p, "Ready") == "True"
            for p in items
        )

    waited = wait_for("3 gpu-app pods Running and Ready", all_ready)
    nodes = {n["metadata"]["name"]: n for n in api.get("/api/v1/nodes")["items"]}
    for pod in pods(api, "app=gpu-app"):
        node = nodes[pod["spec"]["nodeName"]]
        ip = pod["status"].get("podIP", "")
        expect(ip.startswith("127."), f"pod IP {ip!r} is not loopback")
        annotations = node["metadata"].get("annotations") or {}
        expect(annotations.get("kwok.x-k8s.io/node") == "fake", f"{node} is not a kwok node")
        pool = node["metadata"]["labels"][POOL_LABEL]
        expect(pool in {p.name for p in GPU_POOLS}, f"a GPU pod landed on pool {pool}")
        _say(
            f"  {pod['metadata']['name']} -> {node['metadata']['name']} "
            f"({node['metadata']['labels'][POOL_LABEL]}) ip {ip}"
        )
    return waited


def cpu_deployment(name: str, replicas: int, extra_labels: dict[str, str] | None = None) -> JSON:
    """CPU only: no GPU request, no tolerations, no nodeSelector (like the router pods)."""
    labels = {"app": name, **(extra_labels or {})}
    container = {
        "name": "app",
        "image": IMAGE,
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def check_cpu_pool(api: KubeApi) -> None:
    """CPU pods without tolerations run on the (untainted) CPU pool and turn Ready at once."""
    api.create(f"/apis/apps/v1/namespaces/{NS}/deployments", cpu_deployment("cpu-app", 4))
    wait_for(
        "4 cpu-app pods Running and Ready",
        lambda: (
            len(items := pods(api, "app=cpu-app")) == 4
            and all(_condition(p, "Ready") == "True" for p in items)
        ),
    )
    nodes = {n["metadata"]["name"]: n for n in api.get("/api/v1/nodes")["items"]}
    cpu_pools = {p.name for p in CPU_POOLS}
    for pod in pods(api, "app=cpu-app"):
        node = nodes[pod["spec"]["nodeName"]]
        pool = node["metadata"]["labels"][POOL_LABEL]
        expect(pool in cpu_pools, f"a CPU pod landed on pool {pool}, not {sorted(cpu_pools)}")
        expect(not node["spec"].get("taints"), f"CPU node {node['metadata']['name']} is tainted")
        expect(GPU_RESOURCE not in node["status"]["allocatable"], "a CPU node has GPUs")


def check_router_gate(api: KubeApi) -> None:
    """A router pod (by its label, no env) runs not Ready until labelled sim-ready=true (the pod
    supervisor's verdict; no supervisor here), and sim-unready=true turns it unready again."""
    api.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        cpu_deployment("router", 1, {COMPONENT_LABEL: ROUTER_COMPONENT}),
    )
    selector = f"app=router,{COMPONENT_LABEL}={ROUTER_COMPONENT}"

    def router(ready: str) -> JSON | None:
        items = [p for p in pods(api, selector) if p["status"].get("phase") == "Running"]
        return items[0] if items and _condition(items[0], "Ready") == ready else None

    def shows(ready: str) -> bool:
        return router(ready) is not None

    wait_for("router pod Running but not Ready", functools.partial(shows, "False"))
    time.sleep(1.0)  # it must stay unready
    pod = router("False")
    expect(pod is not None, "router pod turned Ready without the supervisor's label")
    assert pod is not None
    path = f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}"
    ip = pod["status"]["podIP"]
    steps: list[tuple[dict[str, str | None], str]] = [
        ({SIM_READY_LABEL: "true"}, "True"),
        ({SIM_UNREADY_LABEL: "true"}, "False"),
        ({SIM_UNREADY_LABEL: None}, "True"),
    ]
    for labels, ready in steps:
        api.patch(path, {"metadata": {"labels": labels}})
        wait_for(
            f"router pod Ready={ready} after labels {labels}",
            functools.partial(shows, ready),
        )
    expect(api.get(path)["status"]["podIP"] == ip, "router pod IP changed")


def check_unready_and_recover(api: KubeApi) -> None:
    api.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        deployment("unready", 1, {SIM_UNREADY_LABEL: "true"}),
    )
    wait_for(
        "sim-unready pod Running but not Ready",
        lambda: any(
            p["status"].get("phase") == "Running" and _condition(p, "Ready") == "False"
            for p in pods(api, "app=unready")
        ),
    )
    time.sleep(1.0)  # it must stay unready
    pod = pods(api, "app=unready")[0]
    expect(_condition(pod, "Ready") == "False", "sim-unready pod turned Ready")
    ip = pod["status"]["podIP"]
    api.patch(
        f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}",
        {"metadata": {"labels": {SIM_UNREADY_LABEL: None}}},
    )
    wait_for(
        "pod Ready after removing the sim-unready label",
        lambda: (
            _condition(api.get(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}"), "Ready")
            == "True"
        ),
    )
    after = api.get(f"/api/v1/namespaces/{NS}/pods/{pod['metadata']['name']}")
    expect(after["status"]["podIP"] == ip, "pod IP changed on recovery")


def check_startup(api: KubeApi) -> float:
    """A pod annotated sim-startup=3s runs unready first and turns Ready about 3 s later."""
    dep = deployment("slow-start", 1)
    dep["spec"]["template"]["metadata"]["annotations"] = {SIM_STARTUP_ANNOTATION: "3s"}
    api.create(f"/apis/apps/v1/namespaces/{NS}/deployments", dep)
    wait_for(
        "sim-startup pod Running but not Ready",
        lambda: any(
            p["status"].get("phase") == "Running" and _condition(p, "Ready") == "False"
            for p in pods(api, "app=slow-start")
        ),
    )
    waited = wait_for(
        "sim-startup pod Ready",
        lambda: any(_condition(p, "Ready") == "True" for p in pods(api, "app=slow-start")),
    )
    expect(waited > 1.5, f"sim-startup=3s pod turned Ready after only {waited:.1f}s")
    return waited


def check_fail(api: KubeApi) -> None:
    api.create(
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        deployment("crashing", 1, {SIM_FAIL_LABEL: "true"}),
    )

    def crashlooping() -> bool:
        for p in pods(api, "app=crashing"):
            statuses = p["status"].get("containerStatuses") or []
            waiting = statuses[0].get("state", {}).get("waiting", {}) if statuses else {}
            if waiting.get("reason") == "CrashLoopBackOff" and _condition(p, "Ready") == "False":
                return True
        return False

    wait_for("sim-fail Deployment pod in CrashLoopBackOff", crashlooping)
    one_shot = pod_container({"app": "one-shot", SIM_FAIL_LABEL: "true"}, restart_policy="Never")
    one_shot = {"apiVersion": "v1", "kind": "Pod", **one_shot}
    one_shot["metadata"]["name"] = "one-shot"
    api.create(f"/api/v1/namespaces/{NS}/pods", one_shot)
    wait_for(
        "sim-fail restartPolicy=Never pod Failed",
        lambda: (
            api.get(f"/api/v1/namespaces/{NS}/pods/one-shot")["status"].get("phase") == "Failed"
        ),
    )


def check_pod_security(api: KubeApi) -> None:
    api.create(
        "/api/v1/namespaces",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "harness-restricted",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        },
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [
                {"name": "c", "image": IMAGE, "securityContext": {"privileged": True}},
            ]
        },
    }
    try:
        api.create("/api/v1/namespaces/harness-restricted/pods", pod)
    except ApiError as err:
        expect(err.status == 403, f"unexpected rejection: {err}")
        expect("PodSecurity" in str(err), f"rejected, but not by PodSecurity: {err}")
        return
    raise AssertionError("PodSecurity admission did not reject a privileged pod")


def check_service_account(cluster: LocalCluster) -> None:
    kubeconfig = cluster.kubeconfig_for_service_account(NS, "smoke-reader")
    expect(kubeconfig.is_file(), f"no kubeconfig at {kubeconfig}")
    state = cluster.state
    assert state is not None
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    sa = KubeApi(state.server, ca_file=Path(state.ca_file), token=token)
    review = sa.create(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user = review["status"]["userInfo"]["username"]
    expect(user == f"system:serviceaccount:{NS}:smoke-reader", f"token authenticates as {user}")
    try:
        sa.get(f"/api/v1/namespaces/{NS}/secrets")
    except ApiError as err:
        expect(err.status == 403, f"expected 403 Forbidden, got {err}")
    else:
        raise AssertionError("a ServiceAccount without RBAC could list secrets")


def check_drain(api: KubeApi) -> None:
    node = pods(api, "app=gpu-app")[0]["spec"]["nodeName"]
    drain(api, node, timeout=60)

    def moved() -> bool:
        items = pods(api, "app=gpu-app")
        return len(items) == 3 and all(
            p["spec"].get("nodeName") not in (None, node) and _condition(p, "Ready") == "True"
            for p in items
        )

    wait_for(f"gpu-app pods rescheduled off drained node {node}", moved)


def run(state_dir: Path | None) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    cluster = LocalCluster(state_dir, die_with_parent=True)
    with cluster:
        timings["cluster_start"] = time.monotonic() - t0
        api = cluster.api()
        t = time.monotonic()
        create_pools(api, DEFAULT_LAYOUT)
        timings["nodepools_ready"] = time.monotonic() - t
        _say(f"node pools ready in {timings['nodepools_ready']:.1f}s")
        api.create(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        )
        wait_for(
            f"ServiceAccount {NS}/default",
            lambda: bool(api.get(f"/api/v1/namespaces/{NS}/serviceaccounts/default")),
        )
        timings["deployment_ready"] = check_deployment(api)
        _say(f"deployment scheduled and Ready in {timings['deployment_ready']:.1f}s")
        check_cpu_pool(api)
        _say("CPU pod on the CPU pool without tolerations: ok")
        check_router_gate(api)
        _say("router pod gated until labelled sim-ready: ok")
        check_unready_and_recover(api)
        _say("sim-unready / recover: ok")
        waited = check_startup(api)
        _say(f"sim-startup=3s: Ready {waited:.1f}s after Running: ok")
        check_fail(api)
        _say("sim-fail (crash-loop and Failed): ok")
        check_pod_security(api)
        _say("PodSecurity admission: ok")
        check_service_account(cluster)
        _say("ServiceAccount kubeconfig: ok")
        check_drain(api)
        _say("drain: ok")
        recorded = [p.pid for p in cluster.running_processes()]
        t = time.monotonic()
    timings["cluster_stop"] = time.monotonic() - t
    leftovers = [pid for pid in recorded if Path(f"/proc/{pid}").exists()]
    expect(not leftovers, f"processes left after stop: {leftovers}")
    _say("stop: no process left")
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster.smoke", description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=None, help="keep state here")
    args = parser.parse_args(argv)
    try:
        timings = run(args.state_dir)
    except (SmokeError, TimeoutError, ApiError, RuntimeError, OSError) as err:
        _say(f"SMOKE FAILED: {err}")
        return 1
    for key, value in timings.items():
        print(f"{key}\t{value:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
