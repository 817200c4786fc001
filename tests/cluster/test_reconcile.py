"""The operator on a real control plane: scheduling on GPU pools, status, GC, idempotence,
restarts. The operator runs under the chart's ServiceAccount and RBAC, not as admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.cluster import LocalCluster
from e2e.operator_process import OperatorProcess

from .audit import OPERATOR_USER, log_size, writes
from .conftest import (
    GROUP,
    PLURAL,
    VERSION,
    apply_manifest,
    condition,
    endpoint_manifest,
    get_endpoint,
    passes_completed,
    ready_status,
    settle,
    wait_for,
)

SELECTOR = "magistral.dev/endpoint={}"
ENGINES = SELECTOR + ",app.kubernetes.io/component=inference"
CHILD_KINDS = (
    "deployments",
    "services",
    "configmaps",
    "poddisruptionbudgets",
    "networkpolicies",
    "serviceaccounts",
    "roles",
    "rolebindings",
)


def children(api: client.ApiClient, namespace: str, name: str) -> dict[str, list[str]]:
    """Names of the endpoint's children by kind (ReplicaSets and Pods included)."""
    selector = SELECTOR.format(name)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    policy, net = client.PolicyV1Api(api), client.NetworkingV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    listed = {
        "deployments": apps.list_namespaced_deployment(namespace, label_selector=selector),
        "replicasets": apps.list_namespaced_replica_set(namespace, label_selector=selector),
        "pods": core.list_namespaced_pod(namespace, label_selector=selector),
        "services": core.list_namespaced_service(namespace, label_selector=selector),
        "configmaps": core.list_namespaced_config_map(namespace, label_selector=selector),
        "poddisruptionbudgets": policy.list_namespaced_pod_disruption_budget(
            namespace, label_selector=selector
        ),
        "networkpolicies": net.list_namespaced_network_policy(namespace, label_selector=selector),
        "serviceaccounts": core.list_namespaced_service_account(namespace, label_selector=selector),
        "roles": rbac.list_namespaced_role(namespace, label_selector=selector),
        "rolebindings": rbac.list_namespaced_role_binding(namespace, label_selector=selector),
    }
    return {kind: sorted(i.metadata.name for i in result.items) for kind, result in listed.items()}


def test_example_endpoint_becomes_ready_on_reserved_gpus(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    manifest = endpoint_manifest(
        "magistral-small", namespace, scaling={"minReplicas": 2, "maxReplicas": 4}
    )
    apply_manifest(admin_kubeconfig, manifest)
    obj = wait_for(
        "the endpoint to be Ready with 2 replicas",
        ready_status(api, namespace, "magistral-small", 2),
        timeout=90,
    )
    status = obj["status"]
    assert status["tensorParallelSize"] == 1
    assert status["gpusPerReplica"] == 1
    assert status["gpuProduct"] == "NVIDIA-H100-80GB-HBM3"
    assert status["replicas"] == 2
    assert status["url"] == f"http://magistral-small.{namespace}.svc.cluster.local/v1"
    assert status["currentRevision"]
    pools = {p["name"]: p for p in status["pools"]}
    assert pools["reserved-h100"]["replicas"] == 2
    assert pools["reserved-h100"]["kvCacheTokens"] > 40960
    assert condition(obj, "Degraded")["status"] == "False"  # type: ignore[index]

    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(
        namespace, label_selector=ENGINES.format("magistral-small")
    ).items
    assert len(pods) == 2
    for pod in pods:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels["magistral.dev/pool"] == "reserved-h100"
        assert node.metadata.labels["karpenter.sh/capacity-type"] == "reserved"
        assert pod.status.pod_ip.startswith("127.")
        limits = pod.spec.containers[0].resources.limits
        assert limits["nvidia.com/gpu"] == "1"

    def reasons() -> list[str]:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=magistral-small"
        ).items
        return [e.reason for e in events]

    # Events follow the status write that records the transition: wait for it, then a few
    # more passes, and there must be exactly one.
    wait_for("a ReplicasReady event", lambda: "ReplicasReady" in reasons(), timeout=30)
    passes_completed(operator, namespace, "magistral-small", count=2)
    assert reasons().count("ReplicasReady") == 1, reasons()  # one Event per transition


