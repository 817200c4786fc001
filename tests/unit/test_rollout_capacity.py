"""No rollout deadlocks on GPU capacity: the pure policy as tables, then reconcile passes.

Tables: the capacity decision (rollout_capacity.decide), whether the Unschedulable pods are the
rollout's own (owns_pending: the fact its conditions take; the conditions themselves are rows of
test_endpoint_conditions.py), the children it changes (with_capacity) and the deadline that the
scheduler caused (rollout.deadline_from_capacity through pool_failure).

Reconcile passes run against the in-memory API with a stand-in for the Deployment controller,
the scheduler (a number of replica slots per pool) and the kubelet (a scheduled pod is Ready on
the next tick): a rollout on a full pool surges on the next pool and completes with never fewer
Ready replicas than desired; with no room it waits as WaitingForCapacity (a deadline exceeded
meanwhile is no failure) and proceeds once room appears; with maxUnavailable it replaces in
place, unless the current demand needs every replica.
"""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.spec import RolloutSpec
from magistral_operator.api.status import RolloutCapacity, RolloutStatus
from magistral_operator.handlers.reconcile import reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.rollout import RESTART_THRESHOLD, PoolRollout, pool_failure
from magistral_operator.rollout_capacity import (
    CapacityDecision,
    CapacityPool,
    decide,
    owns_pending,
    placement_pods,
    with_capacity,
)
from tests.unit.fake_kube import FakeKube, ScriptedDemand

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OLD = "2026-01-01T11:00:00Z"  # Unschedulable for an hour: past any delay
JUST = "2026-01-01T11:59:59Z"  # Unschedulable for a second: within the delay
A, B = "aaaa", "bbbb"
P, Q, R = "p", "q", "r"
SCHEDULER = "0/10 nodes are available: 2 Insufficient nvidia.com/gpu."
REVISION = "magistral.dev/revision"
POOL = "magistral.dev/pool"


def pod(
    revision: str,
    *,
    pool: str = P,
    ready: bool = True,
    pending: str | None = None,
    scheduled_at: str | None = None,
) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = []
    if pending is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": SCHEDULER,
                "lastTransitionTime": pending,
            }
        )
    else:
        conditions.append(
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": scheduled_at or OLD}
        )
        conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    return {
        "metadata": {"name": f"{pool}-{revision}", "labels": {REVISION: revision, POOL: pool}},
        "status": {"phase": "Pending" if pending else "Running", "conditions": conditions},
    }


def dep(
    revision: str, *, replicas: int = 2, available: int = 2, updated: int = 0, total: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"generation": 2},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {REVISION: revision}}},
        },
        "status": {
            "observedGeneration": 2,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
        },
    }


def cpool(name: str, *pods: dict[str, Any], replicas: int = 2, d: dict[str, Any] | None = None):
    return CapacityPool(
        name=name, replicas=replicas, delay_seconds=60, deployment=d or dep(B, replicas=replicas),
        pods=pods,
    )  # fmt: skip


def cap(mode: str | None, *, pool: str | None = P, borrow: str | None = None, full=(P,)):
    return RolloutCapacity(
        revision=B,
        full_pools=list(full),
        pool=pool,
        borrow_pool=borrow,
        mode=mode,  # type: ignore[arg-type]
        since="2026-01-01T11:30:00Z",
        scheduler=SCHEDULER,
        message="before",
    )


# P rolls from A to B with its surge pod pending; Q and R idle (no replicas, no pods).
ROLLING_P = cpool(P, pod(A), pod(A, ready=True), pod(B, pending=OLD))
ROLLING_P_JUST = cpool(P, pod(A), pod(A), pod(B, pending=JUST))
IDLE_Q = cpool(Q, replicas=0, d=dep(B, replicas=0, available=0, total=0))
IDLE_R = cpool(R, replicas=0, d=dep(B, replicas=0, available=0, total=0))
Q_EXTRA_STARTING = cpool(
    Q, pod(B, pool=Q, ready=False), replicas=0, d=dep(B, replicas=1, available=0, total=1)
)
Q_EXTRA_AVAILABLE = cpool(
    Q, pod(B, pool=Q), replicas=0, d=dep(B, replicas=1, available=1, updated=1, total=1)
)
Q_EXTRA_PENDING = cpool(
    Q, pod(B, pool=Q, pending=OLD), replicas=0, d=dep(B, replicas=1, available=0, total=1)
)
P_STEPPING = cpool(P, pod(A), pod(B, ready=False))  # in place: one replaced, not Ready yet
P_DONE = cpool(P, pod(B), pod(B), d=dep(B, updated=2))
P_SCHEDULED = cpool(P, pod(A), pod(A), pod(B, ready=False))  # room appeared: surge scheduled

