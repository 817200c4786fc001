"""Fixtures for tests against the real local control plane (e2e/cluster).

The session starts one cluster (building the binaries on a cold cache), installs the CRDs and
the chart's RBAC, and runs the operator as a local process under the chart's ServiceAccount.
Set MAGISTRAL_E2E_STATE to a state dir of a cluster started with `python -m e2e.cluster up` to
reuse it instead. These tests never skip: a cluster that cannot start fails them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.nodepools import create_pools
from e2e.install import (
    OPERATOR_NAMESPACE,
    SERVICE_ACCOUNT,
    install_crds,
    install_operator_rbac,
    kubectl,
    table_row,
)
from e2e.operator_process import DEFAULT_CONFIG, OperatorProcess
from e2e.router_readiness import RouterReadiness
from e2e.stalls import poll, process_heartbeat

GROUP, VERSION, PLURAL = "magistral.dev", "v1alpha1", "magistralendpoints"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed cluster test's report carries what explains it: the namespace's pods and
    endpoints as the API server has them, and the end of each operator's log."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    args = getattr(item, "funcargs", {})
    for name, value in args.items():
        if isinstance(value, OperatorProcess):
            proc = value.process
            state = "not started" if proc is None else f"exit code {proc.poll()}"
            title = f"operator log ({name}, {state}), last lines"
            report.sections.append((title, value.log_tail(80)))
    api, namespace = args.get("api"), args.get("namespace")
    if isinstance(api, client.ApiClient) and isinstance(namespace, str):
        report.sections.append(("cluster state", cluster_state(api, namespace)))


def cluster_state(api: client.ApiClient, namespace: str) -> str:
    """The pods (phase, node, IP, deletion) and Deployments of `namespace`, the nodes not
    Ready (with their taints), and the endpoints' status conditions and rollout, one line each;
    an API error is reported, never raised."""
    lines = []
    try:
        for pod in client.CoreV1Api(api).list_namespaced_pod(namespace).items:
            ready = [c.status for c in pod.status.conditions or [] if c.type == "Ready"]
            lines.append(
                f"pod {pod.metadata.name}: {pod.status.phase} ready={ready} "
                f"node={pod.spec.node_name} ip={pod.status.pod_ip} "
                f"deleting={pod.metadata.deletion_timestamp is not None}"
            )
        for dep in client.AppsV1Api(api).list_namespaced_deployment(namespace).items:
            lines.append(
                f"deployment {dep.metadata.name}: replicas {dep.spec.replicas}, ready "
                f"{dep.status.ready_replicas or 0}, updated {dep.status.updated_replicas or 0}"
            )
        unready = [
            f"{node.metadata.name} ({[t.key for t in node.spec.taints or []]})"
            for node in client.CoreV1Api(api).list_node().items
            if not any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )
        ]
        lines.append(f"nodes not Ready: {unready or 'none'}")
        endpoints = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )
        for obj in endpoints["items"]:
            status = obj.get("status") or {}
            lines.append(
                f"endpoint {obj['metadata']['name']}: generation "
                f"{obj['metadata'].get('generation')}, observed {status.get('observedGeneration')}"
                f", replicas {status.get('replicas')}, rollout {status.get('rollout')}"
            )
            for cond in status.get("conditions") or []:
                lines.append(
                    f"  {cond.get('type')}={cond.get('status')} {cond.get('reason')}: "
                    f"{cond.get('message')}"
                )
    except Exception as exc:  # a diagnostic never hides the failure
        lines.append(f"(listing {namespace} failed: {exc})")
    return "\n".join(lines) or "(nothing in the namespace)"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    reuse = os.environ.get("MAGISTRAL_E2E_STATE")
    if reuse:
        yield LocalCluster.attach(Path(reuse))
        return
    local = LocalCluster(die_with_parent=True)
    local.start()
    try:
        create_pools(local.api())
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def admin_kubeconfig(cluster: LocalCluster) -> Path:
    install_crds(cluster.kubeconfig)
    install_operator_rbac(cluster.kubeconfig)
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def api(admin_kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(admin_kubeconfig))


@pytest.fixture(scope="session")
def operator(
    cluster: LocalCluster, admin_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    sa_kubeconfig = cluster.kubeconfig_for_service_account(OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
    proc = OperatorProcess(
        kubeconfig=sa_kubeconfig,
        log_file=tmp_path_factory.mktemp("operator") / "operator.log",
        metrics=True,  # tests that wait for nothing to happen count its passes meanwhile
    )
    proc.start()
    yield proc
    proc.stop()


@contextlib.contextmanager
def swapped_operator(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path, **settings: Any
) -> Iterator[OperatorProcess]:
    """The session operator stopped and replaced, for one test, by one started with
    `settings` (OperatorProcess's keyword arguments); the session operator is started again
    afterwards, whatever the test did."""
    operator.stop()
    own = OperatorProcess(
        kubeconfig=cluster.kubeconfig_for_service_account(OPERATOR_NAMESPACE, SERVICE_ACCOUNT),
        log_file=tmp_path / "operator.log",
        **{"metrics": True, **settings},
    )
    try:
        own.start()
        yield own
    finally:
        own.stop()
        operator.start()


@pytest.fixture
def fast_overflow_operator(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The session operator, swapped for one whose pools overflow (count as full) after 5 s,
    for the test that asks for it."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for pool in config["pools"]:
        pool["overflowAfterSeconds"] = 5
    path = tmp_path / "operator-config.yaml"
    path.write_text(yaml.safe_dump(config))
    with swapped_operator(cluster, operator, tmp_path, config=path) as own:
        yield own


@pytest.fixture
def namespace(
    request: pytest.FixtureRequest, api: client.ApiClient, admin_kubeconfig: Path
) -> Iterator[str]:
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = f"t-{digest}-{uuid.uuid4().hex[:4]}"  # a rerun must not meet a terminating namespace
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(
        name, {"metadata": {"name": "magistral-small-api-key"}, "stringData": {"api-key": "k"}}
    )
    with contextlib.ExitStack() as stack:
        if request.node.get_closest_marker("router_processes") is None:
            stack.enter_context(RouterReadiness(api, name))
        yield name
    core.delete_namespace(name)


def wait_for(
    what: str, check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.5
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`
    seconds, not counting the seconds in which this process stalled (e2e/stalls.py)."""
    waited = poll(check, timeout=timeout, interval=interval, stalls=process_heartbeat().stalled)
    if waited.value:
        return waited.value
    pytest.fail(
        f"timed out after {timeout}s waiting for {what} ({waited.seconds:.1f} s in all, "
        f"{waited.stalled:.1f} s of it stalled; last: {waited.value!r})"
    )


def passes_completed(
    operator: OperatorProcess, namespace: str, name: str, *, count: int = 3, timeout: float = 90
) -> float:
    """Wait until `operator` (started with ``metrics``) has completed `count` more passes of the
    endpoint than when called: the proof that it ran while a test waits for nothing to change."""
    assert operator.metrics_port, "the operator serves no /metrics (OperatorProcess(metrics=True))"
    # The first read may come while the operator is busy (just started, a pass running).
    (start,) = wait_for(
        f"the operator's /metrics (passes of {namespace}/{name})",
        lambda: None if (n := operator.passes(namespace, name)) is None else (n,),
        timeout=60,
    )

    def done() -> float | None:
        now = operator.passes(namespace, name)
        return now if now is not None and now - start >= count else None

    result: float = wait_for(
        f"{count} passes of {namespace}/{name}", done, timeout=timeout, interval=0.25
    )
    return result


def settle(
    operator: OperatorProcess,
    namespace: str,
    name: str,
    snapshot: Callable[[], Any],
    *,
    passes: int = 3,
    timeout: float = 180,
    interval: float = 1.0,
) -> Any:
    """The snapshot once it has stayed the same while `operator` (started with ``metrics``)
    completed `passes` passes of the endpoint: settled, and proven so by the operator running.

    Ready is not an endpoint's last write (the rollout turns Healthy after healthySeconds,
    the autoscaler's first reads land, a PDB counts its pods), so a test that then checks
    that nothing changes first waits for this."""
    assert operator.metrics_port, "the operator serves no /metrics (OperatorProcess(metrics=True))"
    state: dict[str, Any] = {"snapshot": object(), "passes": None}

    def check() -> tuple[Any] | None:
        now = snapshot()
        count = operator.passes(namespace, name)
        if now != state["snapshot"] or state["passes"] is None:
            state.update(snapshot=now, passes=count)
            return None
        if count is None or count - state["passes"] < passes:
            return None
        return (now,)

    result: tuple[Any] = wait_for(
        f"{namespace}/{name} to settle over {passes} passes",
        check,
        timeout=timeout,
        interval=interval,
    )
    return result[0]


def endpoint_manifest(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    """The example endpoint, renamed, with spec overrides merged at the top level."""
    example = Path(__file__).resolve().parents[2] / "examples" / "magistral-small.yaml"
    body: dict[str, Any] = yaml.safe_load(example.read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(spec)
    return body


def printed_columns(kubeconfig: Path, namespace: str, name: str) -> dict[str, str]:
    """What `kubectl get mep NAME -o wide` prints for the endpoint, by column header (the
    CRD's printer columns, read by the real kubectl: a wrong jsonPath prints nothing)."""
    header, row = kubectl(kubeconfig, "-n", namespace, "get", "mep", name, "-o", "wide").split(
        "\n"
    )[:2]
    return table_row(header, row)


def get_endpoint(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def rollout_state(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The endpoint's status.rollout (empty before the first pass)."""
    return dict((get_endpoint(api, namespace, name).get("status") or {}).get("rollout") or {})


def healthy_rollout(
    api: client.ApiClient, namespace: str, name: str, *, not_revision: str | None = None
) -> Callable[[], dict[str, Any] | None]:
    """A wait_for check: the rollout Healthy, on a revision other than `not_revision`."""

    def check() -> dict[str, Any] | None:
        state = rollout_state(api, namespace, name)
        if state.get("phase") != "Healthy" or state.get("currentRevision") == not_revision:
            return None
        return state

    return check


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return None


def apply_manifest(kubeconfig: Path, manifest: dict[str, Any]) -> str:
    """`kubectl apply --server-side` as a user would (field manager kubectl)."""
    return kubectl(kubeconfig, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(manifest))


def ready_status(api: client.ApiClient, namespace: str, name: str, replicas: int) -> Any:
    """A wait_for check: Ready, not Progressing, `replicas` ready, current generation."""

    def check() -> dict[str, Any] | None:
        obj = get_endpoint(api, namespace, name)
        ready = condition(obj, "Ready")
        progressing = condition(obj, "Progressing")
        status = obj.get("status") or {}
        if (
            ready
            and ready["status"] == "True"
            and progressing
            and progressing["status"] == "False"
            and status.get("readyReplicas") == replicas
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        ):
            return obj
        return None

    return check


def ready_pods_by(
    api: client.ApiClient, namespace: str, *, endpoint: str, label: str
) -> dict[str, int]:
    """Ready, not terminating pods of `endpoint`, counted by the value of `label`."""
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace,
        label_selector=f"magistral.dev/endpoint={endpoint},app.kubernetes.io/component=inference",
    )
    counts: dict[str, int] = {}
    for pod in pods.items:
        if pod.metadata.deletion_timestamp:
            continue
        ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        if ready:
            key = (pod.metadata.labels or {}).get(label, "")
            counts[key] = counts.get(key, 0) + 1
    return counts
