"""A pass applies its children concurrently, in phases (kube/children.apply_children).

A recording API (`PhasedKube`) notes when each apply starts and returns, holds every apply of
the referred-to kinds a moment (so an apply started too early overlaps it), and lets the first
apply of a phase wait until a second one of the same phase has started (so an apply that runs
alone, one after the other, is seen). The phases: what pods and bindings refer to
(ConfigMap, ServiceAccount, Role, Services, PDBs, NetworkPolicies), then the RoleBindings,
then the Deployments; a phase starts only once every apply of the one before has returned.
The report is the one a sequential pass makes, child for child in the desired order.
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.labels import APPLIED_HASH_ANNOTATION, ENDPOINT_LABEL, MANAGER
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.kube.children import (
    APPLY_THREADS,
    APPLY_WORKERS,
    ApplyReport,
    ChildRefused,
    apply_children,
    apply_phase,
    deferred_create,
    refusal,
    shared_pool,
    with_applied_hash,
)
from magistral_operator.kube.client import KubeError
from magistral_operator.kube.drift import drifted
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NS, NAME = "ns", "ep"
HOLD_SECONDS = 0.05  # how long an apply of a referred-to kind takes
GATE_SECONDS = 5.0  # how long a phase's first apply waits for a second one to start


class PhasedKube(FakeKube):
    """FakeKube recording (event, label, clock tick) of every apply from any thread."""

    def __init__(self, *, fail: str | None = None, gated: tuple[int, ...] = (0, 2)) -> None:
        super().__init__()
        self.gated = gated  # phases whose first apply waits for a second one
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, int]] = []
        self.tick = 0
        self.in_flight = 0
        self.peak = 0
        self.fail = fail  # this label's apply answers 409 Conflict (not a refusal)
        self.started: dict[int, int] = {}  # phase → applies started
        self.company: dict[int, threading.Event] = {}  # phase → a second apply started
        self.alone: list[str] = []  # first applies of a phase no other one joined

    def _note(self, event: str, label: str) -> None:
        with self.lock:
            self.tick += 1
            self.log.append((event, label, self.tick))

    def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        phase = apply_phase(obj["kind"])
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            nth = self.started[phase] = self.started.get(phase, 0) + 1
            company = self.company.setdefault(phase, threading.Event())
            if nth == 2:
                company.set()
        self._note("start", label)
        try:
            if nth == 1 and phase in self.gated and not company.wait(GATE_SECONDS):
                self.alone.append(label)
            if phase < 2:
                time.sleep(HOLD_SECONDS)
            if label == self.fail:
                raise KubeError(status=409, method="PATCH", path=label, body='{"message":"x"}')
            with self.lock:
                return super().apply(obj, field_manager=field_manager)
        finally:
            self._note("end", label)
            with self.lock:
                self.in_flight -= 1

    def ticks(self, event: str, label: str) -> int:
        return next(t for e, lab, t in self.log if e == event and lab == label)

    def labels(self, event: str) -> list[str]:
        return [lab for e, lab, _ in self.log if e == event]


def _child(kind: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {ENDPOINT_LABEL: NAME, "app.kubernetes.io/managed-by": MANAGER},
        },
        # A Deployment runs a pod: one that would run none is not created (test below).
        "spec": {"v": 1, **({"replicas": 1} if kind == "Deployment" else {})},
    }


# As render_endpoint orders them: the runtime ConfigMap, the pool Deployments, the Services,
# PDB, NetworkPolicies, the router's RBAC, its Deployment and PDB.
CHILDREN = [
    ("ConfigMap", "ep-runtime-abc"),
    ("Deployment", "ep-reserved-h100"),
    ("Deployment", "ep-ondemand-h100"),
    ("Service", "ep"),
    ("Service", "ep-engines"),
    ("PodDisruptionBudget", "ep"),
    ("NetworkPolicy", "ep"),
    ("NetworkPolicy", "ep-router"),
    ("ServiceAccount", "ep-router"),
    ("Role", "ep-router"),
    ("RoleBinding", "ep-router"),
    ("Deployment", "ep-router"),
    ("PodDisruptionBudget", "ep-router"),
]


def _desired(version: int = 1) -> list[tuple[dict[str, Any], str]]:
    out = []
    for kind, name in CHILDREN:
        obj = _child(kind, name)
        obj["spec"]["v"] = version
        out.append((obj, f"{version:016x}"))
    return out


def _assert_phased(kube: PhasedKube, applied: list[str]) -> None:
    """Every apply of a phase started after every apply of the phases before had returned."""
    by_phase: dict[int, list[str]] = {}
    for label in applied:
        by_phase.setdefault(apply_phase(label.split("/", 1)[0]), []).append(label)
    for later, labels in by_phase.items():
        for earlier in (p for p in by_phase if p < later):
            last_end = max(kube.ticks("end", label) for label in by_phase[earlier])
            first_start = min(kube.ticks("start", label) for label in labels)
            assert first_start > last_end, (
                f"phase {later} ({labels}) started before phase {earlier} returned: {kube.log}"
            )


def test_the_phases_of_the_kinds() -> None:
    assert {k: apply_phase(k) for k, _ in CHILDREN} == {
        "ConfigMap": 0,
        "Service": 0,
        "PodDisruptionBudget": 0,
        "NetworkPolicy": 0,
        "ServiceAccount": 0,
        "Role": 0,
        "RoleBinding": 1,
        "Deployment": 2,
    }


def test_a_deployment_is_applied_only_after_everything_its_pods_need() -> None:
    kube = PhasedKube()
    report = apply_children(kube, namespace=NS, endpoint=NAME, desired=_desired())
    assert sorted(kube.labels("start")) == sorted(f"{k}/{n}" for k, n in CHILDREN)
    _assert_phased(kube, kube.labels("start"))
    # Spelled out for the two dependencies that matter most.
    first_deployment = min(
        kube.ticks("start", f"Deployment/{n}") for k, n in CHILDREN if k == "Deployment"
    )
    for needed in ("ConfigMap/ep-runtime-abc", "ServiceAccount/ep-router", "Role/ep-router"):
        assert kube.ticks("end", needed) < kube.ticks("start", "RoleBinding/ep-router")
        assert kube.ticks("end", needed) < first_deployment
    assert kube.ticks("end", "RoleBinding/ep-router") < first_deployment
    assert report.applied == [f"{k}/{n}" for k, n in CHILDREN]


def test_the_applies_of_a_phase_run_concurrently_and_bounded() -> None:
    kube = PhasedKube()
    apply_children(kube, namespace=NS, endpoint=NAME, desired=_desired())
    # The first apply of phase 0 (9 children) and of phase 2 (3 Deployments) had company.
    assert kube.alone == []
    assert 2 <= kube.peak <= APPLY_WORKERS


def test_one_worker_applies_one_after_the_other() -> None:
    kube = PhasedKube(gated=())
    apply_children(kube, namespace=NS, endpoint=NAME, desired=_desired(), workers=1)
    assert kube.peak == 1
    _assert_phased(kube, kube.labels("start"))


def _sequential(
    kube: FakeKube,
    desired: list[tuple[dict[str, Any], str]],
    held: dict[str, ChildRefused],
) -> ApplyReport:
    """The applies as the operator made them before the phases: one after the other."""
    report = ApplyReport()
    for obj, digest in desired:
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        earlier = held.get(label)
        if earlier is not None and earlier.digest == digest:
            report.refused.append(earlier)
            continue
        wanted = with_applied_hash(obj, digest)
        live = kube.get(obj["kind"], namespace=NS, name=obj["metadata"]["name"])
        live_hash = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
            APPLIED_HASH_ANNOTATION
        )
        if live is not None and live_hash == digest and not drifted(live, wanted):
            report.unchanged.append(label)
            continue
        try:
            kube.apply(wanted, field_manager=MANAGER)
        except KubeError as exc:
            if not refusal(exc):
                raise
            report.refused.append(
                ChildRefused(label=label, digest=digest, status=exc.status, message=exc.message)
            )
            continue
        report.applied.append(label)
    return report


def _mixed_state(kube: FakeKube) -> tuple[list[tuple[dict[str, Any], str]], dict[str, Any]]:
    """Version 1 applied; then version 2 for some children: unchanged, changed, refused, held."""
    apply_children(kube, namespace=NS, endpoint=NAME, desired=_desired(1), workers=1)
    desired = []
    for obj, digest in _desired(1):
        if obj["kind"] in ("Deployment", "Role", "NetworkPolicy"):
            changed = copy.deepcopy(obj)
            changed["spec"]["v"] = 2
            desired.append((changed, "2" * 16))
        else:
            desired.append((obj, digest))
    held = {
        "NetworkPolicy/ep": ChildRefused(
            label="NetworkPolicy/ep", digest="2" * 16, status=422, message="held"
        )
    }

    def refuse(obj: dict[str, Any]) -> tuple[int, str] | None:
        name = obj["metadata"]["name"]
        if obj["kind"] in ("Deployment", "Role") and name in ("ep-ondemand-h100", "ep-router"):
            return 422, f"{obj['kind']} {name} is invalid"
        return None

    kube.refuse = refuse
    return desired, held


def test_the_report_is_the_sequential_one() -> None:
    sequential_kube, phased_kube = FakeKube(), PhasedKube(gated=())
    desired, held = _mixed_state(sequential_kube)
    _mixed_state(phased_kube)
    phased_kube.log = []
    expected = _sequential(sequential_kube, desired, held)
    report = apply_children(phased_kube, namespace=NS, endpoint=NAME, desired=desired, held=held)
    assert report == expected
    assert report.applied == ["Deployment/ep-reserved-h100", "NetworkPolicy/ep-router"]
    assert [r.label for r in report.refused] == [
        "Deployment/ep-ondemand-h100",
        "NetworkPolicy/ep",  # held: not sent again
        "Role/ep-router",
        "Deployment/ep-router",
    ]
    assert "NetworkPolicy/ep" not in phased_kube.labels("start")
    assert sequential_kube.objects == phased_kube.objects
    # The same again with everything applied: unchanged, in the same order, nothing sent.
    phased_kube.refuse = sequential_kube.refuse = None
    again = apply_children(phased_kube, namespace=NS, endpoint=NAME, desired=desired)
    assert again.applied == ["Deployment/ep-ondemand-h100", "NetworkPolicy/ep", "Role/ep-router",
                             "Deployment/ep-router"]  # fmt: skip
    settled = apply_children(phased_kube, namespace=NS, endpoint=NAME, desired=desired)
    assert settled.applied == []
    assert settled.unchanged == [f"{k}/{n}" for k, n in CHILDREN]


def test_an_error_ends_the_pass_after_its_phase_returned() -> None:
    kube = PhasedKube(fail="Service/ep-engines")
    with pytest.raises(KubeError) as caught:
        apply_children(kube, namespace=NS, endpoint=NAME, desired=_desired())
    assert caught.value.status == 409
    started = kube.labels("start")
    assert all(apply_phase(label.split("/", 1)[0]) == 0 for label in started)
    assert sorted(kube.labels("end")) == sorted(started)  # nothing still writing
    assert not any(w[1].startswith(("Deployment/", "RoleBinding/")) for w in kube.writes)


def test_a_reconcile_applies_the_rendered_children_in_phases(
    operator_config: OperatorConfig,
) -> None:
    kube = PhasedKube()
    body = {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": {"scaling": {"minReplicas": 1, "maxReplicas": 1}, "auth": {"disabled": True}},
    }
    kube.add(body)
    outcome = reconcile(kube, operator_config, body, demand=ScriptedDemand(), refusals=None)
    kinds = {label.split("/", 1)[0] for label in outcome.applied}
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment"} <= kinds
    assert sorted(kube.labels("start")) == sorted(outcome.applied)
    _assert_phased(kube, outcome.applied)
    assert kube.alone == []


def test_the_applies_of_all_passes_share_one_bounded_pool() -> None:
    """Three passes at once on a pool of 2 threads: never more than 2 applies in flight."""
    kube = PhasedKube(gated=())
    pool = ThreadPoolExecutor(max_workers=2)
    reports: list[ApplyReport] = []

    def one_pass(endpoint: str) -> None:
        desired = []
        for obj, digest in _desired():
            named = copy.deepcopy(obj)
            named["metadata"]["name"] = f"{endpoint}-{named['metadata']['name']}"
            desired.append((named, digest))
        reports.append(
            apply_children(kube, namespace=NS, endpoint=endpoint, desired=desired, pool=pool)
        )

    passes = [threading.Thread(target=one_pass, args=(f"p{i}",)) for i in range(3)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(timeout=30)
    pool.shutdown()
    assert [len(r.applied) for r in reports] == [len(CHILDREN)] * 3
    assert kube.peak == 2


def test_the_shared_pool_bounds_the_process() -> None:
    assert shared_pool()._max_workers == APPLY_THREADS
    assert APPLY_WORKERS <= APPLY_THREADS


def test_a_deployment_that_would_run_no_pods_is_not_created_until_it_would() -> None:
    """An empty overflow pool gets no Deployment (nor the ReplicaSet Kubernetes would make);
    the pass that gives it replicas creates it; once it exists it is kept at zero, never
    pruned, so a rollback still finds its ReplicaSets."""
    kube = FakeKube()

    def desired(replicas: int) -> list[tuple[dict[str, Any], str]]:
        out = []
        for obj, digest in _desired():
            ondemand = obj["metadata"]["name"] == "ep-ondemand-h100"
            if ondemand:
                obj["spec"]["replicas"] = replicas
            out.append((obj, f"{replicas:016x}" if ondemand else digest))
        return out

    empty = apply_children(kube, namespace=NS, endpoint=NAME, desired=desired(0), workers=1)
    assert empty.deferred == ["Deployment/ep-ondemand-h100"]
    assert "Deployment/ep-ondemand-h100" not in empty.applied
    assert kube.get("Deployment", namespace=NS, name="ep-ondemand-h100") is None
    assert kube.get("Deployment", namespace=NS, name="ep-reserved-h100") is not None
    assert not empty.deleted

    used = apply_children(kube, namespace=NS, endpoint=NAME, desired=desired(2), workers=1)
    assert used.applied == ["Deployment/ep-ondemand-h100"]
    assert not used.deferred
    live = kube.get("Deployment", namespace=NS, name="ep-ondemand-h100")
    assert live is not None
    assert live["spec"]["replicas"] == 2

    back = apply_children(kube, namespace=NS, endpoint=NAME, desired=desired(0), workers=1)
    assert back.applied == ["Deployment/ep-ondemand-h100"]  # scaled to zero, kept
    assert not back.deferred
    assert not back.deleted
    live = kube.get("Deployment", namespace=NS, name="ep-ondemand-h100")
    assert live is not None
    assert live["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("obj", "live", "deferred"),
    [
        ({"kind": "Deployment", "spec": {"replicas": 0}}, None, True),
        ({"kind": "Deployment", "spec": {}}, None, False),  # unset: Kubernetes runs 1
        ({"kind": "Deployment", "spec": {"replicas": 1}}, None, False),
        ({"kind": "Deployment", "spec": {"replicas": 0}}, {"kind": "Deployment"}, False),
        ({"kind": "Service", "spec": {}}, None, False),
        ({"kind": "PodDisruptionBudget", "spec": {}}, None, False),
    ],
)
def test_only_a_missing_deployment_without_replicas_is_deferred(
    obj: dict[str, Any], live: dict[str, Any] | None, deferred: bool
) -> None:
    assert deferred_create(obj, live) is deferred
