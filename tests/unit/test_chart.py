"""The Helm chart, rendered by the real helm binary: lint, CRD parity, values schema, the
operator pod's hardening, least-privilege RBAC and a comment on every value.

No cluster: `helm lint` and `helm template` only (the chart on a real API server is in
tests/cluster/test_chart.py).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from e2e.install import CHART, tool
from magistral_operator.api.config import load_operator_config, parse_operator_config
from magistral_operator.api.crd import CRD_FILE
from magistral_operator.api.values_schema import VALUES_SCHEMA_FILE, values_schema_json

from .conftest import EXAMPLES, ROOT

K8S_VERSION = "1.36.0"
RELEASE, NAMESPACE = "mo", "magistral-system"
FULLNAME = "mo-magistral-operator"
KEEP = "helm.sh/resource-policy"
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}

# Value variants every structural check runs against.
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "watchNamespaces": ["--set", "watchNamespaces={team-a,team-b}"],
    "leaderElection": ["--set", "leaderElection.enabled=true", "--set", "replicas=2"],
    "leaderElection-namespaced": [
        "--set",
        "leaderElection.enabled=true",
        "--set",
        "watchNamespaces={team-a}",
    ],
    "serviceMonitor": ["--set", "metrics.serviceMonitor.enabled=true"],
    "replicas-0": ["--set", "replicas=0"],
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("helm")), *args], capture_output=True, text=True, check=False, timeout=120
    )


@functools.cache
def template_text(*args: str) -> str:
    done = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(*args: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template_text(*args)) if d]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def strip_sources(text: str) -> str:
    """helm template's document separators and `# Source:` lines removed."""
    return "".join(
        line
        for line in text.splitlines(keepends=True)
        if line != "---\n" and not line.startswith("# Source: ")
    )


# --- lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict_passes(variant: str) -> None:
    done = helm("lint", "--strict", str(CHART), *VARIANTS[variant])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout, done.stdout
    assert "[ERROR]" not in done.stdout, done.stdout


# --- the CRD ------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd_plus_the_keep_annotation() -> None:
    rendered = strip_sources(template_text("--show-only", "templates/crds.yaml"))
    keep_block = f"  annotations:\n    {KEEP}: keep\n"
    assert keep_block in rendered
    committed = (ROOT / CRD_FILE).read_text()
    assert rendered.replace(keep_block, "", 1) == committed
    (crd,) = [d for d in yaml.safe_load_all(rendered) if d]
    assert crd["metadata"]["annotations"] == {KEEP: "keep"}
    del crd["metadata"]["annotations"]
    assert crd == yaml.safe_load(committed)


def test_crds_keep_false_renders_the_committed_crd_exactly() -> None:
    rendered = strip_sources(
        template_text("--show-only", "templates/crds.yaml", "--set", "crds.keep=false")
    )
    assert rendered == (ROOT / CRD_FILE).read_text()
    assert KEEP not in rendered


def test_crds_disabled_renders_no_crd() -> None:
    kinds = {o["kind"] for o in render("--set", "crds.enabled=false")}
    assert "CustomResourceDefinition" not in kinds
    assert "Deployment" in kinds
    assert "CustomResourceDefinition" in {o["kind"] for o in render()}


# --- values and their schema ----------------------------------------------------------------


def test_values_schema_is_generated() -> None:
    committed = (ROOT / VALUES_SCHEMA_FILE).read_text()
    assert committed == values_schema_json(), "values.schema.json is stale: run `make crds`"


def test_default_values_satisfy_the_schema() -> None:
    schema = json.loads((ROOT / VALUES_SCHEMA_FILE).read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)


