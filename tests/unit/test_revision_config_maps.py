"""Every input of a pod is part of its revision: one immutable runtime ConfigMap per revision.

A table for the prune rule (pure), and reconcile passes against an in-memory API in which a
small stand-in for the Deployment controller keeps ReplicaSets: revision A healthy, revision B
differs only in its runtime config (sampling defaults) and crash-loops; the rollback restores
A's pod template, which mounts A's ConfigMap, still there with A's content, also for a pod
added by a scale-up; B's ConfigMap is kept while a ReplicaSet of B exists, and each old
revision's ConfigMap is pruned once the last ReplicaSet that mounts it is gone.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.kube.children import config_maps_in_template, config_maps_to_prune
from magistral_operator.render.hashing import content_hash
from magistral_operator.rollout import RESTART_THRESHOLD
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NS, NAME = "ns", "ep"
REVISION = "magistral.dev/revision"
POOL = "magistral.dev/pool"


def _template(*config_maps: str, env_ref: str | None = None) -> dict[str, Any]:
    volumes = [{"name": f"v{i}", "configMap": {"name": n}} for i, n in enumerate(config_maps)]
    container: dict[str, Any] = {"name": "vllm"}
    if env_ref:
        container["env"] = [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": env_ref}}}]
    return {"spec": {"volumes": volumes, "containers": [container]}}


PROJECTED = {
    "spec": {
        "volumes": [{"name": "p", "projected": {"sources": [{"configMap": {"name": "ep-rt-p"}}]}}],
        "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "ep-rt-i"}}]}],
    }
}

# (case, live ConfigMaps, current, templates of live Deployments/ReplicaSets, pruned)
PRUNE_RULE = [
    ("steady: the current one only", ["ep-rt-a"], {"ep-rt-a"}, [_template("ep-rt-a")], []),
    ("rolled back: A mounted, B current", ["ep-rt-a", "ep-rt-b"], {"ep-rt-b"},
     [_template("ep-rt-a"), _template("ep-rt-b")], []),
    ("an old ReplicaSet still mounts it", ["ep-rt-a", "ep-rt-c"], {"ep-rt-c"},
     [_template("ep-rt-c"), _template("ep-rt-a")], []),
    ("its last ReplicaSet is gone", ["ep-rt-a", "ep-rt-b", "ep-rt-c"], {"ep-rt-c"},
     [_template("ep-rt-c"), _template("ep-rt-a")], ["ep-rt-b"]),
    ("current but not mounted yet (the Deployment comes next)", ["ep-rt-d"], {"ep-rt-d"}, [], []),
    ("nothing mounts anything", ["ep-rt-a", "ep-rt-b"], set(), [], ["ep-rt-a", "ep-rt-b"]),
    ("the shared ConfigMap of an older operator, still mounted", ["ep-runtime", "ep-rt-a"],
     {"ep-rt-a"}, [_template("ep-rt-a"), _template("ep-runtime")], []),
    ("the shared ConfigMap of an older operator, no longer mounted", ["ep-runtime", "ep-rt-a"],
     {"ep-rt-a"}, [_template("ep-rt-a")], ["ep-runtime"]),
    ("env and projected references count", ["ep-rt-e", "ep-rt-p", "ep-rt-i", "ep-rt-x"],
     set(), [_template(env_ref="ep-rt-e"), PROJECTED], ["ep-rt-x"]),
    ("a template without volumes", ["ep-rt-a"], set(), [{"spec": {}}, {}], ["ep-rt-a"]),
]  # fmt: skip


@pytest.mark.parametrize("row", PRUNE_RULE, ids=[r[0] for r in PRUNE_RULE])
def test_prune_rule(row: tuple[Any, ...]) -> None:
    _, live, current, templates, pruned = row
    assert config_maps_to_prune(live, current=current, templates=templates) == pruned


def test_config_maps_in_template() -> None:
    assert config_maps_in_template(PROJECTED) == {"ep-rt-p", "ep-rt-i"}
    assert config_maps_in_template(_template("a", "b", env_ref="c")) == {"a", "b", "c"}


# --- reconcile passes ---------------------------------------------------------------------


def _endpoint(temperature: float, *, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": {
            "scaling": {"minReplicas": replicas, "maxReplicas": replicas},
            "auth": {"disabled": True},
            "inference": {"sampling": {"temperature": temperature}},
            # The plain health-gated rollout (the canary has tests of its own).
            "rollout": {"canary": {"enabled": False}},
        },
    }


def _set_spec(kube: FakeKube, temperature: float, *, replicas: int = 1) -> None:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    body["spec"] = _endpoint(temperature, replicas=replicas)["spec"]
    body["metadata"]["generation"] += 1
    kube.add(body)


def _pass(kube: FakeKube, config: OperatorConfig) -> list[tuple[str, str]]:
    """One reconcile; the writes it made to children (not status, not Events)."""
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    before = len(kube.writes)
    reconcile(kube, config, body, demand=ScriptedDemand(), refusals=RefusalBook())
    return [w for w in kube.writes[before:] if w[0] in ("apply", "delete")]


def _engines(kube: FakeKube) -> list[dict[str, Any]]:
    return kube.list(
        "Deployment", namespace=NS, selector=f"magistral.dev/endpoint={NAME},"
        "app.kubernetes.io/component=inference"
    )  # fmt: skip


def _rollout(kube: FakeKube) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return dict(body["status"]["rollout"])


def _mounted(template: dict[str, Any]) -> str:
    (name,) = config_maps_in_template(template)
    return name


def _config_map(kube: FakeKube, name: str) -> dict[str, Any] | None:
    return kube.get("ConfigMap", namespace=NS, name=name)


def _controller(kube: FakeKube, *, crash: str | None = None) -> None:
    """The Deployment controller, roughly: a ReplicaSet per distinct pod template of each
    engine Deployment (an old one taken back gets the newest number, as `rollout undo` does),
    the Deployment all updated and available, and its pods of the template's revision; with
    `crash`, that revision's pods crash-loop instead (and the Deployment makes no progress)."""
    sets = kube.list("ReplicaSet", namespace=NS, selector=f"magistral.dev/endpoint={NAME}")
    number = max(
        [int(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) for rs in sets],
        default=0,
    )
    for pod in kube.list("Pod", namespace=NS, selector=f"magistral.dev/endpoint={NAME}"):
        kube.objects.pop(("Pod", NS, pod["metadata"]["name"]))
    for dep in _engines(kube):
        template = copy.deepcopy(dep["spec"]["template"])
        digest = content_hash(template, length=8)
        name = f"{dep['metadata']['name']}-{digest}"
        number += 1  # the Deployment's template is its newest revision
        labels = {**template["metadata"]["labels"], "pod-template-hash": digest}
        template["metadata"]["labels"] = labels
        kube.add(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": labels,
                    "annotations": {"deployment.kubernetes.io/revision": str(number)},
                },
                "spec": {"template": template},
            }
        )
        replicas = int(dep["spec"]["replicas"])
        revision = labels[REVISION]
        failing = revision == crash
        dep["status"] = {
            "observedGeneration": 0,
            "replicas": replicas,
            "updatedReplicas": 0 if failing else replicas,
            "availableReplicas": 0 if failing else replicas,
        }
        kube.add(dep)
        for i in range(replicas):
            status: dict[str, Any] = {"phase": "Running", "podIP": "127.0.0.9"}
            if failing:
                status["containerStatuses"] = [
                    {
                        "name": "vllm",
                        "restartCount": RESTART_THRESHOLD,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    }
                ]
            else:
                status["conditions"] = [{"type": "Ready", "status": "True"}]
            kube.add(
                {
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{name}-{i}",
                        "namespace": NS,
                        "labels": labels,
                    },
                    "spec": copy.deepcopy(template["spec"]),
                    "status": status,
                }
            )


