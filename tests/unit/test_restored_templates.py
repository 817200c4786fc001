"""A rollback's templates on the rendered Deployments (handlers/decisions.with_restored_templates):
a pool that has a healthy template gets it; a pool Deployment that does not exist and has none
(the pool never ran the healthy revision) is held at zero replicas rather than created on the
failed revision; nothing changes when nothing is restored."""

from __future__ import annotations

from typing import Any

import pytest

from magistral_operator.api.labels import POOL_LABEL, REVISION_LABEL
from magistral_operator.api.status import RolloutStatus
from magistral_operator.handlers.decisions import with_restored_templates
from magistral_operator.kube.children import deferred_create
from magistral_operator.render.metadata import COMPONENT
from magistral_operator.rollout import RolloutDecision

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
