"""Every reason status/endpoint_conditions.py can give, and which rule wins: one table.

A row: (case, inputs, expected Ready / Progressing / Degraded as (type, status, reason), and
{type: a substring its message must hold}). To add a condition: one rule function in the
module and a row here.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from magistral_operator.api.status import (
    AnalysisStatus,
    RolloutCapacity,
    RolloutStatus,
    RouterStatus,
)
from magistral_operator.references import Reference
from magistral_operator.rollout import RolloutDecision
from magistral_operator.status.endpoint_conditions import (
    OVERRIDES,
    ConditionInputs,
    endpoint_conditions,
    problem_reason,
)
from magistral_operator.status.observe import PoolObservation

A, B = "aaaa", "bbbb"
P, Q = "reserved-h100", "spot-h100"
SCHEDULER = "0/8 nodes are available: 8 Insufficient nvidia.com/gpu."
CRASH = "pod ep-x: CrashLoopBackOff"
NO_SECRET = 'pod ep-x: CreateContainerConfigError: secret "api-key" not found'
KEY_REF = Reference("Secret", "api-key", "key", "spec.auth.apiKeySecretRef")


def pools(*observations: PoolObservation) -> dict[str, PoolObservation]:
    return {o.pool: o for o in observations}


def obs(pool: str = P, **kw: Any) -> PoolObservation:
    return PoolObservation(pool=pool, **kw)


ALL_READY = pools(obs(replicas=2, pods=2, ready_replicas=2, current_revision_ready=2))
STARTING = pools(obs(replicas=2, pods=2))
ONE_READY = pools(obs(replicas=2, pods=2, ready_replicas=1, current_revision_ready=1))
OLD_SERVE = pools(obs(replicas=2, pods=3, ready_replicas=2, current_revision_ready=0))
RESTORED_HALF = pools(obs(replicas=2, pods=2, ready_replicas=2, current_revision_ready=1))
UNSCHEDULABLE = pools(obs(replicas=2, pods=2, unschedulable=SCHEDULER))
SURGE_PENDING = pools(
    obs(replicas=2, pods=3, ready_replicas=2, current_revision_ready=1, unschedulable=SCHEDULER)
)
FAILING = pools(obs(replicas=2, pods=2, failing=CRASH))
SERVING_FAILING = pools(
    obs(replicas=2, pods=2, ready_replicas=2, current_revision_ready=2, failing=CRASH)
)
UNSCHEDULABLE_AND_FAILING = pools(
    obs(P, replicas=1, pods=1, failing=CRASH), obs(Q, replicas=1, pods=1, unschedulable=SCHEDULER)
)
SECRET_MISSING = pools(obs(replicas=1, pods=1, failing=NO_SECRET))
LOST_ONLY = pools(obs(replicas=1, pods=1, unreachable=("ep-a",)))
LOST_ONE = pools(
    obs(replicas=2, pods=2, ready_replicas=1, current_revision_ready=1, unreachable=("ep-b",))
)
LOST_FAILING_PENDING = pools(
    obs(P, replicas=1, pods=1, unreachable=("ep-a",), failing=CRASH),
    obs(Q, replicas=1, pods=1, unschedulable=SCHEDULER),
)
LOST_MANY = pools(obs(replicas=12, pods=12, unreachable=tuple(f"ep-{i:02}" for i in range(12))))


def rollout(
    phase: str,
    *,
    current: str = B,
    healthy: str | None = A,
    applied: str | None = None,
    message: str = "",
    analysis: AnalysisStatus | None = None,
    restore_problems: tuple[str, ...] = (),
) -> RolloutDecision:
    failed = phase in ("RolledBack", "Failed")
    state = RolloutStatus(
        current_revision=current,
        phase=phase,  # type: ignore[arg-type]
        since="2026-01-01T11:00:00Z",
        last_healthy_revision=healthy,
        failed_revision=current if failed else None,
        message=message,
        analysis=analysis,
    )
    restored = phase == "RolledBack" and healthy is not None
    return RolloutDecision(
        state=state,
        applied_revision=applied or (healthy if restored else current) or current,
        restore_problems=restore_problems,
    )


ROLLED_BACK = rollout(
    "RolledBack", message=f"revision {B} failed: pool p: crash-looping; restored revision {A}"
)
FAILED = rollout(
    "Failed", healthy=None, message=f"revision {B} failed: no healthy revision to return to"
)
CANARY = rollout(
    "Canary", analysis=AnalysisStatus(phase="Running", message="12 requests so far", pool=P)
)
CANARY_FULL = rollout(
    "Canary",
    analysis=AnalysisStatus(
        phase="Pending", message="the canary replica is not ready yet", pool=Q, full_pools=[P, Q]
    ),
)
REPLACING = rollout("Progressing")
HEALTHY = rollout("Healthy", current=B, healthy=B)
FIRST = rollout("Progressing", healthy=None)


def capacity(mode: str | None) -> RolloutCapacity:
    return RolloutCapacity(
        revision=B,
        full_pools=[P],
        pool=P if mode else None,
        mode=mode,  # type: ignore[arg-type]
        since="2026-01-01T11:30:00Z",
        scheduler=SCHEDULER,
        message=f"pool {P} is full for revision {B} (the scheduler: {SCHEDULER}): {mode}",
    )


ROUTER_DOWN = RouterStatus(replicas=2, ready_replicas=0, ready="0/2")
ROUTER_UP = RouterStatus(replicas=2, ready_replicas=1, ready="1/2")
NO_ROUTER = RouterStatus(replicas=0, ready_replicas=0, ready="0/0")
REFUSED = [("Deployment/ep-reserved-h100", 'spec.template: Invalid value: "x"')]

R_OK = ("Ready", "True", "ReplicasReady")
P_STABLE = ("Progressing", "False", "Stable")
D_OK = ("Degraded", "False", "AsExpected")
BLOCKED = ("Progressing", "False", "Blocked")


def inputs(**kw: Any) -> ConditionInputs:
    """A served endpoint of 2 desired replicas unless a row says otherwise."""
    return ConditionInputs(**{"desired": 2, "can_scale_from_zero": True, **kw})


# (case, inputs, [(type, status, reason)] in order, {type: substring of its message})
TABLE: list[tuple[str, ConditionInputs, list[tuple[str, str, str]], dict[str, str]]] = [
    # --- a failed pass, a spec that cannot be served (no observation counts) ---
    ("ReconcileError: Degraded alone, naming the error",
     inputs(reconcile_error="boom", observed=ALL_READY, refused=REFUSED),
     [("Degraded", "True", "ReconcileError")],
     {"Degraded": "could not reconcile this endpoint: boom"}),
    ("ReconcileError over a spec problem", inputs(reconcile_error="boom", problem="bad"),
     [("Degraded", "True", "ReconcileError")], {}),
    ("InvalidSpec: no remedy but the message",
     inputs(problem="spec.scaling: minReplicas > maxReplicas", observed=ALL_READY),
     [("Ready", "False", "InvalidSpec"), BLOCKED, ("Degraded", "True", "InvalidSpec")],
     {"Degraded": "minReplicas > maxReplicas", "Progressing": "waiting for a valid spec"}),
    ("ReferenceNotFound (a ConfigMap or PVC): create it",
     inputs(problem="spec.model.source.pvc: PersistentVolumeClaim 'w' does not exist",
            problem_reason="ReferenceNotFound"),
     [("Ready", "False", "ReferenceNotFound"), BLOCKED,
      ("Degraded", "True", "ReferenceNotFound")],
     {"Degraded": "Create the object (or fix the reference)", "Ready": "does not exist"}),
    ("InsufficientGPUMemory: the memory remedies",
     inputs(problem="the model fits on none of the pools", problem_reason="InsufficientGPUMemory"),
     [("Ready", "False", "InsufficientGPUMemory"), BLOCKED,
      ("Degraded", "True", "InsufficientGPUMemory")],
     {"Degraded": "spec.runtime.kvCacheDtype fp8"}),
    ("UnknownPool: use a pool the config defines",
     inputs(problem="spec.gpu.pools[0]: unknown pool 'x'", problem_reason="UnknownPool"),
     [("Ready", "False", "UnknownPool"), BLOCKED, ("Degraded", "True", "UnknownPool")],
     {"Degraded": "Use a pool the operator config defines"}),
    ("UnknownModel: set spec.model.profile",
     inputs(problem="no built-in profile: set spec.model.profile", problem_reason="UnknownModel"),
     [("Ready", "False", "UnknownModel"), BLOCKED, ("Degraded", "True", "UnknownModel")],
     {"Degraded": "Set spec.model.profile with the model's architecture numbers"}),
    ("a spec problem wins over refused children and a broken router",
     inputs(problem="bad", refused=REFUSED, router=ROUTER_DOWN),
     [("Ready", "False", "InvalidSpec"), BLOCKED, ("Degraded", "True", "InvalidSpec")], {}),
    # --- from the observed replicas ---
    ("ScaledToZero, can scale from zero: Ready",
     inputs(desired=0, observed=pools(obs(replicas=0))),
     [("Ready", "True", "ScaledToZero"), ("Progressing", "False", "Stable"), D_OK],
     {"Ready": "the router holds the next request"}),
    ("ScaledToZero, paused (maxReplicas 0): not Ready",
     inputs(desired=0, can_scale_from_zero=False, observed=pools(obs(replicas=0))),
     [("Ready", "False", "ScaledToZero"), ("Progressing", "False", "Stable"), D_OK],
     {"Ready": "maxReplicas is 0 (paused)"}),
    ("all ready: ReplicasReady, Stable", inputs(observed=ALL_READY), [R_OK, P_STABLE, D_OK],
     {"Ready": "2/2 replicas ready", "Progressing": "2 replicas of the current revision"}),
    ("starting: NoReplicasReady, WaitingForReplicas", inputs(observed=STARTING),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      D_OK],
     {"Ready": "loading weights", "Progressing": "0/2 replicas of the current revision"}),
    ("one of two ready: Ready, still WaitingForReplicas", inputs(observed=ONE_READY),
     [R_OK, ("Progressing", "True", "WaitingForReplicas"), D_OK], {"Ready": "1/2"}),
    ("older pods serve: RollingOut", inputs(observed=OLD_SERVE),
     [R_OK, ("Progressing", "True", "RollingOut"), D_OK], {}),
    ("more pods than desired: ScalingDown",
     inputs(observed=pools(obs(replicas=2, pods=4, ready_replicas=2, current_revision_ready=2))),
     [R_OK, ("Progressing", "True", "ScalingDown"), D_OK], {"Progressing": "4 pods, 2 desired"}),
    ("Unschedulable: quoted in Ready and Degraded, with the remedies",
     inputs(observed=UNSCHEDULABLE),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "Unschedulable")],
     {"Ready": "Insufficient nvidia.com/gpu", "Degraded": "spec.gpu.tensorParallelSize"}),
    ("ReplicasFailing: the kubelet's reason", inputs(observed=FAILING),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasFailing")],
     {"Ready": "CrashLoopBackOff", "Degraded": CRASH}),
    ("Unschedulable wins over ReplicasFailing", inputs(observed=UNSCHEDULABLE_AND_FAILING),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "Unschedulable")],
     {"Degraded": "Insufficient nvidia.com/gpu. Free or add GPU nodes"}),
    # --- the rollout ---
    ("a first revision: the observed conditions stand", inputs(observed=ONE_READY, rollout=FIRST),
     [R_OK, ("Progressing", "True", "WaitingForReplicas"), D_OK], {}),
    ("Healthy: the observed conditions stand", inputs(observed=ALL_READY, rollout=HEALTHY),
     [R_OK, P_STABLE, D_OK], {}),
    ("RollingOut over a healthy revision",
     inputs(observed=ONE_READY, rollout=REPLACING),
     [R_OK, ("Progressing", "True", "RollingOut"), D_OK],
     {"Progressing": f"revision {B} replaces {A}: 1/2 replicas of it ready"}),
    ("RolledBack, restoring: Progressing True; Degraded RolloutFailed",
     inputs(observed=RESTORED_HALF, rollout=ROLLED_BACK),
     [R_OK, ("Progressing", "True", "RolledBack"), ("Degraded", "True", "RolloutFailed")],
     {"Progressing": f"revision {B} rolled back to {A}: 1/2", "Degraded": "crash-looping"}),
    ("RolledBack, restored: Progressing False",
     inputs(observed=ALL_READY, rollout=ROLLED_BACK),
     [R_OK, ("Progressing", "False", "RolledBack"), ("Degraded", "True", "RolloutFailed")],
     {"Progressing": "change the spec to try again"}),
    ("RolledBack with restore problems: named in Degraded",
     inputs(observed=ALL_READY, rollout=rollout(
         "RolledBack", message="failed", restore_problems=("pool p keeps no ReplicaSet",))),
     [R_OK, ("Progressing", "False", "RolledBack"), ("Degraded", "True", "RolloutFailed")],
     {"Degraded": "failed; pool p keeps no ReplicaSet"}),
    ("RolledBack wins over the observed RollingOut and ReplicasFailing",
     inputs(observed=pools(obs(replicas=2, pods=3, ready_replicas=2, failing=CRASH)),
            rollout=ROLLED_BACK),
     [R_OK, ("Progressing", "True", "RolledBack"), ("Degraded", "True", "RolloutFailed")], {}),
    ("Failed (no healthy revision): RolloutFailed twice",
     inputs(observed=FAILING, rollout=FAILED),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "False", "RolloutFailed"),
      ("Degraded", "True", "RolloutFailed")],
     {"Progressing": "no healthy revision to return to"}),
    ("CanaryAnalysis: the healthy revision serves",
     inputs(observed=ALL_READY, rollout=CANARY),
     [R_OK, ("Progressing", "True", "CanaryAnalysis"), D_OK],
     {"Progressing": f"beside {A}: analysis Running: 12 requests so far"}),
    ("a canary with every pool full: WaitingForCapacity, never failed",
     inputs(observed=ALL_READY, rollout=CANARY_FULL),
     [R_OK, ("Progressing", "True", "WaitingForCapacity"), D_OK],
     {"Progressing": f"no pool has room for it (full: {P}, {Q})"}),
    # --- capacity ---
    ("capacity SurgeElsewhere: SurgingElsewhere over RollingOut",
     inputs(observed=ONE_READY, rollout=REPLACING, capacity=capacity("SurgeElsewhere")),
     [R_OK, ("Progressing", "True", "SurgingElsewhere"), D_OK],
     {"Progressing": "SurgeElsewhere"}),
    ("capacity ReplaceWithBorrowed: ReplacingInPlace",
     inputs(observed=ONE_READY, rollout=REPLACING, capacity=capacity("ReplaceWithBorrowed")),
     [R_OK, ("Progressing", "True", "ReplacingInPlace"), D_OK], {"Progressing": "the scheduler"}),
    ("capacity ReplaceInPlace: ReplacingInPlace",
     inputs(observed=ONE_READY, rollout=REPLACING, capacity=capacity("ReplaceInPlace")),
     [R_OK, ("Progressing", "True", "ReplacingInPlace"), D_OK], {"Progressing": P}),
    ("capacity Waiting: WaitingForCapacity; the surge pod is the rollout's own",
     inputs(observed=SURGE_PENDING, rollout=REPLACING, capacity=capacity("Waiting"),
            rollouts_own_pending=True),
     [R_OK, ("Progressing", "True", "WaitingForCapacity"), D_OK],
     {"Progressing": SCHEDULER, "Degraded": "the rollout's surge replicas"}),
    ("capacity Waiting over a Stable Progressing too",
     inputs(observed=ALL_READY, capacity=capacity("Waiting")),
     [R_OK, ("Progressing", "True", "WaitingForCapacity"), D_OK], {}),
    ("a pending pod not the rollout's own stays Unschedulable",
     inputs(observed=SURGE_PENDING, rollout=REPLACING, capacity=capacity("Waiting")),
     [R_OK, ("Progressing", "True", "WaitingForCapacity"), ("Degraded", "True", "Unschedulable")],
     {}),
    ("full pools remembered, no pool handled: as observed",
     inputs(observed=SURGE_PENDING, rollout=REPLACING, capacity=capacity(None)),
     [R_OK, ("Progressing", "True", "RollingOut"), ("Degraded", "True", "Unschedulable")], {}),
    ("the rollout's own pending pod without capacity state: no degradation",
     inputs(observed=SURGE_PENDING, rollout=REPLACING, rollouts_own_pending=True),
     [R_OK, ("Progressing", "True", "RollingOut"), D_OK], {}),
    ("a rollback stands over capacity",
     inputs(observed=SURGE_PENDING, rollout=ROLLED_BACK, capacity=capacity("Waiting"),
            rollouts_own_pending=True),
     [R_OK, ("Progressing", "True", "RolledBack"), ("Degraded", "True", "RolloutFailed")], {}),
    ("a canary stands over capacity",
     inputs(observed=ALL_READY, rollout=CANARY, capacity=capacity("Waiting")),
     [R_OK, ("Progressing", "True", "CanaryAnalysis"), D_OK], {}),
    ("capacity does not hide a crash-looping pod",
     inputs(observed=SERVING_FAILING, rollout=REPLACING, capacity=capacity("Waiting"),
            rollouts_own_pending=True),
     [R_OK, ("Progressing", "True", "WaitingForCapacity"),
      ("Degraded", "True", "ReplicasFailing")], {}),
    # --- unreachable replicas (Ready in the cluster, silent to the operator's reads) ---
    ("the only replica unreachable: ReplicasUnreachable in Ready and Degraded",
     inputs(desired=1, observed=LOST_ONLY),
     [("Ready", "False", "ReplicasUnreachable"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasUnreachable")],
     {"Ready": "0/1 replicas reachable: ep-a", "Degraded": "ep-a: the cluster shows them Ready"}),
    ("one of two unreachable: Ready on the other, Degraded names the lost one",
     inputs(observed=LOST_ONE),
     [R_OK, ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasUnreachable")],
     {"Ready": "1/2 replicas ready", "Degraded": "ep-b: the cluster shows them Ready"}),
    ("ReplicasUnreachable over ReplicasFailing and Unschedulable, saying the node may be lost",
     inputs(observed=LOST_FAILING_PENDING),
     [("Ready", "False", "ReplicasUnreachable"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasUnreachable")],
     {"Degraded": "Their node may be lost"}),
    ("a rollback's RolloutFailed stands over ReplicasUnreachable",
     inputs(observed=LOST_ONE, rollout=ROLLED_BACK),
     [R_OK, ("Progressing", "True", "RolledBack"), ("Degraded", "True", "RolloutFailed")], {}),
    ("ReplicasUnreachable stays over RouterUnavailable (Ready is already False)",
     inputs(desired=1, observed=LOST_ONLY, router=ROUTER_DOWN),
     [("Ready", "False", "ReplicasUnreachable"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasUnreachable")], {}),
    ("ChildRefused over ReplicasUnreachable",
     inputs(desired=1, observed=LOST_ONLY, refused=REFUSED),
     [("Ready", "False", "ReplicasUnreachable"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ChildRefused")], {}),
    ("many unreachable: ten named, the rest counted",
     inputs(desired=12, observed=LOST_MANY),
     [("Ready", "False", "ReplicasUnreachable"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasUnreachable")],
     {"Ready": "ep-00, ep-01", "Degraded": "ep-09 and 2 more"}),
    ("scaled to zero: a leftover unreachable pod changes nothing in Ready",
     inputs(desired=0, observed=pools(obs(replicas=0, pods=1, unreachable=("ep-a",)))),
     [("Ready", "True", "ScaledToZero"), ("Progressing", "True", "ScalingDown"),
      ("Degraded", "True", "ReplicasUnreachable")], {}),
    # --- routers ---
    ("RouterUnavailable over ReplicasReady", inputs(observed=ALL_READY, router=ROUTER_DOWN),
     [("Ready", "False", "RouterUnavailable"), P_STABLE, D_OK],
     {"Ready": "0/2 router pods ready"}),
    ("RouterUnavailable over a Ready ScaledToZero",
     inputs(desired=0, observed=pools(obs(replicas=0)), router=ROUTER_DOWN),
     [("Ready", "False", "RouterUnavailable"), P_STABLE, D_OK], {}),
    ("the replicas' own reason stays over RouterUnavailable",
     inputs(observed=STARTING, router=ROUTER_DOWN),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"), D_OK],
     {"Ready": "loading weights"}),
    ("one router ready: as observed", inputs(observed=ALL_READY, router=ROUTER_UP),
     [R_OK, P_STABLE, D_OK], {}),
    ("no router wanted: as observed", inputs(observed=ALL_READY, router=NO_ROUTER),
     [R_OK, P_STABLE, D_OK], {}),
    # --- Secrets ---
    ("ReferenceNotFound from a missing Secret, naming the field",
     inputs(desired=1, observed=SECRET_MISSING, secret_refs=[KEY_REF]),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReferenceNotFound")],
     {"Degraded": "spec.auth.apiKeySecretRef: Secret 'api-key' does not exist"}),
    ("another Secret's message stays ReplicasFailing",
     inputs(desired=1, observed=SECRET_MISSING,
            secret_refs=[Reference("Secret", "other", "k", "spec.auth.apiKeySecretRef")]),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ReplicasFailing")], {}),
    ("a rollback wins over a missing Secret",
     inputs(desired=1, observed=SECRET_MISSING, secret_refs=[KEY_REF], rollout=ROLLED_BACK),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "RolledBack"),
      ("Degraded", "True", "RolloutFailed")], {}),
    # --- refused children ---
    ("ChildRefused quoting the API server", inputs(observed=ALL_READY, refused=REFUSED),
     [R_OK, P_STABLE, ("Degraded", "True", "ChildRefused")],
     {"Degraded": "the API server refused Deployment/ep-reserved-h100: spec.template"}),
    ("ChildRefused over ReplicasFailing", inputs(observed=FAILING, refused=REFUSED),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ChildRefused")], {}),
    ("ChildRefused over a missing Secret",
     inputs(desired=1, observed=SECRET_MISSING, secret_refs=[KEY_REF], refused=REFUSED),
     [("Ready", "False", "NoReplicasReady"), ("Progressing", "True", "WaitingForReplicas"),
      ("Degraded", "True", "ChildRefused")], {}),
    ("ChildRefused over RolloutFailed; Progressing stays the rollback's",
     inputs(observed=ALL_READY, rollout=ROLLED_BACK, refused=REFUSED),
     [R_OK, ("Progressing", "False", "RolledBack"), ("Degraded", "True", "ChildRefused")], {}),
    ("ChildRefused over Unschedulable; Ready stays RouterUnavailable",
     inputs(observed=SURGE_PENDING, router=ROUTER_DOWN, refused=REFUSED),
     [("Ready", "False", "RouterUnavailable"), ("Progressing", "True", "RollingOut"),
      ("Degraded", "True", "ChildRefused")], {}),
    ("a long refusal is cut",
     inputs(observed=ALL_READY, refused=[("ConfigMap/c", "x" * 3000)]),
     [R_OK, P_STABLE, ("Degraded", "True", "ChildRefused")], {"Degraded": "x…. Fix"}),
]  # fmt: skip


@pytest.mark.parametrize("row", TABLE, ids=[r[0] for r in TABLE])
def test_endpoint_conditions(row: tuple[Any, ...]) -> None:
    _, given, expected, messages = row
    got = endpoint_conditions(given)
    assert [(u.type, u.status, u.reason) for u in got] == expected
    by_type = {u.type: u.message for u in got}
    for type_, part in messages.items():
        assert part in by_type[type_], (type_, by_type[type_])


def test_every_reason_the_module_gives_has_a_row() -> None:
    reasons = {reason for _, _, expected, _ in TABLE for _, _, reason in expected}
    assert reasons >= {
        "ReconcileError", "InvalidSpec", "ReferenceNotFound", "InsufficientGPUMemory",
        "UnknownPool", "UnknownModel", "Blocked", "ScaledToZero", "ReplicasReady",
        "NoReplicasReady", "RollingOut", "WaitingForReplicas", "ScalingDown", "Stable",
        "AsExpected", "Unschedulable", "ReplicasFailing", "RolloutFailed", "RolledBack",
        "CanaryAnalysis", "WaitingForCapacity", "SurgingElsewhere", "ReplacingInPlace",
        "RouterUnavailable", "ChildRefused", "ReplicasUnreachable",
    }  # fmt: skip
    assert len(OVERRIDES) == 9  # a new rule: a row above for it and for what it wins over


def test_long_reconcile_errors_are_cut() -> None:
    (degraded,) = endpoint_conditions(ConditionInputs(reconcile_error="e" * 5000))
    assert len(degraded.message) == 2000


@pytest.mark.parametrize(
    ("problems", "reason"),
    [
        (["spec.gpu.pools[0]: unknown pool 'x'"], "UnknownPool"),
        (["the model fits on none of the pools"], "InsufficientGPUMemory"),
        (["set spec.model.profile"], "UnknownModel"),
        (["anything else"], "InvalidSpec"),
        ([], "AsExpected"),
    ],
)
def test_problem_reason_is_the_first_problems(problems: list[str], reason: str) -> None:
    assert problem_reason(SimpleNamespace(problems=problems)) == reason  # type: ignore[arg-type]
