"""Every rule for the endpoint's Ready / Progressing / Degraded conditions, in one place (pure).

`endpoint_conditions(inputs)` is the only entry point: the reconcile gathers a
`ConditionInputs` (plain facts: the spec's problem, the observations per pool, the rollout's
decision, the capacity state, the routers, the refused children, the Secret references) and
writes what it returns. **To add a condition: one rule function here (and its place in
`OVERRIDES`) and a row in tests/unit/test_endpoint_conditions.py.**

Precedence, first match wins:

1. **ReconcileError** (`inputs.reconcile_error`): only `Degraded=True, ReconcileError` is
   returned (`handlers/reconcile.report_failure` writes that alone).
2. **A spec that cannot be served** (`inputs.problem`): `Ready=False` and `Degraded=True` with
   the problem's reason and its remedy, `Progressing=False, Blocked`. Reasons: `InvalidSpec`
   (the spec fails validation), `ReferenceNotFound` (a ConfigMap or PVC it names is missing),
   and for a plan's first problem (`problem_reason`) `UnknownPool`, `InsufficientGPUMemory`,
   `UnknownModel` or `InvalidSpec`.
3. Otherwise each condition starts from the observed replicas (`ready_from_replicas`,
   `progressing_from_replicas`, `degraded_from_replicas`):

   - Ready: `ScaledToZero` (True when maxReplicas > 0 so a replica starts for a request,
     False when paused), `ReplicasReady` (True, one Ready replica is enough), else
     `NoReplicasReady` (False, quoting the scheduler or the kubelet).
   - Progressing: `RollingOut` (pods of an older revision serve while the current one starts)
     or `WaitingForReplicas` while fewer replicas of the current revision are ready than
     desired; `ScalingDown` with more pods than desired; else `Stable` (False).
   - Degraded: `Unschedulable` (wins over) `ReplicasFailing`; else `AsExpected` (False).

   then `OVERRIDES` apply in order, each given the condition as the rules before it left it
   (so a later rule wins over an earlier one):

   a. **Rollout** (`rollout_progressing`, `rollout_degraded`), from `status.rollout`'s phase:
      RolledBack → Progressing `RolledBack` (True while the restored revision is not all
      ready) and Degraded `RolloutFailed`; Failed → Progressing and Degraded `RolloutFailed`;
      Canary with every pool full → Progressing `WaitingForCapacity`; Canary → Progressing
      `CanaryAnalysis`; Progressing over a healthy revision → Progressing `RollingOut`. These
      replace the observed Progressing/Degraded (a rollback wins over a crash-looping pod).
   b. **Capacity** (`capacity_progressing`, `capacity_degraded`), from
      `status.rollout.capacity`: while its rules handle a pool, a replica-driven Progressing
      (`RollingOut`, `WaitingForReplicas`, `ScalingDown`, `Stable`) becomes
      `SurgingElsewhere`, `ReplacingInPlace` or `WaitingForCapacity`, never a rollout's
      `RolledBack`/`RolloutFailed`/`CanaryAnalysis`; `Degraded=Unschedulable` becomes
      `AsExpected` when every Unschedulable pod is the rollout's own.
   c0. **Unreachable replicas** (`replicas_unreachable_ready`, `replicas_unreachable`): pods
      the cluster shows Ready that the demand read judged unreachable (silent on consecutive
      reads, or silent and dropped by every router; kube/demand.py), and pods Kubernetes
      shows on a lost node (`observe.node_lost`), are not counted as ready (rule 3 already
      leaves them out); a `NoReplicasReady` Ready becomes
      `ReplicasUnreachable` naming them, and Degraded becomes `ReplicasUnreachable` (a lost
      node is likely) over `AsExpected`, `Unschedulable` and `ReplicasFailing`, not over a
      rollout's `RolloutFailed`.
   c. **Routers** (`router_unavailable`): a Ready=True becomes `RouterUnavailable` while no
      router pod is ready (a reason the replicas give for not being ready stays).
   d. **Secrets** (`secret_not_found`): a `ReplicasFailing` Degraded whose kubelet message is
      a missing Secret (or key) the spec names becomes `ReferenceNotFound`, naming the field.
   e. **Refused children** (`child_refused`): Degraded becomes `ChildRefused`, quoting the
      API server, whatever it was (it is the last rule: it wins over everything above).

The conditions are always returned in the order Ready, Progressing, Degraded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..api.status import (
    DEGRADED,
    PROGRESSING,
    READY,
    ConditionStatus,
    RolloutCapacity,
    RouterStatus,
)
from ..plan import EndpointPlan
from ..references import Reference, secret_problem
from ..rollout import RolloutDecision, canary_waits_for_capacity
from .conditions import ConditionUpdate
from .observe import PoolObservation


@dataclass(frozen=True)
class ConditionInputs:
    """The facts the conditions are computed from (gathered by handlers/reconcile.py)."""

    problem: str | None = None
    """Why the spec cannot be served as written (rule 2), or None."""
    problem_reason: str = "InvalidSpec"
    """The problem's reason: InvalidSpec, ReferenceNotFound or `problem_reason(plan)`."""
    desired: int = 0
    """The plan's desired replicas."""
    observed: Mapping[str, PoolObservation] = field(default_factory=dict)
    """The observations per usable pool."""
    can_scale_from_zero: bool = False
    """spec.scaling.maxReplicas > 0: at zero replicas a request starts one."""
    rollout: RolloutDecision | None = None
    """This pass's rollout decision (its state, applied revision and restore problems)."""
    capacity: RolloutCapacity | None = None
    """The capacity rules' state this pass (rollout_capacity.decide)."""
    rollouts_own_pending: bool = False
    """Every Unschedulable engine pod is the rollout's own (rollout_capacity.owns_pending)."""
    router: RouterStatus | None = None
    refused: Sequence[tuple[str, str]] = ()
    """Children the API server refused: (Kind/name, its message)."""
    secret_refs: Sequence[Reference] = ()
    """The references the spec makes (the Secrets among them are checked, rule d)."""
    reconcile_error: str | None = None
    """An unexpected failure of the pass (rule 1), or None."""

    @property
    def current_ready(self) -> int:
        return sum(o.current_revision_ready for o in self.observed.values())