SURGE, UNAVAIL = RolloutSpec(), RolloutSpec(max_surge=1, max_unavailable=1)

# (case, pools, spec, previous state, ready, desired, needed,
#  -> mode, pool, borrow, full pools, extra, strategies, event reason or None)
DECISIONS = [
    ("a surge pod within the pool's delay: the scheduler may yet place it",
     [ROLLING_P_JUST, IDLE_Q], SURGE, None, 2, 2, 2, None, None, None, [], {}, {}, None),
    ("P full: surge on the next pool, one extra replica there",
     [ROLLING_P, IDLE_Q], SURGE, None, 2, 2, 2,
     "SurgeElsewhere", P, Q, [P], {Q: 1}, {}, "SurgingElsewhere"),
    ("the extra replica starting: keep it, P untouched",
     [ROLLING_P, Q_EXTRA_STARTING], SURGE, cap("SurgeElsewhere", borrow=Q), 2, 2, 2,
     "SurgeElsewhere", P, Q, [P], {Q: 1}, {}, None),
    ("the extra replica available: P replaced in place, one at a time",
     [ROLLING_P, Q_EXTRA_AVAILABLE], SURGE, cap("SurgeElsewhere", borrow=Q), 2, 2, 2,
     "ReplaceWithBorrowed", P, Q, [P], {Q: 1}, {P: (0, 1)}, "ReplacingInPlace"),
    ("mid-replacement the extra replica stays",
     [P_STEPPING, Q_EXTRA_AVAILABLE], SURGE, cap("ReplaceWithBorrowed", borrow=Q), 2, 2, 2,
     "ReplaceWithBorrowed", P, Q, [P], {Q: 1}, {P: (0, 1)}, None),
    ("P done: the extra replica goes; P stays known full",
     [P_DONE, Q_EXTRA_AVAILABLE], SURGE, cap("ReplaceWithBorrowed", borrow=Q), 3, 2, 2,
     None, None, None, [P], {}, {}, "CapacityReleased"),
    ("the extra replica Unschedulable too: the next pool",
     [ROLLING_P, Q_EXTRA_PENDING, IDLE_R], SURGE, cap("SurgeElsewhere", borrow=Q), 2, 2, 2,
     "SurgeElsewhere", P, R, [P, Q], {R: 1}, {}, "SurgingElsewhere"),
    ("the next pool wraps around the list",
     [IDLE_Q, cpool(R, pod(A, pool=R), pod(A, pool=R), pod(B, pool=R, pending=OLD))], SURGE,
     None, 2, 2, 2, "SurgeElsewhere", R, Q, [R], {Q: 1}, {}, "SurgingElsewhere"),
    ("a pool known full is not tried again",
     [ROLLING_P, IDLE_Q], SURGE, cap(None, pool=None, full=(Q,)), 2, 2, 2,
     "Waiting", P, None, [Q, P], {}, {}, "WaitingForCapacity"),
    ("no room anywhere, maxUnavailable 0: wait",
     [ROLLING_P, Q_EXTRA_PENDING], SURGE, cap("SurgeElsewhere", borrow=Q), 2, 2, 2,
     "Waiting", P, None, [P, Q], {}, {}, "WaitingForCapacity"),
    ("no room, maxUnavailable 1, demand below the ready replicas: in place",
     [ROLLING_P, Q_EXTRA_PENDING], UNAVAIL, cap("SurgeElsewhere", borrow=Q), 2, 2, 1,
     "ReplaceInPlace", P, None, [P, Q], {}, {P: (0, 1)}, "ReplacingInPlace"),
    ("no room, maxUnavailable 1, the demand needs every ready replica: wait",
     [ROLLING_P, Q_EXTRA_PENDING], UNAVAIL, cap("SurgeElsewhere", borrow=Q), 2, 2, 2,
     "Waiting", P, None, [P, Q], {}, {P: (1, 0)}, "WaitingForCapacity"),
    ("no room, maxUnavailable 1, the demand unknown: wait",
     [ROLLING_P, Q_EXTRA_PENDING], UNAVAIL, cap("SurgeElsewhere", borrow=Q), 2, 2, None,
     "Waiting", P, None, [P, Q], {}, {P: (1, 0)}, "WaitingForCapacity"),
    ("no room, maxUnavailable 1, a replica already down (the PDB allows one): wait",
     [ROLLING_P, Q_EXTRA_PENDING], UNAVAIL, cap("SurgeElsewhere", borrow=Q), 2, 3, 1,
     "Waiting", P, None, [P, Q], {}, {P: (1, 0)}, "WaitingForCapacity"),
    ("in place mid-step: the replica being replaced is the one down",
     [P_STEPPING, IDLE_Q], UNAVAIL, cap("ReplaceInPlace", full=(P, Q)), 1, 2, 1,
     "ReplaceInPlace", P, None, [P, Q], {}, {P: (0, 1)}, None),
    ("in place, the demand rose mid-step: wait",
     [P_STEPPING, IDLE_Q], UNAVAIL, cap("ReplaceInPlace", full=(P, Q)), 1, 2, 2,
     "Waiting", P, None, [P, Q], {}, {P: (1, 0)}, "WaitingForCapacity"),
    ("waiting, room appeared on P: the Deployment proceeds by itself",
     [P_SCHEDULED, IDLE_Q], SURGE, cap("Waiting", full=(P, Q)), 2, 2, 2,
     None, None, None, [P, Q], {}, {}, None),
    ("waiting, still no room: unchanged",
     [ROLLING_P, IDLE_Q], SURGE, cap("Waiting", full=(P, Q)), 2, 2, 2,
     "Waiting", P, None, [P, Q], {}, {}, None),
    ("a state of another revision is forgotten",
     [ROLLING_P, IDLE_Q], SURGE,
     cap("Waiting", full=(P, Q)).model_copy(update={"revision": A}), 2, 2, 2,
     "SurgeElsewhere", P, Q, [P], {Q: 1}, {}, "SurgingElsewhere"),
    ("a single pool, no in-place allowance: wait",
     [ROLLING_P], SURGE, None, 2, 2, 2, "Waiting", P, None, [P], {}, {}, "WaitingForCapacity"),
    ("maxUnavailable 1 on a pool with room, the demand needs every replica: held",
     [cpool(P, pod(A), pod(A)), IDLE_Q], UNAVAIL, None, 2, 2, 2,
     None, None, None, [], {}, {P: (1, 0)}, None),
    ("maxUnavailable 1 on a pool with room, the demand leaves one: the spec's strategy",
     [cpool(P, pod(A), pod(A)), IDLE_Q], UNAVAIL, None, 2, 2, 1,
     None, None, None, [], {}, {}, None),
    ("maxUnavailable 1 mid-step, the demand leaves one: the Deployment paces itself",
     [P_STEPPING, IDLE_Q], UNAVAIL, None, 1, 2, 1, None, None, None, [], {}, {}, None),
    ("a first revision's Pending pods are placement's, not a rollout's",
     [cpool(P, pod(B), pod(B, pending=OLD)), IDLE_Q], SURGE, None, 1, 2, 2,
     None, None, None, [], {}, {}, None),
]  # fmt: skip