BAD_VALUES: dict[str, tuple[str, list[str]]] = {
    # name: (what helm's error must name, arguments)
    "tier cheap": (
        "/config/pools/0/tier",
        ["--set", "config.pools[0].tier=cheap"],
    ),
    "pool without gpuMemoryGiB": (
        "/config/pools/0",
        [
            "--set-json",
            'config.pools=[{"name":"a","tier":"spot","gpuProduct":"X","gpusPerNode":8}]',
        ],
    ),
    "pool name not a DNS label": (
        "/config/pools/0/name",
        ["--set", "config.pools[0].name=Big_Pool"],
    ),
    "negative replicas": ("/replicas", ["--set", "replicas=-1"]),
    "two replicas without leader election": ("/leaderElection", ["--set", "replicas=2"]),
    "two replicas, leader election off": (
        "/leaderElection/enabled",
        ["--set", "replicas=2", "--set", "leaderElection.enabled=false"],
    ),
    "unknown value": ("'replica'", ["--set", "replica=2"]),
    "pull policy": ("/image/pullPolicy", ["--set", "image.pullPolicy=Sometimes"]),
    "namespace name": ("/watchNamespaces/0", ["--set", "watchNamespaces={Team_A}"]),
    "no limits": ("limits", ["--set", "resources.limits=null"]),
    "metrics port": ("/metrics/port", ["--set", "metrics.port=70000"]),
    "log level": ("/logLevel", ["--set", "logLevel=loud"]),
    "log format": ("/logFormat", ["--set", "logFormat=xml"]),
    "safety factor": ("/config/startup/safetyFactor", ["--set", "config.startup.safetyFactor=0.5"]),
    "unknown config key": ("'defaultimage'", ["--set", "config.defaultimage=x"]),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values_naming_the_field(case: str) -> None:
    field, args = BAD_VALUES[case]
    done = helm("template", RELEASE, str(CHART), *args)
    assert done.returncode != 0, f"{case}: accepted"
    assert "don't meet the specifications of the schema" in done.stderr, done.stderr
    assert field in done.stderr, done.stderr


def test_schema_accepts_several_replicas_with_leader_election() -> None:
    deployment = only(render(*VARIANTS["leaderElection"]), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-5:] == [
        "--leader-elect",
        f"--leader-elect-lease-name={FULLNAME}",
        "--lease-duration=15",
        "--renew-deadline=10",
        "--retry-period=2",
    ]
    # Each replica's identity is its pod name; the Lease lives in the pod's namespace.
    env = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_standalone_operator_has_no_election_and_never_overlaps() -> None:
    deployment = only(render(), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--leader-elect") for a in container["args"])
    assert [e["name"] for e in container["env"]] == [  # no identity
        "MAGISTRAL_SPEC_WORKERS",
        "MAGISTRAL_LOG_LEVEL",
        "MAGISTRAL_LOG_FORMAT",
    ]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_rendered_operator_config_is_the_example_config() -> None:
    config_map = only(render(), "ConfigMap")
    rendered = parse_operator_config(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert rendered == load_operator_config(EXAMPLES / "operator-config.yaml")


def value_lines() -> tuple[list[str], yaml.MappingNode]:
    text = (CHART / "values.yaml").read_text()
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode)
    return text.splitlines(), root


def comment_block(lines: list[str], line: int) -> list[str]:
    """The contiguous comment lines right above `line` (0-based), top first."""
    block: list[str] = []
    i = line - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        block.insert(0, lines[i].strip())
        i -= 1
    return block


def keys(node: yaml.Node, path: str = "") -> list[tuple[str, yaml.ScalarNode, yaml.Node]]:
    """(dotted path, key node, value node) of every mapping key outside sequences."""
    out = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{path}.{key.value}" if path else key.value
            out.append((dotted, key, value))
            out += keys(value, dotted)
    return out


def test_every_value_has_a_comment() -> None:
    lines, root = value_lines()
    missing, documented_items = [], 0
    for path, key, value in keys(root):
        block = comment_block(lines, key.start_mark.line)
        if not block or not block[0].startswith("# --"):
            missing.append(path)
            continue
        # Lists of objects (the GPU pools): the comment names every field their items use.
        if isinstance(value, yaml.SequenceNode):
            text = " ".join(block)
            for item in value.value:
                if isinstance(item, yaml.MappingNode):
                    for field, _ in item.value:
                        assert re.search(rf"\b{field.value}\b", text), f"{path}[].{field.value}"
                        documented_items += 1
    assert missing == [], f"values without a `# --` comment: {missing}"
    assert documented_items > 0


def test_the_comment_check_can_fail() -> None:
    lines = ["# -- Documented.", "a: 1", "b: 2"]
    assert comment_block(lines, 1) == ["# -- Documented."]
    assert comment_block(lines, 2) == []


def test_values_and_schema_cover_the_same_keys() -> None:
    schema = json.loads((ROOT / VALUES_SCHEMA_FILE).read_text())
    _, root = value_lines()

    def schema_has(path: str) -> bool:
        node = schema
        for part in path.split("."):
            props = node.get("properties") or {}
            if part not in props:
                return node.get("additionalProperties", True) is not False
            node = props[part]
        return True

    for path, _, _ in keys(root):
        assert schema_has(path), f"{path} is in values.yaml but not in values.schema.json"
    assert set(schema["properties"]) == {key.value for key, _ in root.value}


# --- the operator Deployment ----------------------------------------------------------------


def test_operator_pod_is_hardened() -> None:
    deployment = only(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod.get("hostNetwork") is not True
    assert pod.get("hostPID") is not True
    (container,) = pod["containers"]
    sec = container["securityContext"]
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["readOnlyRootFilesystem"] is True
    assert sec["runAsNonRoot"] is True
    assert sec["capabilities"] == {"drop": ["ALL"]}
    assert sec["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sec.get("privileged") is not True
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) == {"cpu", "memory"}, resources
    # A writable /tmp is the only writable path (the root filesystem is read-only).
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/magistral-operator"]["readOnly"] is True
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])


def test_liveness_probe_is_kopfs_healthz() -> None:
    deployment = only(render("--set", "healthPort=9099"), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[probe["port"]] == 9099
    assert "--liveness=http://0.0.0.0:9099/healthz" in container["args"]


def test_operator_reads_the_rendered_config() -> None:
    objects = render()
    deployment, config_map = only(objects, "Deployment"), only(objects, "ConfigMap")
    pod = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (container,) = pod["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert f"--config={mount['mountPath']}/config.yaml" in container["args"]
    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]


def checksum(*args: str) -> str:
    deployment = only(render(*args), "Deployment")
    value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    return value


def test_a_config_change_rolls_the_operator_and_nothing_else_does() -> None:
    base = checksum()
    assert checksum() == base  # deterministic: GitOps re-renders change nothing
    assert checksum("--set", "config.sizing.perGpuOverheadGiB=3") != base
    assert checksum("--set", "replicas=0") == base


def test_watch_namespaces_become_operator_arguments() -> None:
    deployment = only(render(*VARIANTS["watchNamespaces"]), "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


@pytest.mark.parametrize(
    ("variant", "workers"),
    [("default", "8"), ("leaderElection", "8"), ("specWorkers", "32")],
)
def test_spec_workers_become_the_operators_environment(variant: str, workers: str) -> None:
    args = ["--set", "specWorkers=32"] if variant == "specWorkers" else VARIANTS[variant]
    deployment = only(render(*args), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MAGISTRAL_SPEC_WORKERS"] == {"name": "MAGISTRAL_SPEC_WORKERS", "value": workers}
    assert ("POD_NAME" in env) is (variant == "leaderElection")


def test_log_level_and_format_become_the_operators_environment() -> None:
    (default,) = only(render(), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in default["env"]}
    assert (env["MAGISTRAL_LOG_LEVEL"], env["MAGISTRAL_LOG_FORMAT"]) == ("info", "text")
    args = ["--set", "logLevel=debug", "--set", "logFormat=json"]
    (chosen,) = only(render(*args), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in chosen["env"]}
    assert (env["MAGISTRAL_LOG_LEVEL"], env["MAGISTRAL_LOG_FORMAT"]) == ("debug", "json")


def test_replicas_zero_keeps_everything_but_the_running_operator() -> None:
    default, paused = render(), render(*VARIANTS["replicas-0"])
    assert only(paused, "Deployment")["spec"]["replicas"] == 0
    assert sorted(o["kind"] for o in paused) == sorted(o["kind"] for o in default)


def test_metrics_service_and_service_monitor_select_the_operator() -> None:
    objects = render(*VARIANTS["serviceMonitor"])
    deployment, service = only(objects, "Deployment"), only(objects, "Service")
    monitor = only(objects, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (port,) = service["spec"]["ports"]
    assert port["name"] == monitor["spec"]["endpoints"][0]["port"]
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert port["targetPort"] in container_ports
    assert "ServiceMonitor" not in {o["kind"] for o in render()}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid_kubernetes(variant: str) -> None:
    for obj in render(*VARIANTS[variant]):
        if obj["kind"] == "ServiceMonitor":
            continue  # a Prometheus Operator CRD, not in the Kubernetes schemas
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- RBAC ---------------------------------------------------------------------------------


def rules_of(objects: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (o["kind"], o["metadata"].get("namespace", ""), rule)
        for o in objects
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o["rules"]
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rbac_is_least_privilege(variant: str) -> None:
    rules = rules_of(render(*VARIANTS[variant]))
    assert rules
    for kind, _, rule in rules:
        where = f"{kind} rule {rule}"
        assert "nonResourceURLs" not in rule, where
        assert "resourceNames" not in rule or rule["resourceNames"], where
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in item for item in rule[field]), f"wildcard in {where}"
        assert not FORBIDDEN_VERBS & set(rule["verbs"]), where
        resources = {r.split("/")[0] for r in rule["resources"]}
        assert "secrets" not in resources, where
        # Nothing that reads into or runs in pods, nor other identities. RBAC only as each
        # endpoint's router needs it: namespaced Roles and RoleBindings, created and patched,
        # never escalated or bound beyond what the operator holds (the API server checks).
        assert not {"pods/exec", "pods/attach", "pods/portforward", "pods/proxy"} & set(
            rule["resources"]
        ), where
        assert "certificates.k8s.io" not in rule["apiGroups"], where
        if "rbac.authorization.k8s.io" in rule["apiGroups"]:
            assert rule["apiGroups"] == ["rbac.authorization.k8s.io"], where
            assert sorted(rule["resources"]) == ["rolebindings", "roles"], where
            # list + watch: the operator's caches of its children (kube/cached.py).
            assert sorted(rule["verbs"]) == ["create", "get", "list", "patch", "watch"], where
        if "serviceaccounts" in resources:
            assert rule["resources"] == ["serviceaccounts"], where
            assert sorted(rule["verbs"]) == ["create", "get", "list", "patch", "watch"], where
        assert not {"nodes", "namespaces", "tokenreviews", "serviceaccounts/token"} & set(
            rule["resources"]
        ), where
        writes = set(rule["verbs"]) - {"get", "list", "watch"}
        if "customresourcedefinitions" in resources:
            assert not writes, f"CRDs are read-only: {where}"
        if "pods" in resources:
            assert not writes, f"pods are read-only: {where}"
        # Deletes only what the operator prunes itself: Deployments of pools no longer used and
        # revision ConfigMaps no ReplicaSet mounts any more (kube/children.py); everything else
        # goes with its owner. Never a deletecollection.
        assert "deletecollection" not in rule["verbs"], where
        if "delete" in rule["verbs"]:
            assert rule["resources"] in (["deployments"], ["configmaps"]), f"not pruned: {where}"
        if "configmaps" in resources:
            # get: a custom prompt's ConfigMap is checked to exist; list + delete: pruning;
            # list + watch: the cache of the operator's own (by label, kube/cached.py).
            assert rule["resources"] == ["configmaps"], where
            assert sorted(rule["verbs"]) == [
                "create",
                "delete",
                "get",
                "list",
                "patch",
                "watch",
            ], where


def test_all_namespaces_uses_one_cluster_role() -> None:
    objects = render()
    cluster_roles = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"}
    assert cluster_roles == {FULLNAME, f"{FULLNAME}-crd-reader"}
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    binding = next(
        o
        for o in objects
        if o["kind"] == "ClusterRoleBinding" and o["metadata"]["name"] == FULLNAME
    )
    (subject,) = binding["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}


def test_watch_namespaces_renders_roles_instead_of_the_cluster_role() -> None:
    objects = render(*VARIANTS["watchNamespaces"])
    cluster_roles = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"}
    assert cluster_roles == {f"{FULLNAME}-crd-reader"}  # only CRD discovery is cluster-wide
    roles = {
        (o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Role"
    }
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    assert roles == {("team-a", FULLNAME), ("team-b", FULLNAME)}
    assert {b["metadata"]["namespace"] for b in bindings} == {"team-a", "team-b"}
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"][0]["namespace"] == NAMESPACE
    default_rules = [r for k, _, r in rules_of(render()) if k == "ClusterRole"]
    role_rules = [r for k, ns, r in rules_of(objects) if k == "Role" and ns == "team-a"]
    assert role_rules == [
        r for r in default_rules if "customresourcedefinitions" not in r["resources"]
    ]


def test_leader_election_adds_only_a_lease_role_in_the_release_namespace() -> None:
    def lease_rules(variant: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (k, ns, r)
            for k, ns, r in rules_of(render(*VARIANTS[variant]))
            if "coordination.k8s.io" in r["apiGroups"]
        ]

    assert lease_rules("default") == []
    for variant in ("leaderElection", "leaderElection-namespaced"):
        (rule,) = lease_rules(variant)
        assert rule == (
            "Role",
            NAMESPACE,
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "create", "update"],
            },
        )


def test_service_account_can_be_brought_by_the_user() -> None:
    objects = render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=ops")
    assert "ServiceAccount" not in {o["kind"] for o in objects}
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    for binding in (o for o in objects if o["kind"].endswith("Binding")):
        assert binding["subjects"][0]["name"] == "ops"


def test_examples_values_files_are_valid(tmp_path: Path) -> None:
    """Helm values embedded in the GitOps examples satisfy the chart's schema."""
    schema = json.loads((ROOT / VALUES_SCHEMA_FILE).read_text())
    found = 0
    for path in sorted((ROOT / "examples" / "gitops").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            values = embedded_values(doc or {})
            if values is None:
                continue
            found += 1
            merged = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)
            jsonschema.validate(merged, schema)
            out = tmp_path / f"{path.stem}-{found}.yaml"
            out.write_text(yaml.safe_dump(values))
            done = helm("template", RELEASE, str(CHART), "-f", str(out))
            assert done.returncode == 0, f"{path}: {done.stderr}"
    assert found >= 2  # the Argo CD Application and the Flux HelmRelease


def embedded_values(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") == "Application":
        helm_source = (doc["spec"].get("source") or {}).get("helm") or {}
        values = helm_source.get("valuesObject")
        return dict(values) if values is not None else None
    if doc.get("kind") == "HelmRelease":
        values = doc["spec"].get("values")
        return dict(values) if values is not None else None
    return None


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