def test_more_gpus_than_the_pool_has_leaves_pods_pending_and_says_why(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    # reserved-h100 has 2 nodes x 8 GPUs; 3 replicas of TP 8 need 24.
    manifest = endpoint_manifest(
        "big",
        namespace,
        gpu={"pools": ["reserved-h100"], "tensorParallelSize": 8},
        scaling={"minReplicas": 3, "maxReplicas": 3},
    )
    apply_manifest(admin_kubeconfig, manifest)

    def degraded() -> dict[str, Any] | None:
        cond = condition(get_endpoint(api, namespace, "big"), "Degraded")
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for("Degraded=Unschedulable", degraded, timeout=90)
    assert cond["status"] == "True"
    assert "nvidia.com/gpu" in cond["message"]
    pending = [
        p
        for p in client.CoreV1Api(api)
        .list_namespaced_pod(namespace, label_selector=ENGINES.format("big"))
        .items
        if p.status.phase == "Pending"
    ]
    assert pending


def test_model_that_fits_no_pool_is_degraded_with_numbers(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    manifest = endpoint_manifest(
        "too-small", namespace, gpu={"pools": ["spot-l40s"], "tensorParallelSize": 1}
    )
    apply_manifest(admin_kubeconfig, manifest)

    def degraded() -> dict[str, Any] | None:
        cond = condition(get_endpoint(api, namespace, "too-small"), "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = wait_for("Degraded=True", degraded, timeout=60)
    assert cond["reason"] == "InsufficientGPUMemory"
    assert "47.1 GB" in cond["message"]
    assert "NVIDIA-L40S" in cond["message"]
    assert children(api, namespace, "too-small")["deployments"] == []


def test_deleting_the_endpoint_collects_every_child(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    apply_manifest(admin_kubeconfig, endpoint_manifest("gc", namespace))
    wait_for("the endpoint to be Ready", ready_status(api, namespace, "gc", 1), timeout=90)
    before = children(api, namespace, "gc")
    assert all(before[kind] for kind in (*CHILD_KINDS, "replicasets", "pods")), before
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "gc"
    )
    wait_for(
        "every child to be garbage-collected",
        lambda: not any(children(api, namespace, "gc").values()),
        timeout=90,
    )


def test_reapplying_the_same_endpoint_writes_nothing(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    manifest = endpoint_manifest("idem", namespace)
    apply_manifest(admin_kubeconfig, manifest)
    wait_for("the endpoint to be Ready", ready_status(api, namespace, "idem", 1), timeout=90)
    version_before = settle(
        operator,
        namespace,
        "idem",
        lambda: get_endpoint(api, namespace, "idem")["metadata"]["resourceVersion"],
        passes=4,
        timeout=240,
    )
    offset = log_size(cluster.audit_log)

    apply_manifest(admin_kubeconfig, manifest)
    passes_completed(operator, namespace, "idem", count=4)  # several passes, none writes

    operator_writes = writes(
        cluster.audit_log, user=OPERATOR_USER, namespace=namespace, offset=offset
    )
    assert operator_writes == [], [str(w) for w in operator_writes]
    assert get_endpoint(api, namespace, "idem")["metadata"]["resourceVersion"] == version_before


def test_operator_writes_only_status_and_children(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    offset = log_size(cluster.audit_log)
    apply_manifest(admin_kubeconfig, endpoint_manifest("scope", namespace))
    wait_for("the endpoint to be Ready", ready_status(api, namespace, "scope", 1), timeout=90)
    seen = writes(cluster.audit_log, user=OPERATOR_USER, namespace=namespace, offset=offset)
    assert seen
    for write in seen:
        if write.resource == "magistralendpoints":
            # kopf keeps its handler bookkeeping in annotations; the spec is never written.
            assert write.subresource == "status" or write.verb == "patch", str(write)
        else:
            assert write.resource in (*CHILD_KINDS, "events"), str(write)
    managed = get_endpoint(api, namespace, "scope")["metadata"]["managedFields"]
    for entry in managed:
        if entry["manager"] != "kubectl":
            assert "f:spec" not in entry.get("fieldsV1", {}), entry


def test_operator_restart_mid_reconcile_converges_without_duplicates(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    manifest = endpoint_manifest("restart", namespace, scaling={"minReplicas": 2, "maxReplicas": 2})
    apply_manifest(admin_kubeconfig, manifest)
    wait_for(
        "the first child to appear",
        lambda: any(children(api, namespace, "restart").values()),
        timeout=60,
        interval=0.05,
    )
    operator.kill()
    operator.start()
    wait_for("the endpoint to be Ready", ready_status(api, namespace, "restart", 2), timeout=90)
    seen = children(api, namespace, "restart")
    # No Deployment for the overflow pool, which runs nothing (kube/children.py).
    assert seen["deployments"] == ["restart-reserved-h100", "restart-router"]
    assert seen["services"] == ["restart", "restart-engines"]
    revision = get_endpoint(api, namespace, "restart")["status"]["currentRevision"]
    assert seen["configmaps"] == [f"restart-runtime-{revision}"]
    assert seen["poddisruptionbudgets"] == ["restart", "restart-router"]
    assert seen["networkpolicies"] == ["restart", "restart-router"]
    assert seen["serviceaccounts"] == seen["roles"] == seen["rolebindings"] == ["restart-router"]
    assert len(seen["pods"]) == 2 + 2  # engines and routers
    # One ReplicaSet per Deployment (the reserved pool's and the router's): no duplicate
    # rollouts.
    assert len(seen["replicasets"]) == 2, seen["replicasets"]


def test_edited_children_are_repaired(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    apply_manifest(admin_kubeconfig, endpoint_manifest("drift", namespace))
    wait_for("the endpoint to be Ready", ready_status(api, namespace, "drift", 1), timeout=90)
    apps = client.AppsV1Api(api)
    apps.patch_namespaced_deployment_scale(
        "drift-reserved-h100", namespace, {"spec": {"replicas": 3}}
    )
    core = client.CoreV1Api(api)
    revision = get_endpoint(api, namespace, "drift")["status"]["currentRevision"]
    runtime = f"drift-runtime-{revision}"
    original = core.read_namespaced_config_map(runtime, namespace).data
    key = "runtime-reserved-h100.json"
    # The revision's ConfigMap is immutable: an edit is refused; a deleted one is put back.
    with pytest.raises(client.ApiException) as refused:
        core.patch_namespaced_config_map(runtime, namespace, {"data": {key: "{}"}})
    assert refused.value.status == 422, refused.value
    core.delete_namespaced_config_map(runtime, namespace)

    def repaired() -> bool:
        dep = apps.read_namespaced_deployment("drift-reserved-h100", namespace)
        try:
            data = core.read_namespaced_config_map(runtime, namespace).data
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return bool(dep.spec.replicas == 1 and data[key] == original[key])

    wait_for("the operator to undo the edits", repaired, timeout=10 * operator.resync_seconds)
