"""GitOps on the real control plane: the chart and an endpoint applied the way Argo CD applies
them (server-side apply, field manager argocd-controller), reconciled by the operator.

- The operator never writes an endpoint's spec: only the applier owns `f:spec`.
- Re-applying the same manifests changes nothing (resourceVersion unchanged), for the chart's
  objects and for the endpoint and its children.
- No field of a child is owned by both the operator and another manager. A manual change to a
  field the operator owns (`kubectl scale` of its Deployment) is taken back by the operator:
  the endpoint's spec is the one source of truth for replicas.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.install import CHART, kubectl, tool
from e2e.operator_process import OperatorProcess
from magistral_operator.api.labels import MANAGER

from .conftest import passes_completed, ready_status, settle, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_DIR = ROOT / "examples" / "gitops" / "endpoint"
ARGOCD = "argocd-controller"
NAME = "magistral-small"
SELECTOR = f"magistral.dev/endpoint={NAME}"
CHILD_KINDS = (
    "deployment",
    "service",
    "configmap",
    "poddisruptionbudget",
    "networkpolicy",
    "serviceaccount",
    "role",
    "rolebinding",
)


def argocd_apply(kubeconfig: Path, manifests: str, *, namespace: str | None = None) -> str:
    """What Argo CD does on sync with ServerSideApply=true."""
    args = ["apply", "--server-side", f"--field-manager={ARGOCD}", "-f", "-"]
    if namespace:
        args = ["-n", namespace, *args]
    return kubectl(kubeconfig, *args, stdin=manifests)


def endpoint_manifests() -> str:
    """examples/gitops/endpoint as Argo CD and Flux render it (kustomize)."""
    return subprocess.run(
        [str(tool("kubectl")), "kustomize", str(ENDPOINT_DIR)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def get_json(kubeconfig: Path, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(
        kubectl(kubeconfig, "get", *args, "-o", "json", "--show-managed-fields")
    )
    return out


def leaves(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The field paths a managedFields fieldsV1 tree owns."""
    out: set[tuple[str, ...]] = set()
    for key, child in node.items():
        if key == ".":
            out.add(prefix)
        elif child:
            out |= leaves(child, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def owners(obj: dict[str, Any]) -> list[tuple[str, str, str, set[tuple[str, ...]]]]:
    """(manager, operation, subresource, owned fields) of every managedFields entry."""
    return [
        (
            entry["manager"],
            entry["operation"],
            entry.get("subresource", ""),
            leaves(entry.get("fieldsV1") or {}),
        )
        for entry in obj["metadata"].get("managedFields") or []
    ]


@pytest.fixture
def synced(
    api: client.ApiClient, admin_kubeconfig: Path, operator: OperatorProcess, namespace: str
) -> Iterator[str]:
    """The example endpoint synced by "Argo CD" into a test namespace and Ready."""
    argocd_apply(admin_kubeconfig, endpoint_manifests(), namespace=namespace)
    wait_for("the endpoint to be Ready", ready_status(api, namespace, NAME, 1), timeout=90)
    # Ready is not the last write: the second router pod turns Ready, the PDBs' controller
    # counts it, the rollout turns Healthy after healthySeconds.
    settle(operator, namespace, NAME, lambda: versions(admin_kubeconfig, namespace))
    return namespace


def versions(kubeconfig: Path, namespace: str) -> dict[str, str]:
    """resourceVersion of the endpoint and of each of its children."""
    out = {f"mep/{NAME}": get_json(kubeconfig, "-n", namespace, "mep", NAME)["metadata"][
        "resourceVersion"
    ]}  # fmt: skip
    for kind in CHILD_KINDS:
        for item in get_json(kubeconfig, "-n", namespace, kind, "-l", SELECTOR)["items"]:
            out[f"{kind}/{item['metadata']['name']}"] = item["metadata"]["resourceVersion"]
    return out


def test_chart_manifests_reapplied_change_nothing(admin_kubeconfig: Path) -> None:
    """Argo CD renders the chart with `helm template` and applies it; a re-sync is a no-op."""
    namespace, release = "argo-mo-system", "argo-mo"
    kubectl(admin_kubeconfig, "create", "namespace", namespace, check=False)
    rendered = subprocess.run(
        [str(tool("helm")), "template", release, str(CHART), "--namespace", namespace,
         "--set", "replicas=0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    try:
        argocd_apply(admin_kubeconfig, rendered)

        def applied() -> dict[str, Any]:
            """What the applier wrote into each object: its generation (spec changes) and
            Argo CD's managedFields entry (a write by the applier renews its time). The
            controllers' status writes, which may come at any time (later when the
            controller manager is busy or the machine stalls), change neither."""
            out = {}
            for obj in objects:
                meta = obj["metadata"]
                args = [obj["kind"].lower(), meta["name"]]
                if meta.get("namespace"):
                    args = ["-n", meta["namespace"], *args]
                live = get_json(admin_kubeconfig, *args)["metadata"]
                mine = [f for f in live.get("managedFields") or [] if f["manager"] == ARGOCD]
                assert mine, f"{obj['kind']}/{meta['name']}: no managedFields of {ARGOCD}"
                out[f"{obj['kind']}/{meta['name']}"] = (live.get("generation"), mine)
            return out

        before = applied()
        time.sleep(1.1)  # managedFields times have 1 s resolution: a write would show
        out = argocd_apply(admin_kubeconfig, rendered)
        assert "serverside-applied" in out
        assert applied() == before
    finally:
        for obj in reversed(objects):
            if obj["kind"] == "CustomResourceDefinition":
                continue  # shared by every test; kept, as the chart says
            kubectl(
                admin_kubeconfig, "delete", "--ignore-not-found", "--wait=false", "-f", "-",
                stdin=yaml.safe_dump(obj), check=False,
            )  # fmt: skip
        kubectl(admin_kubeconfig, "delete", "namespace", namespace, "--wait=false", check=False)


def test_only_the_applier_owns_the_endpoint_spec(
    api: client.ApiClient, admin_kubeconfig: Path, synced: str
) -> None:
    obj = get_json(admin_kubeconfig, "-n", synced, "mep", NAME)
    spec_owners = {m for m, _, _, fields in owners(obj) if any(f[0] == "f:spec" for f in fields)}
    assert spec_owners == {ARGOCD}, owners(obj)
    # What the operator side does write: status (subresource) and kopf's annotations.
    for manager, operation, subresource, fields in owners(obj):
        if manager == ARGOCD:
            assert operation == "Apply"
            continue
        for path in fields:
            assert subresource == "status" or path[:2] == ("f:metadata", "f:annotations"), (
                manager,
                path,
            )

    # A spec change through Git: the operator follows, and still never touches the spec.
    changed = yaml.safe_load(endpoint_manifests())
    changed["spec"]["scaling"]["minReplicas"] = 2
    argocd_apply(admin_kubeconfig, yaml.safe_dump(changed), namespace=synced)
    wait_for("2 replicas", ready_status(api, synced, NAME, 2), timeout=90)
    obj = get_json(admin_kubeconfig, "-n", synced, "mep", NAME)
    spec_owners = {m for m, _, _, fields in owners(obj) if any(f[0] == "f:spec" for f in fields)}
    assert spec_owners == {ARGOCD}


def test_reapplying_the_same_endpoint_changes_nothing(
    admin_kubeconfig: Path, operator: OperatorProcess, synced: str
) -> None:
    before = versions(admin_kubeconfig, synced)
    # The endpoint, the Deployment of the pool that serves (reserved-h100; the empty
    # ondemand-h100 has none), the router's Deployment, ServiceAccount, Role, RoleBinding, PDB
    # and NetworkPolicy, the engines' PDB and NetworkPolicy, the two Services and the runtime
    # ConfigMap.
    assert len(before) == 13, before
    out = argocd_apply(admin_kubeconfig, endpoint_manifests(), namespace=synced)
    assert "serverside-applied" in out
    passes_completed(operator, synced, NAME)  # it ran, and found nothing to write
    assert versions(admin_kubeconfig, synced) == before


def test_no_child_field_is_owned_by_the_operator_and_another_manager(
    admin_kubeconfig: Path, synced: str
) -> None:
    checked = set()
    for kind in CHILD_KINDS:
        for item in get_json(admin_kubeconfig, "-n", synced, kind, "-l", SELECTOR)["items"]:
            entries = owners(item)
            ours = [f for m, op, _, f in entries if m == MANAGER and op == "Apply"]
            assert len(ours) == 1, f"{kind}: operator entries {entries}"
            for manager, operation, subresource, fields in entries:
                if manager == MANAGER and operation == "Apply":
                    continue
                shared = ours[0] & fields
                assert not shared, f"{kind}: {manager} ({operation} {subresource}) owns {shared}"
            checked.add(kind)
    assert checked == set(CHILD_KINDS)


def test_kubectl_scale_of_an_operator_deployment_is_taken_back(
    admin_kubeconfig: Path, operator: OperatorProcess, synced: str
) -> None:
    """Replicas come from the endpoint's spec; a scaled Deployment is reverted by the operator.

    The Deployment's change event triggers a pass that finds the live object no longer holds
    what the operator applies (drift detection); at the latest, the next periodic pass takes
    the field back.
    """
    name = f"{NAME}-reserved-h100"  # the preferred pool's Deployment serves the replica
    before = get_json(admin_kubeconfig, "-n", synced, "deployment", name)
    assert before["spec"]["replicas"] == 1
    out = kubectl(admin_kubeconfig, "-n", synced, "scale", f"deployment/{name}", "--replicas=3")
    assert "scaled" in out
    started = time.monotonic()

    def reverted() -> dict[str, Any] | None:
        live = get_json(admin_kubeconfig, "-n", synced, "deployment", name)
        # generation + 2: the scale was stored, then the operator's revert.
        done = live["spec"]["replicas"] == 1 and live["metadata"]["generation"] >= (
            before["metadata"]["generation"] + 2
        )
        return live if done else None

    live = wait_for(
        "the operator to take spec.replicas back",
        reverted,
        timeout=4 * operator.resync_seconds + 30,
    )
    print(f"kubectl scale reverted after {time.monotonic() - started:.1f}s")
    (ours,) = [f for m, op, _, f in owners(live) if m == MANAGER and op == "Apply"]
    assert ("f:spec", "f:replicas") in ours
    for manager, _, _, fields in owners(live):
        if manager != MANAGER:
            assert ("f:spec", "f:replicas") not in fields, (manager, fields)
