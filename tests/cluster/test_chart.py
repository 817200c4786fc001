"""The Helm chart on a real API server: install, the operator under exactly the release's
ServiceAccount, its permissions, Pod Security `restricted`, upgrade, uninstall.

These tests get a control plane of their own (started here, ~5 s), so `helm install` meets a
fresh cluster as a new user's would (the CRD included) and no other operator is running.

kwok nodes run no containers, so the chart is installed with replicas=0: the Deployment, its
pod template and its rollouts are real API objects, but no operator pod is scheduled (on kwok
it would be reported Running while running nothing). The operator instead runs as a local
process with the token of the release's own ServiceAccount and the release's own ConfigMap,
which is everything the pod would get.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.nodepools import create_pools
from e2e.install import CHART, tool
from e2e.operator_process import OperatorProcess, refused_requests

from .audit import writes
from .conftest import RouterReadiness, endpoint_manifest, wait_for

RELEASE = "magistral-operator"
NAMESPACE = "magistral-system"
FULLNAME = "magistral-operator"  # the release name contains the chart name
SA_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
CRD = "magistralendpoints.magistral.dev"
TEAM = "team-a"
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "kubectl.md"
GUIDE = ROOT / "docs" / "install.md"
TRY_STATE = Path("/tmp/magistral-try")  # the state dir docs/install.md uses

# `kubectl auth can-i --list` for the operator's ServiceAccount, in any namespace: the chart's
# rules plus what Kubernetes grants every authenticated identity (discovery, self reviews).
# (resource, non-resource URL, verbs); a change to the chart's RBAC must change this list.
ALLOWLIST: set[tuple[str, str, str]] = {
    ("magistralendpoints.magistral.dev", "", "get list watch patch"),
    ("magistralendpoints.magistral.dev/status", "", "patch"),
    ("magistralendpoints.magistral.dev/finalizers", "", "update"),
    ("deployments.apps", "", "get list watch create patch delete"),
    ("replicasets.apps", "", "get list watch"),
    ("services", "", "get list watch create patch"),
    ("configmaps", "", "get list watch create patch delete"),
    ("poddisruptionbudgets.policy", "", "get list watch create patch"),
    ("networkpolicies.networking.k8s.io", "", "get list watch create patch"),
    # Each endpoint's router pods discover its engines with a ServiceAccount and a Role.
    ("serviceaccounts", "", "get list watch create patch"),
    ("roles.rbac.authorization.k8s.io", "", "get list watch create patch"),
    ("rolebindings.rbac.authorization.k8s.io", "", "get list watch create patch"),
    ("pods", "", "get list watch"),
    ("persistentvolumeclaims", "", "get"),
    ("events", "", "create"),
    ("customresourcedefinitions.apiextensions.k8s.io", "", "get list watch"),
    # Granted to every authenticated user by Kubernetes' default ClusterRoles.
    ("selfsubjectreviews.authentication.k8s.io", "", "create"),
    ("selfsubjectaccessreviews.authorization.k8s.io", "", "create"),
    ("selfsubjectrulesreviews.authorization.k8s.io", "", "create"),
    *(
        ("", url, "get")
        for url in (
            "/.well-known/openid-configuration/",
            "/.well-known/openid-configuration",
            "/api/*",
            "/api",
            "/apis/*",
            "/apis",
            "/healthz",
            "/livez",
            "/openapi/*",
            "/openapi",
            "/openid/v1/jwks/",
            "/openid/v1/jwks",
            "/readyz",
            "/version/",
            "/version",
        )
    ),
}


def run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> Any:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")
    return done


class Fresh:
    """A dedicated control plane with GPU pools, and helm/kubectl bound to it."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.kubeconfig = cluster.kubeconfig

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(tool("helm")), f"--kubeconfig={self.kubeconfig}", *args]
        done: subprocess.CompletedProcess[str] = run(argv, check=check)
        return done

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        done: subprocess.CompletedProcess[str] = run(argv, stdin=stdin, check=check)
        return done

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out

    def exists(self, *args: str) -> bool:
        return self.kubectl("get", *args, check=False).returncode == 0


def walkthrough() -> str:
    """The shell blocks of docs/install.md's local walkthrough, verbatim."""
    text = GUIDE.read_text()
    section = text.split("<!-- local-walkthrough:start -->")[1]
    section = section.split("<!-- local-walkthrough:end -->")[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) >= 4
    return "".join(blocks)


