"""A rollback's templates on the rendered Deployments (handlers/decisions.with_restored_templates):
a pool that has a healthy template gets it; a pool Deployment that does not exist and has none
(the pool never ran the healthy revision) is held at zero replicas rather than created on the
failed revision; nothing changes when nothing is restored. And the wiring: a reconcile pass in
which the failed revision overflowed into a pool the healthy one never ran keeps that pool's
replica through the rollback (handlers/reconcile.py passes the existing Deployments)."""

from __future__ import annotations

from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.labels import POOL_LABEL, REVISION_LABEL
from magistral_operator.api.status import RolloutStatus
from magistral_operator.handlers.decisions import with_restored_templates
from magistral_operator.kube.children import deferred_create
from magistral_operator.render.metadata import COMPONENT
from magistral_operator.rollout import RolloutDecision
from tests.unit import test_revision_config_maps as rcm
from tests.unit.fake_kube import FakeKube

FAILED, HEALTHY = "bbbbbbbbbb", "aaaaaaaaaa"
COMPONENT_LABEL = "app.kubernetes.io/component"


def _deployment(pool: str, replicas: int, *, component: str = COMPONENT) -> dict[str, Any]:
    labels = {POOL_LABEL: pool, COMPONENT_LABEL: component, REVISION_LABEL: FAILED}
    return {
        "kind": "Deployment",
        "metadata": {"name": f"ep-{pool}", "labels": labels},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"r": FAILED}}}},
    }


def _rendered() -> list[dict[str, Any]]:
    return [
        _deployment("reserved-h100", 2),
        _deployment("ondemand-h100", 1),  # overflow: placement puts a replica here
        _deployment("router", 2, component="router"),
        {"kind": "Service", "metadata": {"name": "ep", "labels": {}}, "spec": {}},
    ]


def _decision(templates: dict[str, dict[str, Any]]) -> RolloutDecision:
    state = RolloutStatus(
        current_revision=FAILED,
        phase="RolledBack",
        since="2026-12-01T00:00:00Z",
        last_healthy_revision=HEALTHY,
        failed_revision=FAILED,
    )
    return RolloutDecision(
        state=state, applied_revision=HEALTHY if templates else FAILED, templates=templates
    )


def _by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects}


HEALTHY_TEMPLATE = {"metadata": {"labels": {"r": HEALTHY}}}


@pytest.mark.parametrize(
    ("existing", "ondemand_replicas", "ondemand_template"),
    [
        # Never created: held at zero (so it is not created, kube/children.deferred_create).
        ((), 0, FAILED),
        # It exists (it ran before): left as rendered, as before this rule.
        (("ep-ondemand-h100",), 1, FAILED),
    ],
)
def test_a_pool_without_a_healthy_template_is_not_started_on_the_failed_revision(
    existing: tuple[str, ...], ondemand_replicas: int, ondemand_template: str
) -> None:
    out = _by_name(
        with_restored_templates(
            _rendered(), _decision({"reserved-h100": HEALTHY_TEMPLATE}), existing
        )
    )
    reserved = out["ep-reserved-h100"]
    assert reserved["spec"]["template"] == HEALTHY_TEMPLATE
    assert reserved["spec"]["replicas"] == 2
    assert reserved["metadata"]["labels"][REVISION_LABEL] == HEALTHY
    ondemand = out["ep-ondemand-h100"]
    assert ondemand["spec"]["replicas"] == ondemand_replicas
    assert ondemand["spec"]["template"]["metadata"]["labels"]["r"] == ondemand_template
    assert deferred_create(ondemand, None) is (ondemand_replicas == 0)
    assert out["ep-router"] == _rendered()[2]  # the router is no pool's: untouched
    assert out["ep"] == _rendered()[3]


def test_nothing_restored_nothing_changed() -> None:
    assert with_restored_templates(_rendered(), _decision({}), ()) == _rendered()


# --- the wiring: a reconcile pass hands the endpoint's Deployments to the rule ------------


def test_a_rollback_keeps_a_pool_the_failed_revision_started_in(
    operator_config: OperatorConfig,
) -> None:
    """Revision A runs on the reserved pool; B overflows one replica to the on-demand pool
    (whose Deployment is then created on B) and crash-loops. The rollback restores A's template
    on the reserved pool; the on-demand Deployment exists, has no template of A, and is left as
    rendered: its replica keeps its place (placement still assigns it), and Degraded names the
    pool it could not restore. A pass that did not tell the rule which Deployments exist
    would scale it to zero."""
    kube = FakeKube()
    kube.add(rcm._endpoint(0.7, replicas=2))
    rcm._pass(kube, operator_config)
    a = rcm._rollout(kube)["currentRevision"]
    rcm._controller(kube)
    rcm._pass(kube, operator_config)
    assert rcm._rollout(kube)["phase"] == "Healthy"
    ondemand = f"{rcm.NAME}-ondemand-h100"
    assert kube.get("Deployment", namespace=rcm.NS, name=ondemand) is None

    # B, and placement overflowed one replica to the on-demand pool meanwhile.
    rcm._set_spec(kube, 1.9, replicas=2)
    body = kube.get("MagistralEndpoint", namespace=rcm.NS, name=rcm.NAME)
    assert body is not None
    placement = body["status"]["placement"]
    placement["pools"] = [
        {**p, "replicas": {"reserved-h100": 1, "ondemand-h100": 1}.get(p["name"], 0)}
        for p in placement["pools"]
    ]
    kube.add(body)
    rcm._pass(kube, operator_config)
    b = rcm._rollout(kube)["currentRevision"]
    assert b != a
    created = kube.get("Deployment", namespace=rcm.NS, name=ondemand)
    assert created is not None
    assert created["spec"]["replicas"] == 1
    assert created["spec"]["template"]["metadata"]["labels"][rcm.REVISION] == b

    rcm._controller(kube, crash=b)
    rcm._pass(kube, operator_config)
    rollout = rcm._rollout(kube)
    assert rollout["phase"] == "RolledBack"
    reserved = kube.get("Deployment", namespace=rcm.NS, name=f"{rcm.NAME}-reserved-h100")
    assert reserved is not None
    assert reserved["spec"]["template"]["metadata"]["labels"][rcm.REVISION] == a
    kept = kube.get("Deployment", namespace=rcm.NS, name=ondemand)
    assert kept is not None
    assert kept["spec"]["replicas"] == 1, "the rollback scaled away a pool's running replica"
    body = kube.get("MagistralEndpoint", namespace=rcm.NS, name=rcm.NAME)
    assert body is not None
    (degraded,) = [c for c in body["status"]["conditions"] if c["type"] == "Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "RolloutFailed")
    assert f"pool ondemand-h100 keeps no ReplicaSet of revision {a}" in degraded["message"]