@pytest.mark.parametrize("row", DECISIONS, ids=[r[0] for r in DECISIONS])
def test_decide(row: tuple[Any, ...]) -> None:
    _, pools, spec, state, ready, desired, needed, mode, pool, borrow, full, extra, strat, ev = row
    decision = decide(
        revision=B,
        phase="Progressing",
        pools=pools,
        rollout=spec,
        state=state,
        ready=ready,
        desired=desired,
        needed=needed,
        now=NOW,
    )
    got = decision.state
    if mode is None and not full:
        assert got is None
    else:
        assert got is not None
        assert (got.mode, got.pool, got.borrow_pool, got.full_pools) == (mode, pool, borrow, full)
        if pool is not None and got.message != "before":  # recomputed
            assert SCHEDULER in got.message, got.message
            assert pool in got.message
    assert decision.extra == extra
    assert decision.strategies == strat
    assert [e.reason for e in decision.events] == ([ev] if ev else [])
    if (
        state is not None
        and got is not None
        and mode is not None
        and ((state.mode, state.borrow_pool) == (got.mode, got.borrow_pool))
    ):
        assert got.since == state.since  # a steady mode writes no new time


@pytest.mark.parametrize("phase", ["Healthy", "RolledBack", "Failed"])
def test_only_a_progressing_rollout_is_helped(phase: str) -> None:
    decision = decide(
        revision=B,
        phase=phase,  # type: ignore[arg-type]
        pools=[ROLLING_P, IDLE_Q],
        rollout=SURGE,
        state=cap("ReplaceWithBorrowed", borrow=Q),
        ready=2,
        desired=2,
        needed=2,
        now=NOW,
    )
    assert decision.state is None  # the extra replica and the strategy go
    assert (decision.extra, decision.strategies) == ({}, {})
    released = ["CapacityReleased"] if phase == "Healthy" else []
    assert [e.reason for e in decision.events] == released