# --- 1. a failed pass ----------------------------------------------------------------------

RECONCILE_ERROR_MESSAGE_LIMIT = 2000


def reconcile_error(error: str) -> ConditionUpdate:
    """Degraded=True, ReconcileError, naming the error."""
    message = f"the operator could not reconcile this endpoint: {error}"
    return ConditionUpdate(
        DEGRADED, "True", "ReconcileError", message[:RECONCILE_ERROR_MESSAGE_LIMIT]
    )


# --- 2. a spec that cannot be served -------------------------------------------------------

REMEDIES = {
    "ReferenceNotFound": "Create the object (or fix the reference); the operator checks again "
    "on its next pass and then creates the endpoint's pods.",
    "InsufficientGPUMemory": "Use a pool with more GPU memory, allow a larger "
    "spec.gpu.tensorParallelSize (or 'auto'), serve the FP8 checkpoint, set "
    "spec.runtime.kvCacheDtype fp8, or lower spec.runtime.maxModelLen.",
    "UnknownPool": "Use a pool the operator config defines (see the message) or ask the "
    "platform team to add one.",
    "UnknownModel": "Set spec.model.profile with the model's architecture numbers.",
}


def _reason_for_problem(problem: str) -> str:
    if "unknown pool" in problem:
        return "UnknownPool"
    if "fits on none" in problem:
        return "InsufficientGPUMemory"
    if "spec.model.profile" in problem:
        return "UnknownModel"
    return "InvalidSpec"


def problem_reason(plan: EndpointPlan) -> str:
    """CamelCase reason for the first problem of a plan that cannot be served."""
    return _reason_for_problem(plan.problems[0]) if plan.problems else "AsExpected"


def spec_problem(message: str, reason: str) -> list[ConditionUpdate]:
    """Conditions for a spec the operator cannot serve: the user must change it."""
    remedy = REMEDIES.get(reason)
    if remedy:
        message = f"{message}. {remedy}"
    return [
        ConditionUpdate(READY, "False", reason, message),
        ConditionUpdate(PROGRESSING, "False", "Blocked", "waiting for a valid spec"),
        ConditionUpdate(DEGRADED, "True", reason, message),
    ]


# --- 3. from the observed replicas ---------------------------------------------------------