def _drop_replica_sets(kube: FakeKube, revision: str) -> None:
    """What revisionHistoryLimit does to a revision's old ReplicaSets."""
    for rs in kube.list("ReplicaSet", namespace=NS, selector=f"{REVISION}={revision}"):
        kube.objects.pop(("ReplicaSet", NS, rs["metadata"]["name"]))


def test_a_config_only_failure_is_rolled_back_with_its_config(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    kube.add(_endpoint(0.7))
    _pass(kube, operator_config)
    a = _rollout(kube)["currentRevision"]
    a_map = _mounted(_engines(kube)[0]["spec"]["template"])
    assert a_map == f"{NAME}-runtime-{a}"
    a_content = _config_map(kube, a_map)
    assert a_content is not None
    assert a_content["immutable"] is True
    _controller(kube)
    _pass(kube, operator_config)
    assert _rollout(kube)["phase"] == "Healthy"
    assert _pass(kube, operator_config) == []  # a steady endpoint writes nothing

    # B: only the runtime config differs (the sampling defaults in the ConfigMap).
    _set_spec(kube, 1.9)
    _pass(kube, operator_config)
    b = _rollout(kube)["currentRevision"]
    assert b != a
    b_map = f"{NAME}-runtime-{b}"
    b_template = _engines(kube)[0]["spec"]["template"]
    assert _mounted(b_template) == b_map
    b_content = _config_map(kube, b_map)
    assert b_content is not None
    assert b_content["data"] != a_content["data"]
    assert _config_map(kube, a_map) == a_content  # A's ReplicaSets mount it: kept, unchanged

    # B crash-loops: rolled back to A's template, which mounts A's ConfigMap.
    _controller(kube, crash=b)
    _pass(kube, operator_config)
    assert _rollout(kube)["phase"] == "RolledBack"
    for dep in _engines(kube):
        template = dep["spec"]["template"]
        assert template["metadata"]["labels"][REVISION] == a
        assert _mounted(template) == a_map
    assert _config_map(kube, a_map) == a_content
    assert _config_map(kube, b_map) == b_content  # current, and B's ReplicaSets mount it

    # A pod of A that restarts (here: every pod is recreated) and one a scale-up adds start
    # from A's template and so from A's config.
    _controller(kube)
    _set_spec(kube, 1.9, replicas=2)
    _pass(kube, operator_config)
    assert _rollout(kube) == {**_rollout(kube), "currentRevision": b, "phase": "RolledBack"}
    _controller(kube)
    pods = kube.list("Pod", namespace=NS, selector=f"{POOL}=reserved-h100")
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["labels"][REVISION] == a
        assert _mounted(pod) == a_map
    assert _config_map(kube, a_map) == a_content
    assert _pass(kube, operator_config) == []  # rolled back and settled: no writes

    # C rolls out and proves healthy; A's and B's ConfigMaps stay while their ReplicaSets do.
    _set_spec(kube, 0.3, replicas=2)
    _pass(kube, operator_config)
    c = _rollout(kube)["currentRevision"]
    _controller(kube)
    _pass(kube, operator_config)
    assert _rollout(kube)["phase"] == "Healthy"
    assert {_mounted(d["spec"]["template"]) for d in _engines(kube)} == {f"{NAME}-runtime-{c}"}
    assert _config_map(kube, a_map) == a_content
    assert _config_map(kube, b_map) == b_content

    # Kubernetes drops B's ReplicaSets: B's ConfigMap goes, A's stays.
    _drop_replica_sets(kube, b)
    assert _pass(kube, operator_config) == [("delete", f"ConfigMap/{b_map}")]
    assert _config_map(kube, a_map) == a_content
    _drop_replica_sets(kube, a)
    assert _pass(kube, operator_config) == [("delete", f"ConfigMap/{a_map}")]
    assert _config_map(kube, f"{NAME}-runtime-{c}") is not None
    assert _pass(kube, operator_config) == []


def test_the_shared_config_map_of_an_older_operator_goes_with_its_replica_sets(
    operator_config: OperatorConfig,
) -> None:
    """An endpoint from before per-revision ConfigMaps: its old ReplicaSets mount `<name>-
    runtime`; it stays until they are gone, the operator's own revision ConfigMap from then."""
    kube = FakeKube()
    kube.add(_endpoint(0.7))
    _pass(kube, operator_config)
    revision = _rollout(kube)["currentRevision"]
    old = copy.deepcopy(_config_map(kube, f"{NAME}-runtime-{revision}"))
    assert old is not None
    old["metadata"]["name"] = f"{NAME}-runtime"
    del old["immutable"]
    kube.add(old)
    rs = {
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{NAME}-reserved-h100-old",
            "namespace": NS,
            "labels": {"magistral.dev/endpoint": NAME, REVISION: "old"},
            "annotations": {"deployment.kubernetes.io/revision": "1"},
        },
        "spec": {"template": _template(f"{NAME}-runtime")},
    }
    kube.add(rs)
    assert _pass(kube, operator_config) == []
    _drop_replica_sets(kube, "old")
    assert _pass(kube, operator_config) == [("delete", f"ConfigMap/{NAME}-runtime")]