def _stop_walkthrough_leftovers() -> None:
    for name, marker in (
        ("operator.pid", b"magistral-operator"),
        ("supervisor.pid", b"supervisor"),
    ):
        pid_file = TRY_STATE / name
        if pid_file.exists():
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists() and marker in cmdline.read_bytes():
                os.kill(pid, signal.SIGTERM)
    if (TRY_STATE / "state.json").exists():
        subprocess.run(
            [sys.executable, "-m", "e2e.cluster", "down", "--state-dir", str(TRY_STATE)],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )


def test_local_walkthrough_word_for_word() -> None:
    """docs/install.md's local section, run exactly as written, from the repository root."""
    _stop_walkthrough_leftovers()
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "MAGISTRAL_E2E_STATE")}
    try:
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + walkthrough()],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        transcript = f"{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, transcript
        assert re.search(r"magistral-small\s+True\s+1\s+1\s+1\s+NVIDIA-H100", done.stdout), (
            transcript
        )
        assert f"system:serviceaccount:{NAMESPACE}:{FULLNAME}" in done.stdout  # auth whoami
        assert "replicas=0: the operator is NOT running" in done.stdout  # helm's NOTES
        assert not TRY_STATE.exists(), "the walkthrough's last step leaves nothing behind"
    finally:
        _stop_walkthrough_leftovers()


@pytest.fixture(scope="module")
def fresh() -> Iterator[Fresh]:
    cluster = LocalCluster(die_with_parent=True)
    cluster.start()
    try:
        create_pools(cluster.api())
        yield Fresh(cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def installed(fresh: Fresh) -> str:
    """`helm install` as docs/install.md has it (replicas=0: see the module docstring)."""
    done = fresh.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--set",
        "replicas=0",
        "--wait",
        "--timeout=120s",
    )
    fresh.kubectl("create", "namespace", TEAM)
    fresh.kubectl(
        "-n", TEAM, "create", "secret", "generic", "magistral-small-api-key",
        "--from-literal=api-key=k",
    )  # fmt: skip
    return done.stdout


