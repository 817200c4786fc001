"""What the API server refuses in a child, non-BMP text, and references that appear later.

The catalogue (test_catalogue.py) covers every kind of input; these tests follow a few of them
over time on the real control plane: a refusal is reported within one resync, retried with
back-off rather than every pass, and cleared when the spec is fixed; text outside the Basic
Multilingual Plane reaches the pod unchanged; a missing ConfigMap holds the pods back until it
exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster.cluster import LocalCluster
from e2e.operator_process import OperatorProcess

from .audit import OPERATOR_USER, log_size, writes
from .conftest import apply_manifest, condition, endpoint_manifest, get_endpoint, wait_for


def _has_pods(api: client.ApiClient, namespace: str, name: str) -> bool:
    pods = client.CoreV1Api(api).list_namespaced_pod(
        namespace,
        label_selector=f"magistral.dev/endpoint={name},app.kubernetes.io/component=inference",
    )
    return bool(pods.items)


def _degraded(api: client.ApiClient, namespace: str, name: str, reason: str) -> Any:
    def check() -> dict[str, Any] | None:
        cond = condition(get_endpoint(api, namespace, name), "Degraded")
        return cond if cond and cond["status"] == "True" and cond["reason"] == reason else None

    return check


def test_refused_child_degrades_within_a_resync_backs_off_and_recovers(
    api: client.ApiClient,
    admin_kubeconfig: Path,
    cluster: LocalCluster,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    # A namespace quota that allows no LoadBalancer Service: the Service child is refused
    # (403, exceeded quota) although the endpoint itself is valid.
    client.CoreV1Api(api).create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "no-lb"}, "spec": {"hard": {"services.loadbalancers": "0"}}},
    )
    offset = log_size(cluster.audit_log)
    log_start = len(operator.log_file.read_text())
    manifest = endpoint_manifest("lb", namespace, exposure={"serviceType": "LoadBalancer"})
    apply_manifest(admin_kubeconfig, manifest)
    cond = wait_for(
        "Degraded ChildRefused",
        _degraded(api, namespace, "lb", "ChildRefused"),
        timeout=operator.resync_seconds + 45,
    )
    assert "Service/lb" in cond["message"], cond
    assert "exceeded quota" in cond["message"], cond
    # The other children were applied.
    deployments = client.AppsV1Api(api).list_namespaced_deployment(
        namespace, label_selector="magistral.dev/endpoint=lb"
    )
    assert deployments.items

    # Back-off: the Service is sent again only as the back-off allows (after 10 s, then 20 s
    # more; refusals.py), not at each pass (every resync_seconds): the gaps between the
    # refused writes, by the API server's clock. A stall of the machine only makes them longer,
    # unless it falls inside a pass between its clock reading and its write: a margin of a few
    # seconds is left for that. The retries prove that the operator ran meanwhile.
    def refused_writes() -> list[Any]:
        return [
            w
            for w in writes(
                cluster.audit_log, user=OPERATOR_USER, namespace=namespace, offset=offset
            )
            if w.resource == "services" and w.name == "lb"
        ]

    refused = wait_for(
        "three refused writes of Service/lb", lambda: (r := refused_writes())[2:] and r, timeout=120
    )
    assert all(w.code == 403 for w in refused), [str(w) for w in refused]
    first, second, third = (w.received for w in refused[:3])
    gaps = [(second - first).total_seconds(), (third - second).total_seconds()]
    assert gaps[0] >= 2 * operator.resync_seconds, (gaps, [str(w) for w in refused])
    assert gaps[1] >= 15, (gaps, [str(w) for w in refused])
    # One warning for the refusal (not one per pass) and no failed pass with a traceback.
    log = operator.log_file.read_text()[log_start:]
    assert log.count(f"{namespace}/lb: the API server refused Service/lb") == 1, log
    assert f"pass of {namespace}/lb failed" not in log, log

    # Fixed spec: tried at once (a new content hash), Degraded clears.
    manifest["spec"]["exposure"] = {"serviceType": "ClusterIP"}
    apply_manifest(admin_kubeconfig, manifest)

    def recovered() -> bool:
        cond = condition(get_endpoint(api, namespace, "lb"), "Degraded")
        services = client.CoreV1Api(api).list_namespaced_service(
            namespace, label_selector="magistral.dev/endpoint=lb"
        )
        return bool(cond and cond["reason"] != "ChildRefused" and services.items)

    wait_for("the endpoint to recover", recovered, timeout=operator.resync_seconds + 45)


def test_text_outside_the_bmp_reaches_the_pod_unchanged(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    prompt = "Réponds en une phrase 😀 — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, 中文, 🦙"  # noqa: RUF001 (on purpose)
    value = "bonjour 🦙 𝄞"
    manifest = endpoint_manifest(
        "emoji",
        namespace,
        inference={"systemPrompt": {"mode": "custom", "text": prompt}},
        runtime={"env": [{"name": "GREETING", "value": value}]},
    )
    apply_manifest(admin_kubeconfig, manifest)  # kubectl, as a user would

    def deployed() -> Any:
        items = (
            client.AppsV1Api(api)
            .list_namespaced_deployment(
                namespace,
                label_selector="magistral.dev/endpoint=emoji,app.kubernetes.io/component=inference",
            )
            .items
        )
        return items[0] if items else None

    deployment = wait_for("the Deployment", deployed, timeout=operator.resync_seconds + 30)
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["GREETING"] == value
    config_maps = (
        client.CoreV1Api(api)
        .list_namespaced_config_map(namespace, label_selector="magistral.dev/endpoint=emoji")
        .items
    )
    assert any(prompt in (cm.data or {}).values() for cm in config_maps)
    degraded = condition(get_endpoint(api, namespace, "emoji"), "Degraded")
    assert degraded is None or degraded["status"] == "False", degraded


def test_missing_prompt_configmap_holds_pods_until_it_exists(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> None:
    ref = {"name": "team-prompt", "key": "prompt"}
    manifest = endpoint_manifest(
        "later", namespace, inference={"systemPrompt": {"mode": "custom", "configMapRef": ref}}
    )
    apply_manifest(admin_kubeconfig, manifest)
    cond = wait_for(
        "Degraded ReferenceNotFound",
        _degraded(api, namespace, "later", "ReferenceNotFound"),
        timeout=operator.resync_seconds + 45,
    )
    assert "spec.inference.systemPrompt.configMapRef" in cond["message"], cond
    assert not _has_pods(api, namespace, "later")

    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, {"metadata": {"name": "team-prompt"}, "data": {"prompt": "Be brief."}}
    )

    # The next pass (kopf's retry back-off, or the resync) finds it and creates the pods.
    wait_for(
        "pods once the ConfigMap exists",
        lambda: _has_pods(api, namespace, "later"),
        timeout=operator.resync_seconds + 30,
    )