def test_waiting_messages_say_why() -> None:
    def message(spec: RolloutSpec, needed: int | None, ready: int = 2) -> str:
        d = decide(
            revision=B, phase="Progressing", pools=[ROLLING_P], rollout=spec, state=None,
            ready=ready, desired=2, needed=needed, now=NOW,
        )  # fmt: skip
        assert d.state is not None
        return d.state.message

    assert "maxUnavailable is 0" in message(SURGE, 1)
    assert "the current demand needs 2 ready replicas" in message(UNAVAIL, 2)
    assert "demand is unknown" in message(UNAVAIL, None)
    assert "PodDisruptionBudget" in message(UNAVAIL, 0, ready=1)
    assert "no other pool" in message(SURGE, 1)
    assert "proceeds when room appears" in message(SURGE, 1)


# --- the rollout's own pending pods (Degraded stays AsExpected; test_endpoint_conditions) ---

SURGE_PENDING = [pod(A), pod(A), pod(B, pending=OLD)]  # P rolling, its surge pod pending
BORROW_PENDING = [pod(A), pod(A), pod(B, pending=OLD), pod(B, pool=Q, pending=OLD)]
REPLACEMENT_PENDING = [pod(B), pod(B, pending=OLD)]  # the old pods gone, P still handled
PLACEMENTS = [pod(B), pod(B), pod(B, pool=Q, pending=OLD)]  # not a rollout's
OLD_PENDING = [pod(A), pod(A, pending=OLD), pod(B)]


def _d(mode: str | None, handled: tuple[str, ...] = ()) -> CapacityDecision:
    return CapacityDecision(
        state=cap(mode) if mode else None, revision=B, handled=frozenset(handled)
    )


# (case, decision, pods -> every Unschedulable pod is the rollout's own)
OWN_PENDING = [
    ("nothing pending", _d(None), [], False),
    ("waiting: the surge pod is the rollout's", _d("Waiting", (P,)), SURGE_PENDING, True),
    ("surging elsewhere, the borrowed pod pending", _d("SurgeElsewhere", (P, Q)),
     BORROW_PENDING, True),
    ("a borrowed pod pending on a pool not handled is not excused", _d("Waiting", (P,)),
     BORROW_PENDING, False),
    ("replacing in place, the replacement waits for the old pod's GPUs",
     _d("ReplaceInPlace", (P,)), REPLACEMENT_PENDING, True),
    ("a pending pod on a pool not rolling (placement's)", _d("Waiting", (P,)), PLACEMENTS,
     False),
    ("a pending pod of the old revision", _d(None), OLD_PENDING, False),
    ("a surge pod within the delay is excused too", _d(None), SURGE_PENDING, True),
    ("no rollout to help", CapacityDecision(), SURGE_PENDING, False),
]  # fmt: skip


@pytest.mark.parametrize("row", OWN_PENDING, ids=[r[0] for r in OWN_PENDING])
def test_owns_pending(row: tuple[Any, ...]) -> None:
    _, decision, pods, expected = row
    assert owns_pending(decision, pods) is expected


def test_decide_names_the_pools_it_handles() -> None:
    d = decide(
        revision=B, phase="Progressing", pools=[ROLLING_P, Q_EXTRA_PENDING], rollout=SURGE,
        state=cap("SurgeElsewhere", borrow=Q), ready=2, desired=2, needed=2, now=NOW,
    )  # fmt: skip
    assert (d.revision, d.handled) == (B, frozenset({P, Q}))  # Q lent, now found full
    assert d.state is not None
    assert d.state.mode == "Waiting"


# --- children -----------------------------------------------------------------------------


def _rendered(pool: str, replicas: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": f"ep-{pool}", "labels": {POOL: pool}},
        "spec": {
            "replicas": replicas,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
        },
    }


def test_with_capacity() -> None:
    objects = [_rendered(P, 2), _rendered(Q, 0), {"kind": "Service", "metadata": {"name": "s"}}]
    same = with_capacity(objects, CapacityDecision())
    assert same == objects
    got = with_capacity(objects, CapacityDecision(extra={Q: 1}, strategies={P: (0, 1)}))
    assert got[0]["spec"]["replicas"] == 2
    assert got[0]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert got[1]["spec"]["replicas"] == 1
    assert got[1]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert got[2] == objects[2]
    assert objects[0]["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 1  # not mutated


def test_placement_does_not_see_a_rollouts_pending_pods() -> None:
    pending_b, pending_a = pod(B, pending=OLD), pod(A, pending=OLD)
    other = pod(B, pool=Q, pending=OLD)  # a pool not rolling: placement's
    status = RolloutStatus(current_revision=B, phase="Progressing", since=OLD)
    pods = [pending_b, pending_a, other]
    assert placement_pods(pods, status) == [pending_a, other]
    only_new = [pod(B), pending_b, other]  # the old pods gone, the pool still handled
    assert placement_pods(only_new, status) == only_new
    handled = status.model_copy(update={"capacity": cap("ReplaceInPlace")})
    assert placement_pods(only_new, handled) == [only_new[0], other]
    assert placement_pods(pods, None) == pods
    assert placement_pods(pods, status.model_copy(update={"phase": "Healthy"})) == pods


# --- a deadline the scheduler caused ------------------------------------------------------

DECLARED = "2026-01-01T11:30:00Z"


def _deadline_dep() -> dict[str, Any]:
    d = dep(B, updated=1, available=2, total=3)
    d["status"]["conditions"] = [
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "lastUpdateTime": DECLARED,
            "message": 'ReplicaSet "ep-p-x" has timed out progressing.',
        }
    ]
    return d