def _unschedulable(inputs: ConditionInputs) -> str | None:
    return next((o.unschedulable for o in inputs.observed.values() if o.unschedulable), None)


def _failing(inputs: ConditionInputs) -> str | None:
    return next((o.failing for o in inputs.observed.values() if o.failing), None)


def ready_from_replicas(inputs: ConditionInputs) -> ConditionUpdate:
    """At zero replicas the endpoint is Ready when it can scale from zero (maxReplicas above 0:
    the routers hold a request and the autoscaler starts a replica); paused otherwise."""
    desired = inputs.desired
    ready = sum(o.ready_replicas for o in inputs.observed.values())
    if desired == 0 and inputs.can_scale_from_zero:
        return ConditionUpdate(
            READY,
            "True",
            "ScaledToZero",
            "no replica runs: the router holds the next request and a replica starts for it",
        )
    if desired == 0:
        return ConditionUpdate(READY, "False", "ScaledToZero", "maxReplicas is 0 (paused)")
    if ready > 0:
        return ConditionUpdate(READY, "True", "ReplicasReady", f"{ready}/{desired} replicas ready")
    why = _unschedulable(inputs) or _failing(inputs) or "replicas are starting (loading weights)"
    return ConditionUpdate(READY, "False", "NoReplicasReady", f"0/{desired} replicas ready: {why}")


def progressing_from_replicas(inputs: ConditionInputs) -> ConditionUpdate:
    desired, current_ready = inputs.desired, inputs.current_ready
    ready = sum(o.ready_replicas for o in inputs.observed.values())
    pods = sum(o.pods for o in inputs.observed.values())
    if current_ready < desired:
        reason = "RollingOut" if ready > current_ready else "WaitingForReplicas"
        return ConditionUpdate(
            PROGRESSING,
            "True",
            reason,
            f"{current_ready}/{desired} replicas of the current revision ready",
        )
    if pods > desired:
        return ConditionUpdate(
            PROGRESSING, "True", "ScalingDown", f"{pods} pods, {desired} desired"
        )
    return ConditionUpdate(
        PROGRESSING, "False", "Stable", f"{desired} replicas of the current revision ready"
    )


def degraded_from_replicas(inputs: ConditionInputs) -> ConditionUpdate:
    unschedulable = _unschedulable(inputs)
    if unschedulable:
        return ConditionUpdate(
            DEGRADED,
            "True",
            "Unschedulable",
            f"replicas cannot be scheduled: {unschedulable.rstrip('. ')}. Free or add GPU "
            "nodes in the endpoint's pools, add a pool to spec.gpu.pools, or lower "
            "spec.scaling.minReplicas or spec.gpu.tensorParallelSize.",
        )
    failing = _failing(inputs)
    if failing:
        return ConditionUpdate(DEGRADED, "True", "ReplicasFailing", failing)
    return ConditionUpdate(DEGRADED, "False", "AsExpected", "no problems observed")


# --- a. the rollout ------------------------------------------------------------------------


