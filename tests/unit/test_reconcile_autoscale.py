"""Reconcile passes against an in-memory API with a scripted demand read (the wiring).

The reconcile gives the reader the endpoint's engine and router pods, split by component;
the demand it reads sets the engine Deployment's replicas; a failed read holds them and is
reported in status.autoscaler; held requests at zero replicas scale to one with a
ScaledFromZero Event; the router Deployment, its RBAC and the Services are applied; no ready
router pod makes the endpoint not Ready (RouterUnavailable).
"""

from __future__ import annotations

from typing import Any

from magistral_operator.api.config import OperatorConfig
from magistral_operator.autoscale.demand import DemandSample, ReplicaLoad
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NS, NAME = "ns", "ep"
ENGINES = f"{NAME}-reserved-h100"


def _kube(scaling: dict[str, Any]) -> FakeKube:
    kube = FakeKube()
    kube.add(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
            "spec": {"scaling": scaling, "auth": {"disabled": True}},
        }
    )
    return kube


def _pod(name: str, component: str, *, ready: bool) -> dict[str, Any]:
    labels = {"magistral.dev/endpoint": NAME, "app.kubernetes.io/component": component}
    if component == "inference":
        labels["magistral.dev/pool"] = "reserved-h100"
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "labels": labels},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _pass(kube: FakeKube, config: OperatorConfig, demand: ScriptedDemand) -> None:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    reconcile(kube, config, body, demand=demand, refusals=RefusalBook())


def _replicas(kube: FakeKube, name: str = ENGINES) -> int:
    dep = kube.get("Deployment", namespace=NS, name=name)
    assert dep is not None, name
    return int(dep["spec"]["replicas"])


def _status(kube: FakeKube) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return dict(body.get("status") or {})


def _reasons(kube: FakeKube) -> list[str]:
    return [e["reason"] for e in kube.events]


def _ready(kube: FakeKube) -> dict[str, Any]:
    return next(c for c in _status(kube)["conditions"] if c["type"] == "Ready")


def test_the_reader_gets_the_pods_split_by_component(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 1, "maxReplicas": 4})
    kube.add(_pod("r-1", "router", ready=True))
    kube.add(_pod("e-1", "inference", ready=True))
    demand = ScriptedDemand()
    _pass(kube, operator_config, demand)
    assert demand.reads[0] == ((NS, NAME), ["r-1"], ["e-1"])


def test_demand_sets_the_engine_replicas(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 1, "maxReplicas": 8, "prefillTokensPerSecond": 10000})
    kube.add(_pod("r-1", "router", ready=True))
    busy = DemandSample(
        router_ok=True,
        arrival_rate=12.0,  # 12 req/s x 2048 tokens = 3.1 replicas of prefill at 80 %
        in_flight=40,
        replicas=[ReplicaLoad(in_flight=40)],
        ready_replicas=1,
    )
    _pass(kube, operator_config, ScriptedDemand(sample=busy))
    assert _replicas(kube) == 5  # 3.07 replicas of load + sqrt(3.07) of headroom = 4.83
    auto = _status(kube)["autoscaler"]
    assert (auto["desiredReplicas"], auto["read"]) == (5, "ok")
    assert auto["lastScaleDemand"]["arrivalRate"] == "12.000"
    assert "ScaledUp" in _reasons(kube)


def test_a_failed_read_holds_the_replicas_and_says_why(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 1, "maxReplicas": 8, "scaleDownWindowSeconds": 0})
    kube.add(_pod("r-1", "router", ready=True))
    busy = DemandSample(router_ok=True, arrival_rate=12.0, ready_replicas=0)
    _pass(kube, operator_config, ScriptedDemand(sample=busy))
    scaled = _replicas(kube)
    assert scaled > 1
    failed = DemandSample(router_ok=False, error="10.0.0.1:9090: connection refused")
    _pass(kube, operator_config, ScriptedDemand(sample=failed))
    assert _replicas(kube) == scaled  # never read as 0 demand
    auto = _status(kube)["autoscaler"]
    assert auto["read"] == "failed"
    assert "connection refused" in auto["readError"]


def test_held_requests_at_zero_scale_from_zero(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 0, "maxReplicas": 3})
    kube.add(_pod("r-1", "router", ready=True))
    _pass(kube, operator_config, ScriptedDemand(sample=DemandSample(router_ok=True)))
    # Created at zero: no Deployment yet (it would run nothing: kube/children.py).
    assert kube.get("Deployment", namespace=NS, name=ENGINES) is None
    assert _status(kube)["replicas"] == 0
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    held = DemandSample(router_ok=True, queued=2)
    _pass(kube, operator_config, ScriptedDemand(sample=held))
    assert _replicas(kube) == 1
    assert _status(kube)["autoscaler"]["heldRequests"] == 2
    (event,) = (e for e in kube.events if e["reason"] in ("ScaledFromZero", "ScaledUp"))
    assert event["reason"] == "ScaledFromZero"
    assert "2 requests held at zero replicas" in event["message"]


def test_router_children_are_applied(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 1, "maxReplicas": 2})
    _pass(kube, operator_config, ScriptedDemand())
    applied = {label for verb, label in kube.writes if verb == "apply"}
    for label in (
        f"Deployment/{NAME}-router",
        f"ServiceAccount/{NAME}-router",
        f"Role/{NAME}-router",
        f"RoleBinding/{NAME}-router",
        f"PodDisruptionBudget/{NAME}-router",
        f"NetworkPolicy/{NAME}-router",
        f"Service/{NAME}",
        f"Service/{NAME}-engines",
    ):
        assert label in applied, label
    service = kube.get("Service", namespace=NS, name=NAME)
    assert service is not None
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "router"
    assert _replicas(kube, f"{NAME}-router") == 2


def test_no_ready_router_means_not_ready(operator_config: OperatorConfig) -> None:
    kube = _kube({"minReplicas": 1, "maxReplicas": 2})
    kube.add(_pod("e-1", "inference", ready=True))
    kube.add(_pod("r-1", "router", ready=False))
    _pass(kube, operator_config, ScriptedDemand())
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("False", "RouterUnavailable")
    assert _status(kube)["router"] == {"replicas": 2, "readyReplicas": 0, "ready": "0/2"}
    kube.add(_pod("r-1", "router", ready=True))
    _pass(kube, operator_config, ScriptedDemand())
    ready = _ready(kube)
    assert (ready["status"], ready["reason"]) == ("True", "ReplicasReady")
    assert _status(kube)["router"]["ready"] == "1/2"


def test_reserved_capacity_is_filled_first(operator_config: OperatorConfig) -> None:
    """Listed after on-demand in spec.gpu.pools, the reserved pool still gets the replicas."""
    kube = FakeKube()
    kube.add(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
            "spec": {
                "gpu": {"pools": ["ondemand-h100", "reserved-h100"]},
                "scaling": {"minReplicas": 2, "maxReplicas": 2},
                "auth": {"disabled": True},
            },
        }
    )
    _pass(kube, operator_config, ScriptedDemand())
    assert _replicas(kube, f"{NAME}-reserved-h100") == 2
    # The overflow pool runs nothing, so its Deployment is not created (kube/children.py).
    assert kube.get("Deployment", namespace=NS, name=f"{NAME}-ondemand-h100") is None