CRASHING = copy.deepcopy(pod(B, scheduled_at="2026-01-01T11:00:00Z"))
CRASHING["status"]["containerStatuses"] = [
    {"restartCount": RESTART_THRESHOLD, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
]

# (case, pods -> failed)
DEADLINES = [
    ("no pod of the revision scheduled (plain stall): a failure", [pod(A), pod(A)], True),
    ("a pod of the revision Unschedulable: capacity", [pod(A), pod(A), pod(B, pending=OLD)], False),
    ("scheduled after the deadline was declared: room appeared",
     [pod(A), pod(B, ready=False, scheduled_at="2026-01-01T11:45:00Z")], False),
    ("scheduled before the deadline and never Ready: a failure",
     [pod(A), pod(B, ready=False, scheduled_at="2026-01-01T11:00:00Z")], True),
    ("crash-looping beside an Unschedulable one: still a failure",
     [CRASHING, pod(B, pending=OLD)], True),
]  # fmt: skip


@pytest.mark.parametrize("row", DEADLINES, ids=[r[0] for r in DEADLINES])
def test_deadline_from_capacity(row: tuple[Any, ...]) -> None:
    _, pods, failed = row
    for i, p in enumerate(pods):
        p["metadata"]["name"] += f"-{i}"
    why = pool_failure(PoolRollout(pool=P, deployment=_deadline_dep(), pods=pods), revision=B)
    assert (why is not None) is failed, why


# --- reconcile passes ---------------------------------------------------------------------

NS, NAME = "ns", "ep"
RESERVED, ONDEMAND = "reserved-h100", "ondemand-h100"
MESSAGE = "0/10 nodes are available: 2 Insufficient nvidia.com/gpu, 8 node(s) didn't match."
LONG_AGO = "2020-01-01T00:00:00Z"


def _endpoint(
    stage: str,
    *,
    pools: list[str],
    replicas: int,
    rollout: dict[str, Any],
    max_replicas: int | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"name": NAME, "namespace": NS, "uid": "uid-1", "generation": 1},
        "spec": {
            "scaling": {"minReplicas": replicas, "maxReplicas": max_replicas or replicas},
            "auth": {"disabled": True},
            "gpu": {"pools": pools},
            "runtime": {"env": [{"name": "STAGE", "value": stage}]},
            # The rolling update past a full pool (the canary's own capacity rule is tested in
            # test_reconcile_canary.py).
            "rollout": {"canary": {"enabled": False}, **rollout},
        },
    }  # fmt: skip