@pytest.fixture(scope="module")
def release_operator(
    fresh: Fresh, installed: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with the release's ServiceAccount token and the release's ConfigMap."""
    work = tmp_path_factory.mktemp("release-operator")
    config = work / "config.yaml"
    config_map = fresh.get("-n", NAMESPACE, "configmap", f"{FULLNAME}-config")
    config.write_text(config_map["data"]["config.yaml"])
    sa_kubeconfig = fresh.cluster.kubeconfig_for_service_account(NAMESPACE, FULLNAME, create=False)
    proc = OperatorProcess(
        kubeconfig=sa_kubeconfig, log_file=work / "operator.log", config=config, resync_seconds=1
    )
    proc.start()
    yield proc
    proc.stop()


def test_helm_install_creates_everything_and_says_what_next(fresh: Fresh, installed: str) -> None:
    assert "STATUS: deployed" in installed
    assert "replicas=0: the operator is NOT running" in installed  # NOTES.txt
    assert "kubectl get mep -w" in installed
    # The endpoint NOTES.txt tells the user to paste is one the API server accepts.
    pasted = installed.split("kubectl apply -f - <<EOF\n")[1].split("\nEOF\n", maxsplit=1)[0]
    accepted = fresh.kubectl("-n", "default", "apply", "--dry-run=server", "-f", "-", stdin=pasted)
    assert "created (server dry run)" in accepted.stdout
    crd = fresh.get("crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    for kind, name in (
        ("serviceaccount", FULLNAME),
        ("configmap", f"{FULLNAME}-config"),
        ("service", f"{FULLNAME}-metrics"),
        ("deployment", FULLNAME),
    ):
        assert fresh.exists("-n", NAMESPACE, kind, name), f"{kind}/{name}"
    for name in (FULLNAME, f"{FULLNAME}-crd-reader"):
        assert fresh.exists("clusterrole", name)
        assert fresh.exists("clusterrolebinding", name)
    deployment = fresh.get("-n", NAMESPACE, "deployment", FULLNAME)
    assert deployment["spec"]["replicas"] == 0
    assert fresh.kubectl("-n", NAMESPACE, "get", "pods", "-o", "name").stdout == ""


def test_operator_under_the_release_service_account_serves_an_endpoint(
    fresh: Fresh, release_operator: OperatorProcess
) -> None:
    audit_offset = fresh.cluster.audit_log.stat().st_size
    manifest = endpoint_manifest(
        "magistral-small", TEAM, scaling={"minReplicas": 2, "maxReplicas": 4}
    )
    fresh.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(manifest))

    def ready() -> dict[str, Any] | None:
        obj = fresh.get("-n", TEAM, "mep", "magistral-small")
        status = obj.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions", [])}
        if (
            conds.get("Ready", {}).get("status") == "True"
            and conds.get("Progressing", {}).get("status") == "False"
            and status.get("readyReplicas") == 2
        ):
            return obj
        return None

    api = config.new_client_from_config(config_file=str(fresh.kubeconfig))
    with RouterReadiness(api, TEAM):  # no router processes here: only their readiness
        obj = wait_for(
            "the endpoint to be Ready under the release's ServiceAccount", ready, timeout=90
        )
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    selector = "magistral.dev/endpoint=magistral-small"
    for kind in ("deployment", "service", "configmap", "poddisruptionbudget", "networkpolicy"):
        items = fresh.get("-n", TEAM, kind, "-l", selector)["items"]
        assert items, kind
    pods = fresh.get("-n", TEAM, "pods", "-l", f"{selector},app.kubernetes.io/component=inference")[
        "items"
    ]
    assert len(pods) == 2
    assert all(p["spec"]["nodeName"] for p in pods)

    # Every write it made was allowed: the chart's RBAC is enough ...
    seen = writes(fresh.cluster.audit_log, user=SA_USER, namespace=TEAM, offset=audit_offset)
    assert {w.resource for w in seen} >= {
        "deployments", "services", "configmaps", "poddisruptionbudgets", "networkpolicies",
        "magistralendpoints", "events",
    }  # fmt: skip
    assert [str(w) for w in seen if not 200 <= w.code < 300] == []
    # ... and so was every read (kopf and the client log a 403 when a list or watch is refused).
    log = release_operator.log_file.read_text()
    assert not refused_requests(log), release_operator.log_tail()


def parse_can_i(text: str) -> set[tuple[str, str, str]]:
    rows = set()
    lines = text.splitlines()
    assert lines[0].split() == ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"]
    for line in lines[1:]:
        match = re.fullmatch(r"(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*", line)
        assert match, line
        resource, urls, names, verbs = match.groups()
        assert names == "", f"unexpected resourceNames in {line!r}"
        for url in urls.split() or [""]:
            rows.add((resource, url, verbs))
    return rows


@pytest.mark.parametrize("namespace", [TEAM, NAMESPACE, "default"])
def test_service_account_permissions_match_the_allowlist(
    fresh: Fresh, installed: str, namespace: str
) -> None:
    out = fresh.kubectl("auth", "can-i", "--list", f"--as={SA_USER}", "-n", namespace).stdout
    granted = parse_can_i(out)
    assert granted == ALLOWLIST, (
        f"missing: {sorted(ALLOWLIST - granted)}\nunexpected: {sorted(granted - ALLOWLIST)}"
    )
    for verb, resource in (("get", "secrets"), ("list", "secrets"), ("create", "pods"),
                           ("escalate", "clusterroles"), ("impersonate", "users"),
                           ("update", "magistralendpoints")):  # fmt: skip
        answer = fresh.kubectl(
            "auth", "can-i", verb, resource, f"--as={SA_USER}", "-n", namespace, check=False
        )
        assert answer.stdout.strip() == "no", (verb, resource)


def operator_pod(privileged: bool = False) -> dict[str, Any]:
    """The operator's pod as the chart renders it (the Deployment's pod template)."""
    rendered = run(
        [str(tool("helm")), "template", RELEASE, str(CHART), "-n", NAMESPACE,
         "--show-only", "templates/deployment.yaml"]
    ).stdout  # fmt: skip
    deployment = yaml.safe_load(rendered)
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-pod", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }
    if privileged:
        container = pod["spec"]["containers"][0]
        container["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True}
        pod["spec"]["securityContext"] = {}
    return pod


def test_operator_pod_is_admitted_under_pod_security_restricted(fresh: Fresh) -> None:
    ns = "psa-restricted"
    fresh.kubectl("create", "namespace", ns)
    fresh.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                  "pod-security.kubernetes.io/warn=restricted")  # fmt: skip
    fresh.kubectl("-n", ns, "create", "serviceaccount", FULLNAME)
    fresh.kubectl("-n", ns, "create", "configmap", f"{FULLNAME}-config")
    admitted = fresh.kubectl(
        "-n", ns, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(operator_pod())
    )
    assert "created (server dry run)" in admitted.stdout
    assert "PodSecurity" not in admitted.stderr, admitted.stderr

    rejected = fresh.kubectl(
        "-n", ns, "create", "--dry-run=server", "-f", "-",
        stdin=json.dumps(operator_pod(privileged=True)), check=False,
    )  # fmt: skip
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr, rejected.stderr
    assert "privileged" in rejected.stderr

    # The Deployment itself draws no warning either (PodSecurity warns on workload templates).
    rendered = run(
        [str(tool("helm")), "template", RELEASE, str(CHART), "-n", ns,
         "--show-only", "templates/deployment.yaml"]
    ).stdout  # fmt: skip
    deployment = fresh.kubectl("-n", ns, "create", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "Warning" not in deployment.stderr, deployment.stderr


def test_kubectl_columns_are_the_documented_ones(
    fresh: Fresh, release_operator: OperatorProcess
) -> None:
    """docs/kubectl.md shows real output; its column headers must still be the CRD's."""
    docs = DOCS.read_text()
    for args in (["get", "mep"], ["get", "mep", "-o", "wide"]):
        header = fresh.kubectl("-n", TEAM, *args).stdout.splitlines()[0].split()
        documented = [
            line.split()
            for line in docs.splitlines()
            if line.startswith("NAME ") and line.split()[:2] == ["NAME", "READY"]
        ]
        assert header in documented, f"`kubectl {' '.join(args)}` header {header} not in docs"


