"""A pass decides from one snapshot of the endpoint's pods: the rollout is judged and the
conditions are derived from the same pods, so a pod that changes during the pass cannot make
the conditions say something the rollout has not judged (a crash-looping pod of a new revision
flipping Degraded to ReplicasFailing one pass before the rollout fails on it: the fault
suite's positions 18, 22 and 51)."""

from __future__ import annotations

import copy
from typing import Any

from magistral_operator.api.config import OperatorConfig
from magistral_operator.autoscale.demand import DemandSample
from tests.unit.fake_kube import FakeKube, ScriptedDemand
from tests.unit.test_unreachable_replicas import E1, NAME, NS, ROUTER, _conditions, _pass


class ChangingPods(FakeKube):
    """Pods as stored on the first list of a pass; on any later list, the engine pod is
    crash-looping (it changed during the pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.pod_lists = 0

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        found = super().list(kind, namespace=namespace, selector=selector)
        if kind != "Pod":
            return found
        self.pod_lists += 1
        if self.pod_lists == 1:
            return found
        crashing = []
        for pod in copy.deepcopy(found):
            if pod["metadata"]["name"] == E1["metadata"]["name"]:
                pod["status"]["containerStatuses"] = [
                    {"restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                ]
            crashing.append(pod)
        return crashing


def test_the_conditions_come_from_the_pods_the_pass_judged(
    operator_config: OperatorConfig,
) -> None:
    kube = ChangingPods()
    kube.add(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
            "spec": {"scaling": {"minReplicas": 1, "maxReplicas": 1}, "auth": {"disabled": True}},
        }
    )
    for pod in (ROUTER, E1):
        kube.add(pod)
    status = _pass(kube, operator_config, ScriptedDemand(DemandSample(router_ok=True)))
    assert kube.pod_lists == 1  # one read of the pods per pass
    degraded = _conditions(status)["Degraded"]
    assert degraded[:2] == ("False", "AsExpected"), degraded