class Cluster:
    """The Deployment controller, the scheduler and the kubelet, roughly, over a FakeKube.

    `slots[pool]`: how many engine pods the pool's nodes hold (TP 1). Each `tick` runs the
    kubelet (a scheduled pod turns Ready), then per engine Deployment a rolling update as
    Kubernetes does it (new pods while the total stays within replicas + maxSurge; old pods
    removed while Ready pods stay at least replicas - maxUnavailable, counting the new ones
    not Ready yet as unavailable), then the scheduler (a pod binds if its pool has a free
    slot, else PodScheduled=False, Unschedulable, since long ago). Deployment status follows.
    """

    def __init__(self, kube: FakeKube, slots: dict[str, int]) -> None:
        self.kube, self.slots = kube, slots
        self.names = itertools.count()
        self.deadline: set[str] = set()  # Deployments that report ProgressDeadlineExceeded
        self.grace = False  # deleted pods terminate over one tick, holding their GPUs
        kube.add(
            {
                "kind": "Pod",
                "metadata": {
                    "name": f"{NAME}-router-0",
                    "namespace": NS,
                    "labels": {
                        "magistral.dev/endpoint": NAME,
                        "app.kubernetes.io/component": "router",
                    },
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            }
        )

    def pods(self, pool: str | None = None) -> list[dict[str, Any]]:
        sel = f"magistral.dev/endpoint={NAME},app.kubernetes.io/component=inference"
        if pool:
            sel += f",{POOL}={pool}"
        return self.kube.list("Pod", namespace=NS, selector=sel)

    def _deployments(self) -> list[dict[str, Any]]:
        sel = f"magistral.dev/endpoint={NAME},app.kubernetes.io/component=inference"
        return self.kube.list("Deployment", namespace=NS, selector=sel)

    @staticmethod
    def _ready(p: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]
        )

    @staticmethod
    def _scheduled(p: dict[str, Any]) -> bool:
        return bool(p["spec"].get("nodeName"))

    def _delete(self, p: dict[str, Any]) -> None:
        if not self.grace:
            self.kube.objects.pop(("Pod", NS, p["metadata"]["name"]))
            return
        # Terminating for one tick: not counted by the controller, still on its GPUs.
        p["metadata"]["deletionTimestamp"] = LONG_AGO
        p["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
        self.kube.add(p)

    def _create(self, template: dict[str, Any]) -> None:
        name = f"{NAME}-pod-{next(self.names)}"
        self.kube.add(
            {
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": NS,
                    "labels": dict(template["metadata"]["labels"]),
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending", "conditions": []},
            }
        )

    def tick(self) -> None:
        for p in self.pods():  # terminated
            if p["metadata"].get("deletionTimestamp"):
                self.kube.objects.pop(("Pod", NS, p["metadata"]["name"]))
        for p in self.pods():  # kubelet
            if self._scheduled(p) and not self._ready(p):
                p["status"] = {
                    "phase": "Running",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                }
                self.kube.add(p)
        for d in self._deployments():  # Deployment controller
            pool = d["metadata"]["labels"][POOL]
            spec = d["spec"]
            n, revision = int(spec["replicas"]), spec["template"]["metadata"]["labels"][REVISION]
            ru = spec["strategy"]["rollingUpdate"]
            surge, unavailable = int(ru["maxSurge"]), int(ru["maxUnavailable"])
            pods = [p for p in self.pods(pool) if not p["metadata"].get("deletionTimestamp")]
            new = [p for p in pods if p["metadata"]["labels"][REVISION] == revision]
            old = [p for p in pods if p not in new]
            for extra in sorted(new, key=self._ready)[: max(0, len(new) - n)]:
                self._delete(extra)
                new.remove(extra)
            new_unready = sum(1 for p in new if not self._ready(p))
            ready = sum(1 for p in pods if self._ready(p))
            can_remove = len(new) + len(old) - (n - unavailable) - new_unready
            can_remove = min(can_remove, ready - (n - unavailable)) if old else 0
            for victim in sorted(old, key=self._ready)[: max(0, can_remove)]:
                self._delete(victim)
                old.remove(victim)
            while len(new) < n and len(new) + len(old) < n + surge:
                self._create(spec["template"])
                new = [
                    p
                    for p in self.pods(pool)
                    if p["metadata"]["labels"][REVISION] == revision
                    and not p["metadata"].get("deletionTimestamp")
                ]
        for pool, slots in self.slots.items():  # scheduler
            pods = self.pods(pool)
            used = sum(1 for p in pods if self._scheduled(p))
            for p in pods:
                if self._scheduled(p):
                    continue
                if used < slots:
                    used += 1
                    p["spec"]["nodeName"] = f"{pool}-node"
                    p["status"] = {
                        "phase": "Pending",
                        "conditions": [{"type": "PodScheduled", "status": "True"}],
                    }
                else:
                    p["status"]["conditions"] = [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": MESSAGE,
                            "lastTransitionTime": LONG_AGO,
                        }
                    ]
                self.kube.add(p)
        for d in self._deployments():  # Deployment status
            pool = d["metadata"]["labels"][POOL]
            revision = d["spec"]["template"]["metadata"]["labels"][REVISION]
            pods = [p for p in self.pods(pool) if not p["metadata"].get("deletionTimestamp")]
            d["status"] = {
                "replicas": len(pods),
                "updatedReplicas": sum(
                    1 for p in pods if p["metadata"]["labels"][REVISION] == revision
                ),
                "availableReplicas": sum(1 for p in pods if self._ready(p)),
                "readyReplicas": sum(1 for p in pods if self._ready(p)),
            }
            if pool in self.deadline:
                d["status"]["conditions"] = [
                    {
                        "type": "Progressing",
                        "status": "False",
                        "reason": "ProgressDeadlineExceeded",
                        "lastUpdateTime": "2099-01-01T00:00:00Z",
                        "message": "ReplicaSet has timed out progressing.",
                    }
                ]
            self.kube.add(d)

    def ready_by(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for p in self.pods():
            if self._ready(p):
                labels = p["metadata"]["labels"]
                key = (labels[POOL], labels[REVISION])
                counts[key] = counts.get(key, 0) + 1
        return counts


def _pass(kube: FakeKube, config: OperatorConfig) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    reconcile(kube, config, body, demand=ScriptedDemand(), refusals=RefusalBook())
    after = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert after is not None
    return dict(after["status"])


def _cond(status: dict[str, Any], type_: str) -> tuple[str, str, str]:
    c = next(c for c in status["conditions"] if c["type"] == type_)
    return c["status"], c["reason"], c["message"]


def _set_stage(kube: FakeKube, stage: str) -> None:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    body["spec"]["runtime"]["env"] = [{"name": "STAGE", "value": stage}]
    body["metadata"]["generation"] += 1
    kube.add(body)


def _run(kube: FakeKube, cluster: Cluster, config: OperatorConfig, passes: int) -> list[Any]:
    """Alternate reconcile passes and cluster ticks; what each pass left (status, ready)."""
    seen = []
    for _ in range(passes):
        status = _pass(kube, config)
        cluster.tick()
        seen.append((status, sum(cluster.ready_by().values()), cluster.ready_by()))
    return seen


def _healthy_a(kube: FakeKube, cluster: Cluster, config: OperatorConfig) -> str:
    for _ in range(6):
        status = _pass(kube, config)
        cluster.tick()
    status = _pass(kube, config)
    assert status["rollout"]["phase"] == "Healthy", status["rollout"]
    return str(status["rollout"]["currentRevision"])


ROLL = {"maxSurge": 1, "maxUnavailable": 0, "healthySeconds": 0}


def test_a_full_pool_surges_on_the_next_pool_and_completes(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    kube.add(_endpoint("a", pools=[RESERVED, ONDEMAND], replicas=2, rollout=ROLL))
    cluster = Cluster(kube, {RESERVED: 2, ONDEMAND: 4})
    a = _healthy_a(kube, cluster, operator_config)
    assert cluster.ready_by() == {(RESERVED, a): 2}

    _set_stage(kube, "b")
    seen = _run(kube, cluster, operator_config, 14)
    final = seen[-1][0]
    b = final["rollout"]["currentRevision"]
    assert b != a
    assert final["rollout"]["phase"] == "Healthy", final["rollout"]
    assert cluster.ready_by() == {(RESERVED, b): 2}  # the extra replica on on-demand is gone
    assert "capacity" not in final["rollout"]
    assert min(ready for _, ready, _ in seen) >= 2, [r for _, r, _ in seen]
    reasons = [_cond(s, "Progressing")[1] for s, _, _ in seen]
    assert "SurgingElsewhere" in reasons, reasons
    assert "ReplacingInPlace" in reasons, reasons
    assert all(_cond(s, "Degraded")[0] == "False" for s, _, _ in seen)
    assert {s["rollout"]["phase"] for s, _, _ in seen} <= {"Progressing", "Healthy"}
    assert any(by.get((ONDEMAND, b)) == 1 for _, _, by in seen)  # the borrowed replica ran
    surging = next(s for s in seen if _cond(s[0], "Progressing")[1] == "SurgingElsewhere")
    message = _cond(surging[0], "Progressing")[2]
    assert RESERVED in message
    assert ONDEMAND in message
    assert MESSAGE in message
    events = [e["reason"] for e in kube.events]
    for reason in ("SurgingElsewhere", "ReplacingInPlace", "CapacityReleased", "RolloutSucceeded"):
        assert reason in events, events
    deps = {d["metadata"]["name"]: d["spec"] for d in cluster._deployments()}
    assert deps[f"{NAME}-{ONDEMAND}"]["replicas"] == 0
    assert deps[f"{NAME}-{RESERVED}"]["strategy"]["rollingUpdate"]["maxSurge"] == 1


def test_no_room_waits_honestly_and_proceeds_when_room_appears(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    kube.add(_endpoint("a", pools=[RESERVED, ONDEMAND], replicas=2, rollout=ROLL))
    cluster = Cluster(kube, {RESERVED: 2, ONDEMAND: 0})
    a = _healthy_a(kube, cluster, operator_config)

    _set_stage(kube, "b")
    seen = _run(kube, cluster, operator_config, 6)
    cluster.deadline.add(RESERVED)  # the Deployment gives up waiting: not a failure
    seen += _run(kube, cluster, operator_config, 4)
    status = seen[-1][0]
    assert status["rollout"]["phase"] == "Progressing", status["rollout"]
    assert status["rollout"]["capacity"]["mode"] == "Waiting"
    assert status["rollout"]["capacity"]["fullPools"] == [RESERVED, ONDEMAND]
    progressing = _cond(status, "Progressing")
    assert progressing[:2] == ("True", "WaitingForCapacity")
    assert RESERVED in progressing[2]
    assert MESSAGE in progressing[2]
    assert _cond(status, "Degraded")[:2] == ("False", "AsExpected")
    assert _cond(status, "Ready")[:2] == ("True", "ReplicasReady")
    assert cluster.ready_by() == {(RESERVED, a): 2}
    assert cluster.pods(ONDEMAND) == []  # the borrowed pod did not linger
    assert [e["reason"] for e in kube.events].count("WaitingForCapacity") == 1
    writes = len(kube.writes)
    _run(kube, cluster, operator_config, 2)
    assert len(kube.writes) == writes  # waiting is steady: no writes

    cluster.deadline.clear()
    cluster.slots[RESERVED] = 3  # room appears
    seen += _run(kube, cluster, operator_config, 10)
    final = seen[-1][0]
    assert final["rollout"]["phase"] == "Healthy", final["rollout"]
    assert cluster.ready_by() == {(RESERVED, final["rollout"]["currentRevision"]): 2}
    assert min(r for _, r, _ in seen) >= 2
    assert {s["rollout"]["phase"] for s, _, _ in seen} <= {"Progressing", "Healthy"}
    assert "RolledBack" not in [e["reason"] for e in kube.events]


def test_in_place_when_allowed_and_the_demand_leaves_a_replica(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    rollout = {"maxSurge": 1, "maxUnavailable": 1, "healthySeconds": 0}
    body = _endpoint("a", pools=[RESERVED], replicas=1, max_replicas=3, rollout=rollout)
    body["status"] = {"autoscaler": {"desiredReplicas": 3}}  # held up while demand is low
    kube.add(body)
    cluster = Cluster(kube, {RESERVED: 3})
    a = _healthy_a(kube, cluster, operator_config)
    assert cluster.ready_by() == {(RESERVED, a): 3}

    _set_stage(kube, "b")
    seen = _run(kube, cluster, operator_config, 16)
    final = seen[-1][0]
    assert final["rollout"]["phase"] == "Healthy", final["rollout"]
    assert cluster.ready_by() == {(RESERVED, final["rollout"]["currentRevision"]): 3}
    assert min(r for _, r, _ in seen) >= 2  # one at a time: the PDB's budget
    assert "ReplacingInPlace" in [_cond(s, "Progressing")[1] for s, _, _ in seen]
    assert "ReplacingInPlace" in [e["reason"] for e in kube.events]


def test_in_place_waits_while_the_demand_needs_every_replica(
    operator_config: OperatorConfig,
) -> None:
    kube = FakeKube()
    rollout = {"maxSurge": 1, "maxUnavailable": 1, "healthySeconds": 0}
    kube.add(_endpoint("a", pools=[RESERVED], replicas=2, rollout=rollout))
    cluster = Cluster(kube, {RESERVED: 2})
    a = _healthy_a(kube, cluster, operator_config)

    _set_stage(kube, "b")
    seen = _run(kube, cluster, operator_config, 8)
    status = seen[-1][0]
    progressing = _cond(status, "Progressing")
    assert progressing[:2] == ("True", "WaitingForCapacity")
    assert "the current demand needs 2 ready replicas" in progressing[2]
    assert cluster.ready_by() == {(RESERVED, a): 2}
    assert min(r for _, r, _ in seen) >= 2


def test_a_replacement_waiting_for_the_gpus_it_replaces_never_overflows(
    operator_config: OperatorConfig,
) -> None:
    """In place, the new pod waits (Unschedulable) while the old one terminates on its GPUs:
    placement must not take that for a full pool and move the replica elsewhere."""
    kube = FakeKube()
    rollout = {"maxSurge": 1, "maxUnavailable": 1, "healthySeconds": 0}
    body = _endpoint("a", pools=[RESERVED, ONDEMAND], replicas=1, max_replicas=2, rollout=rollout)
    body["status"] = {"autoscaler": {"desiredReplicas": 2}}
    kube.add(body)
    cluster = Cluster(kube, {RESERVED: 2, ONDEMAND: 0})
    a = _healthy_a(kube, cluster, operator_config)
    assert cluster.ready_by() == {(RESERVED, a): 2}
    cluster.grace = True

    _set_stage(kube, "b")
    seen = _run(kube, cluster, operator_config, 16)
    final = seen[-1][0]
    assert final["rollout"]["phase"] == "Healthy", final["rollout"]
    assert cluster.ready_by() == {(RESERVED, final["rollout"]["currentRevision"]): 2}
    for status, _, _ in seen:
        split = {p["name"]: p["replicas"] for p in status["placement"]["pools"]}
        assert split == {RESERVED: 2, ONDEMAND: 0}, status["placement"]
    assert "Overflow" not in [e["reason"] for e in kube.events]
