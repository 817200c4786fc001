"""References an endpoint does not own, through a reconcile pass against an in-memory API.

ConfigMaps and PVCs are read before any pod is created: a missing one (or a missing key)
gives Degraded=ReferenceNotFound naming the field, and no Deployment. Secrets are never
read: the kubelet's CreateContainerConfigError on a pod is mapped back to the field.
"""

from __future__ import annotations

from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.labels import ENDPOINT_LABEL, POOL_LABEL
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.references import endpoint_references, secret_problem
from tests.unit.fake_kube import FakeKube, ScriptedDemand

from .conftest import endpoint_from_spec

NS, NAME = "ns", "ep"


def _kube(spec: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    kube.add(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": NAME, "namespace": NS, "uid": "u", "generation": 1},
            "spec": spec,
        }
    )
    return kube


def _pass(kube: FakeKube, config: OperatorConfig) -> Any:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return reconcile(kube, config, body, demand=ScriptedDemand(), refusals=RefusalBook())


def _degraded(kube: FakeKube) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return next(c for c in body["status"]["conditions"] if c["type"] == "Degraded")


PROMPT = {"systemPrompt": {"mode": "custom", "configMapRef": {"name": "p", "key": "text"}}}


@pytest.mark.parametrize(
    ("objects", "fragment"),
    [
        ([], "ConfigMap 'p' does not exist"),
        ([{"kind": "ConfigMap", "metadata": {"name": "p", "namespace": NS}, "data": {}}], "no key"),
    ],
)
def test_missing_configmap_or_key_holds_every_child(
    operator_config: OperatorConfig, objects: list[dict[str, Any]], fragment: str
) -> None:
    kube = _kube({"inference": PROMPT, "auth": {"disabled": True}})
    for obj in objects:
        kube.add(obj)
    outcome = _pass(kube, operator_config)
    assert outcome.problem is not None
    degraded = _degraded(kube)
    assert (degraded["status"], degraded["reason"]) == ("True", "ReferenceNotFound")
    assert "spec.inference.systemPrompt.configMapRef" in degraded["message"]
    assert fragment in degraded["message"]
    assert [w for w in kube.writes if w[0] == "apply"] == []


def test_existing_configmap_lets_the_endpoint_deploy(operator_config: OperatorConfig) -> None:
    kube = _kube({"inference": PROMPT, "auth": {"disabled": True}})
    kube.add(
        {"kind": "ConfigMap", "metadata": {"name": "p", "namespace": NS}, "data": {"text": "x"}}
    )
    outcome = _pass(kube, operator_config)
    assert outcome.problem is None
    assert any(label.startswith("Deployment/") for verb, label in kube.writes if verb == "apply")


def test_missing_pvc_holds_every_child(operator_config: OperatorConfig) -> None:
    kube = _kube({"model": {"source": {"pvc": {"claimName": "w"}}}, "auth": {"disabled": True}})
    _pass(kube, operator_config)
    degraded = _degraded(kube)
    assert degraded["reason"] == "ReferenceNotFound"
    assert "spec.model.source.pvc: PersistentVolumeClaim 'w' does not exist" in degraded["message"]


def _kubelet_pod(message: str) -> dict[str, Any]:
    # The shape a kubelet reports for a container whose Secret reference does not resolve.
    return {
        "kind": "Pod",
        "metadata": {
            "name": f"{NAME}-reserved-h100-abc",
            "namespace": NS,
            "labels": {
                ENDPOINT_LABEL: NAME,
                POOL_LABEL: "reserved-h100",
                "app.kubernetes.io/component": "inference",
            },
        },
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": [
                {
                    "name": "vllm",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {"reason": "CreateContainerConfigError", "message": message}
                    },
                }
            ],
        },
    }


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ('secret "api-key" not found', "Secret 'api-key' does not exist"),
        ("couldn't find key token in Secret ns/api-key", "has no key 'token'"),
    ],
)
def test_kubelet_report_of_a_missing_secret_names_the_field(
    operator_config: OperatorConfig, message: str, fragment: str
) -> None:
    kube = _kube({"auth": {"apiKeySecretRef": {"name": "api-key", "key": "token"}}})
    _pass(kube, operator_config)  # no Secret read: the pods are created
    assert not [label for kind, label in kube.writes if "Secret" in label]
    kube.add(_kubelet_pod(message))
    _pass(kube, operator_config)
    degraded = _degraded(kube)
    assert (degraded["status"], degraded["reason"]) == ("True", "ReferenceNotFound")
    assert "spec.auth.apiKeySecretRef" in degraded["message"]
    assert fragment in degraded["message"]


def test_other_secrets_are_not_blamed() -> None:
    endpoint = endpoint_from_spec({"auth": {"apiKeySecretRef": {"name": "mine", "key": "k"}}})
    refs = endpoint_references(endpoint)
    assert secret_problem('secret "someone-else" not found', refs) is None
    assert secret_problem("couldn't find key k in Secret ns/mine", refs) is not None