def test_helm_upgrade_with_a_new_pool_rolls_the_operator(fresh: Fresh, installed: str) -> None:
    before = fresh.get("-n", NAMESPACE, "deployment", FULLNAME)
    config_before = fresh.get("-n", NAMESPACE, "configmap", f"{FULLNAME}-config")
    assert before["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pools = values["config"]["pools"] + [
        {
            "name": "ondemand-a100",
            "tier": "on-demand",
            "gpuProduct": "NVIDIA-A100-SXM4-40GB",
            "gpuMemoryGiB": 40,
            "gpusPerNode": 8,
            "nodeSelector": {"magistral.dev/pool": "ondemand-a100"},
        }
    ]
    done = fresh.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
        "--set-json", f"config.pools={json.dumps(pools)}", "--wait", "--timeout=120s",
    )  # fmt: skip
    assert "STATUS: deployed" in done.stdout
    assert "REVISION: 2" in done.stdout

    config_after = fresh.get("-n", NAMESPACE, "configmap", f"{FULLNAME}-config")
    assert "ondemand-a100" in config_after["data"]["config.yaml"]
    assert "ondemand-a100" not in config_before["data"]["config.yaml"]

    def rolled() -> dict[str, Any] | None:
        after = fresh.get("-n", NAMESPACE, "deployment", FULLNAME)
        revision = after["metadata"]["annotations"].get("deployment.kubernetes.io/revision")
        return after if revision == "2" else None

    after = wait_for("the Deployment to roll to a second ReplicaSet", rolled, timeout=30)
    annotations = lambda d: d["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(after)["checksum/config"] != annotations(before)["checksum/config"]
    assert after["spec"]["replicas"] == 0  # --reuse-values kept replicas=0
    sets = fresh.get("-n", NAMESPACE, "replicasets", "-l", "app.kubernetes.io/instance=" + RELEASE)
    assert len(sets["items"]) == 2

    # An upgrade that changes nothing the operator reads does not roll it.
    fresh.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
               "--set", "podAnnotations=null", "--wait")  # fmt: skip
    time.sleep(1)
    same = fresh.get("-n", NAMESPACE, "deployment", FULLNAME)
    assert same["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"


def test_helm_uninstall_keeps_the_crd_and_every_endpoint(
    fresh: Fresh, installed: str, release_operator: OperatorProcess
) -> None:
    release_operator.stop()
    assert fresh.exists("-n", TEAM, "mep", "magistral-small")
    fresh.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    assert fresh.exists("crd", CRD), "the CRD went with the release"
    assert fresh.exists("-n", TEAM, "mep", "magistral-small"), "an endpoint went with the release"
    assert not fresh.exists("clusterrole", FULLNAME)
    assert not fresh.exists("-n", NAMESPACE, "deployment", FULLNAME)
    assert not fresh.exists("-n", NAMESPACE, "serviceaccount", FULLNAME)


def test_reinstall_adopts_the_kept_crd_and_only_an_unannotated_crd_is_deleted(
    fresh: Fresh, installed: str
) -> None:
    # The kept CRD still carries the release's ownership annotations: a new install adopts it.
    fresh.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "replicas=0",
               "--set", "crds.keep=false", "--wait")  # fmt: skip
    # Adoption merges into the live object and never removes a field, so crds.keep=false does
    # not take the kept annotation away (docs/install.md: "Uninstall").
    crd = fresh.get("crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    fresh.kubectl("annotate", "crd", CRD, "helm.sh/resource-policy-")
    assert fresh.exists("-n", TEAM, "mep", "magistral-small")
    fresh.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait")
    wait_for("the CRD to be deleted", lambda: not fresh.exists("crd", CRD), timeout=60)
    assert not fresh.exists("-n", TEAM, "mep", "magistral-small")  # endpoints went with it