def rollout_progressing(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Progressing as the rollout state has it (docs/rollout.md); `given` when it says
    nothing (no rollout, a first revision, Healthy)."""
    decision = inputs.rollout
    if decision is None:
        return given
    state, current_ready, desired = decision.state, inputs.current_ready, inputs.desired
    if state.phase == "RolledBack":
        restoring: ConditionStatus = "True" if current_ready < desired else "False"
        return ConditionUpdate(
            PROGRESSING,
            restoring,
            "RolledBack",
            f"revision {state.failed_revision} rolled back to {decision.applied_revision}: "
            f"{current_ready}/{desired} replicas of it ready; change the spec to try again",
        )
    if state.phase == "Failed":
        return ConditionUpdate(PROGRESSING, "False", "RolloutFailed", state.message)
    if state.phase == "Canary" and canary_waits_for_capacity(state):
        analysis = state.analysis
        assert analysis is not None
        return ConditionUpdate(
            PROGRESSING,
            "True",
            "WaitingForCapacity",
            f"the canary replica of revision {state.current_revision} waits for capacity: "
            f"no pool has room for it (full: {', '.join(analysis.full_pools)}): "
            f"{analysis.message}; {state.last_healthy_revision} keeps serving",
        )
    if state.phase == "Canary":
        analysis = state.analysis
        return ConditionUpdate(
            PROGRESSING,
            "True",
            "CanaryAnalysis",
            f"revision {state.current_revision} runs one canary replica beside "
            f"{state.last_healthy_revision}: analysis "
            f"{analysis.phase if analysis else 'Pending'}"
            + (f": {analysis.message}" if analysis and analysis.message else ""),
        )
    if (
        state.phase == "Progressing"
        and state.last_healthy_revision is not None
        and state.last_healthy_revision != state.current_revision
    ):
        return ConditionUpdate(
            PROGRESSING,
            "True",
            "RollingOut",
            f"revision {state.current_revision} replaces {state.last_healthy_revision}: "
            f"{current_ready}/{desired} replicas of it ready; healthy once all have stayed "
            "Ready for spec.rollout.healthySeconds",
        )
    return given


def rollout_degraded(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Degraded=True, RolloutFailed, once the revision failed (rolled back or not)."""
    decision = inputs.rollout
    if decision is None:
        return given
    state = decision.state
    if state.phase == "RolledBack":
        message = state.message
        if decision.restore_problems:
            message += "; " + "; ".join(decision.restore_problems)
        return ConditionUpdate(DEGRADED, "True", "RolloutFailed", message)
    if state.phase == "Failed":
        return ConditionUpdate(DEGRADED, "True", "RolloutFailed", state.message)
    return given


# --- b. capacity ---------------------------------------------------------------------------

CAPACITY_REASONS: dict[str, str] = {
    "SurgeElsewhere": "SurgingElsewhere",
    "ReplaceWithBorrowed": "ReplacingInPlace",
    "ReplaceInPlace": "ReplacingInPlace",
    "Waiting": "WaitingForCapacity",
}
"""Progressing's reason per `status.rollout.capacity.mode` (docs/rollout.md, Capacity)."""

REPLICA_PROGRESS = ("RollingOut", "WaitingForReplicas", "ScalingDown", "Stable")


def capacity_progressing(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Progressing=True naming the full pool and quoting the scheduler (the state's message)
    while the capacity rules handle a pool; a rollout's failure or canary stands."""
    state = inputs.capacity
    if state is None or state.mode is None or given.reason not in REPLICA_PROGRESS:
        return given
    return ConditionUpdate(PROGRESSING, "True", CAPACITY_REASONS[state.mode], state.message)


def capacity_degraded(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """No degradation when the only Unschedulable pods are the rollout's own: the endpoint
    serves all its replicas; waiting for capacity is reported by Progressing."""
    if given.reason != "Unschedulable" or not inputs.rollouts_own_pending:
        return given
    return ConditionUpdate(
        DEGRADED,
        "False",
        "AsExpected",
        "no problems observed: the only Unschedulable pods are the rollout's surge "
        "replicas (see Progressing)",
    )


# --- c0. unreachable replicas ------------------------------------------------------------

UNREACHABLE_NAMES_SHOWN = 10


def _unreachable(inputs: ConditionInputs) -> str | None:
    """The unreachable pods' names, for a message (None: there are none)."""
    names = sorted(n for o in inputs.observed.values() for n in o.unreachable)
    if not names:
        return None
    shown = ", ".join(names[:UNREACHABLE_NAMES_SHOWN])
    more = len(names) - UNREACHABLE_NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


UNREACHABLE_WHY = (
    "the cluster shows them Ready but they did not answer the operator's reads on consecutive "
    "passes (or the routers dropped them), or Kubernetes marked them not Ready because their "
    "node stopped reporting"
)


def replicas_unreachable_ready(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Ready=False, ReplicasUnreachable, when every replica the cluster shows Ready is
    unreachable (no reachable replica serves)."""
    names = _unreachable(inputs)
    if names is None or given.reason != "NoReplicasReady":
        return given
    return ConditionUpdate(
        READY,
        "False",
        "ReplicasUnreachable",
        f"0/{inputs.desired} replicas reachable: {names}: {UNREACHABLE_WHY}",
    )


UNREACHABLE_OVER = ("AsExpected", "Unschedulable", "ReplicasFailing")


def replicas_unreachable(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Degraded=True, ReplicasUnreachable, naming the pods and the likely cause (a lost node:
    Kubernetes marks its pods not Ready only after its node-monitor grace period)."""
    names = _unreachable(inputs)
    if names is None or given.reason not in UNREACHABLE_OVER:
        return given
    return ConditionUpdate(
        DEGRADED,
        "True",
        "ReplicasUnreachable",
        f"replicas unreachable: {names}: {UNREACHABLE_WHY}. Their node may be lost: Kubernetes "
        "marks its pods not Ready after its node-monitor grace period and replaces them once "
        "they are evicted; check the nodes (kubectl get pods -o wide, kubectl get nodes).",
    )


# --- c. the routers ------------------------------------------------------------------------


def router_unavailable(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Ready=False, RouterUnavailable, while no router pod is ready.

    Every request goes through the routers: with none ready the endpoint serves nothing,
    whatever its replicas. Only a Ready=True is overridden (a reason the replicas give for not
    being ready stays); Degraded is left to what the pods show (a router pod that crash-loops
    or cannot be scheduled is reported there by the kubelet's reasons).
    """
    router = inputs.router
    if router is None or router.replicas == 0 or router.ready_replicas > 0:
        return given
    if given.status != "True":
        return given
    return ConditionUpdate(
        READY,
        "False",
        "RouterUnavailable",
        f"0/{router.replicas} router pods ready: requests to the endpoint's Service fail "
        "until one is (see status.router and the router pods' events)",
    )


# --- d. Secrets ----------------------------------------------------------------------------


def secret_not_found(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Degraded=True, ReferenceNotFound, naming the field, when the kubelet reports that a
    Secret the endpoint names (or its key) does not exist (CreateContainerConfigError)."""
    if given.reason != "ReplicasFailing":
        return given
    problem = secret_problem(given.message, list(inputs.secret_refs))
    if problem is None:
        return given
    return ConditionUpdate(
        DEGRADED,
        "True",
        "ReferenceNotFound",
        f"{problem}. Create the Secret (or fix the reference).",
    )


# --- e. refused children -------------------------------------------------------------------

REFUSAL_MESSAGE_LIMIT = 2000


def child_refused(inputs: ConditionInputs, given: ConditionUpdate) -> ConditionUpdate:
    """Degraded=True, ChildRefused, quoting the API server, when it refused some children.
    The other conditions stay as observed: the children that were applied keep serving."""
    if not inputs.refused:
        return given
    quoted = "; ".join(
        f"the API server refused {label}: {message}" for label, message in inputs.refused
    )
    if len(quoted) > REFUSAL_MESSAGE_LIMIT:
        quoted = quoted[: REFUSAL_MESSAGE_LIMIT - 1] + "…"
    return ConditionUpdate(
        DEGRADED,
        "True",
        "ChildRefused",
        f"{quoted}. Fix the endpoint's spec (the message names the field); the operator "
        "retries with back-off and at once when the spec changes.",
    )


# --- the order -----------------------------------------------------------------------------

Rule = Callable[[ConditionInputs, ConditionUpdate], ConditionUpdate]

OVERRIDES: tuple[tuple[str, Rule], ...] = (
    (PROGRESSING, rollout_progressing),
    (DEGRADED, rollout_degraded),
    (PROGRESSING, capacity_progressing),
    (DEGRADED, capacity_degraded),
    (READY, replicas_unreachable_ready),
    (DEGRADED, replicas_unreachable),
    (READY, router_unavailable),
    (DEGRADED, secret_not_found),
    (DEGRADED, child_refused),
)
"""(condition type, rule) in order of application: a later rule wins."""


def endpoint_conditions(inputs: ConditionInputs) -> list[ConditionUpdate]:
    """Ready, Progressing and Degraded for this pass (the module docstring's precedence)."""
    if inputs.reconcile_error is not None:
        return [reconcile_error(inputs.reconcile_error)]
    if inputs.problem is not None:
        return spec_problem(inputs.problem, inputs.problem_reason)
    conditions = {
        READY: ready_from_replicas(inputs),
        PROGRESSING: progressing_from_replicas(inputs),
        DEGRADED: degraded_from_replicas(inputs),
    }
    for type_, rule in OVERRIDES:
        conditions[type_] = rule(inputs, conditions[type_])
    return [conditions[READY], conditions[PROGRESSING], conditions[DEGRADED]]
