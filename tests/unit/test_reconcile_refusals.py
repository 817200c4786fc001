"""A reconcile pass against an in-memory API: children the API server refuses.

The endpoint gets Degraded=True (ChildRefused) quoting the server, the other children are
still applied, the refused one is retried with back-off (not on every pass), a changed spec is
tried at once, and the endpoint recovers when the spec is fixed. An unexpected failure of a
pass is reported as Degraded=ReconcileError, written once.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.handlers.reconcile import reconcile, report_failure
from magistral_operator.handlers.refusals import RefusalBook, refusal_backoff
from magistral_operator.kube.client import KubeError
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NS, NAME = "ns", "ep"
REFUSAL = (
    'ConfigMap.v1 "ep-runtime-0123456789" is invalid: '
    "data: Too long: must have at most 1048576 bytes"
)


def _endpoint(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _conditions(kube: FakeKube) -> dict[str, dict[str, Any]]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}


def _pass(kube: FakeKube, config: OperatorConfig, book: RefusalBook, clock: Clock) -> Any:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return reconcile(kube, config, body, demand=ScriptedDemand(), refusals=book, clock=clock)


def _runtime_config_map(kube: FakeKube) -> str:
    """Kind/name of the revision's runtime ConfigMap, as the engine Deployment mounts it."""
    dep = kube.get("Deployment", namespace=NS, name=f"{NAME}-reserved-h100")
    assert dep is not None
    (name,) = [
        v["configMap"]["name"]
        for v in dep["spec"]["template"]["spec"]["volumes"]
        if "configMap" in v
    ]
    assert name.startswith(f"{NAME}-runtime-")
    return f"ConfigMap/{name}"


def _refuse_configmaps(obj: dict[str, Any]) -> tuple[int, str] | None:
    if obj["kind"] == "ConfigMap":
        return 422, REFUSAL
    return None


@pytest.fixture
def setup(operator_config: OperatorConfig) -> tuple[FakeKube, RefusalBook, Clock]:
    kube = FakeKube(refuse=_refuse_configmaps)
    kube.add(_endpoint({"auth": {"disabled": True}}))
    return kube, RefusalBook(), Clock()


def test_refused_child_degrades_and_others_are_applied(
    setup: tuple[FakeKube, RefusalBook, Clock], operator_config: OperatorConfig
) -> None:
    kube, book, clock = setup
    outcome = _pass(kube, operator_config, book, clock)
    assert outcome.refused == [_runtime_config_map(kube)]
    applied_kinds = {label.split("/")[0] for verb, label in kube.writes if verb == "apply"}
    assert {"Deployment", "Service"} <= applied_kinds
    degraded = _conditions(kube)["Degraded"]
    assert degraded["status"] == "True"
    assert degraded["reason"] == "ChildRefused"
    assert REFUSAL in degraded["message"]
    assert _runtime_config_map(kube) in degraded["message"]


def test_refused_child_is_held_then_retried_with_backoff(
    setup: tuple[FakeKube, RefusalBook, Clock], operator_config: OperatorConfig
) -> None:
    kube, book, clock = setup
    _pass(kube, operator_config, book, clock)
    runtime = _runtime_config_map(kube)
    assert kube.writes.count(("refused", runtime)) == 1
    writes_before = len(kube.writes)
    clock.now += refusal_backoff(1) - 1
    outcome = _pass(kube, operator_config, book, clock)  # still in back-off: not sent
    assert outcome.refused == [runtime]  # but still reported
    assert kube.writes[writes_before:] == []  # and nothing written: status unchanged
    clock.now += 2
    _pass(kube, operator_config, book, clock)  # back-off over: tried again, refused again
    assert kube.writes.count(("refused", runtime)) == 2
    clock.now += refusal_backoff(1) + 1  # the second refusal waits longer
    _pass(kube, operator_config, book, clock)
    assert kube.writes.count(("refused", runtime)) == 2
    assert refusal_backoff(2) > refusal_backoff(1)


def test_fixed_spec_is_tried_at_once_and_recovers(
    setup: tuple[FakeKube, RefusalBook, Clock], operator_config: OperatorConfig
) -> None:
    kube, book, clock = setup
    _pass(kube, operator_config, book, clock)
    kube.refuse = None  # the cause is gone; the spec changes (a new content hash)
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    body["spec"]["runtime"] = {"maxModelLen": 32768}
    body["metadata"]["generation"] = 2
    kube.add(body)
    outcome = _pass(kube, operator_config, book, clock)  # same clock: no back-off wait
    assert outcome.refused == []
    assert ("apply", _runtime_config_map(kube)) in kube.writes
    assert _conditions(kube)["Degraded"]["reason"] != "ChildRefused"


def test_unexpected_failure_is_reported_once(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    kube.add(_endpoint({"auth": {"disabled": True}}))
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    error = KubeError(status=503, method="GET", path="/x", body='{"message":"etcd is down"}')
    assert report_failure(kube, body, error) is True
    degraded = _conditions(kube)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ReconcileError")
    assert "etcd is down" in degraded["message"]
    again = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert again is not None
    assert report_failure(kube, copy.deepcopy(again), error) is False  # no second write


@pytest.mark.parametrize(
    ("status", "message", "gone"),
    [
        (404, 'namespaces "t-1" not found', True),
        (
            403,
            'services "x" is forbidden: unable to create new content in namespace t-1 '
            "because it is being terminated",
            True,
        ),
        (404, 'configmaps "p" not found', False),
        (403, 'services "x" is forbidden: exceeded quota: no-lb', False),
    ],
)
def test_a_vanished_namespace_is_not_a_failure(status: int, message: str, gone: bool) -> None:
    from magistral_operator.handlers.operator import namespace_gone

    error = KubeError(
        status=status, method="PATCH", path="/x", body=json.dumps({"message": message})
    )
    assert namespace_gone(error) is gone


@pytest.mark.parametrize(
    ("message", "gone"),
    [
        ('magistralendpoints.magistral.dev "ep" not found', True),
        ('magistralendpoints.magistral.dev "other" not found', False),
        ('configmaps "ep" not found', False),
    ],
)
def test_an_endpoint_deleted_during_its_pass_is_not_a_failure(message: str, gone: bool) -> None:
    from magistral_operator.handlers.operator import endpoint_gone

    error = KubeError(status=404, method="PATCH", path="/x", body=json.dumps({"message": message}))
    assert endpoint_gone(error, "ep") is gone
