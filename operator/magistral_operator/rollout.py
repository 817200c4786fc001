"""Revision rollouts that prove health, with automatic rollback (pure; docs/rollout.md).

Inputs, every pass: the revision the spec renders now, what the cluster shows for each pool's
Deployment (its status and conditions, its ReplicaSets with their `magistral.dev/revision`
labels and pod templates, its pods), `spec.rollout`, the state persisted in `status.rollout`
and the time. Output: the state to persist, the revision to apply, the pod templates that
replace the rendered ones (a rollback) and the Events to post.

- **New revision**: phase Progressing (or Canary); pods of it that exist already (an operator
  that crashed after applying it and before recording the start) are judged at once.
- **Healthy**: every pool's Deployment has observed its generation, carries the revision in its
  pod template, and all its replicas are updated *and available*: with `minReadySeconds =
  healthySeconds` a new pod counts as available only after staying Ready that long, and the
  old pods are removed only then (KubeAI's rule: a new revision replaces the old one only when
  its replicas are ready). The revision becomes `lastHealthyRevision`; it is never judged again.
- **Failed**: a pod of the revision is Failed, or its container crash-loops with at least
  `RESTART_THRESHOLD` restarts, or the Deployment reports `ProgressDeadlineExceeded` (unless
  the scheduler caused it: `deadline_from_capacity`, rollout_capacity.py).
- **Rollback** (`autoRollback`, and a healthy revision to return to): the last healthy
  revision's pod template, taken from its ReplicaSet (Kubernetes keeps `revisionHistoryLimit`
  of them), is applied instead of the rendered one for as long as the spec renders the failed
  revision. A spec with a new revision hash tries again. Without autoRollback the Deployment
  is left as it is (phase Failed) and the failure is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .api.config import CANARY_POOL_NAME
from .api.labels import POOL_LABEL, REVISION_LABEL
from .api.spec import RolloutSpec
from .api.status import AnalysisStatus, RolloutPhase, RolloutStatus
from .api.timestamps import rfc3339
from .rollout_analysis import Verdict

CANARY_POOL = CANARY_POOL_NAME
"""The pool label of the canary replica's pods (a reserved pool name): its Deployment's selector
does not overlap any pool Deployment's, and no pool's observations count it."""

RESTART_THRESHOLD = 3
"""Restarts of a crash-looping container of the new revision that fail the rollout."""

POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
RS_REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CRASH_REASONS = frozenset({"CrashLoopBackOff", "RunContainerError", "Error"})


@dataclass(frozen=True)
class PoolRollout:
    """What the cluster shows for one pool: its Deployment, ReplicaSets and pods."""

    pool: str
    deployment: Mapping[str, Any] | None
    replica_sets: Sequence[Mapping[str, Any]] = ()
    pods: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class EventNote:
    """An Event to post once the state is persisted."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutDecision:
    """The rollout's answer for this pass."""

    state: RolloutStatus
    applied_revision: str
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: tuple[EventNote, ...] = ()
    restore_problems: tuple[str, ...] = ()
    canary: bool = False
    """Run one replica of the rendered revision beside the restored ones (phase Canary)."""
    canary_pool: str | None = None
    """The pool the canary replica runs on."""


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _template_revision(deployment: Mapping[str, Any]) -> str | None:
    template = (deployment.get("spec") or {}).get("template") or {}
    return _labels(template).get(REVISION_LABEL)


def revision_pods(observed: PoolRollout, *, revision: str) -> list[Mapping[str, Any]]:
    """The pool's pods of `revision` that are not being deleted."""
    return [
        pod
        for pod in observed.pods
        if _labels(pod).get(REVISION_LABEL) == revision
        and _labels(pod).get(POOL_LABEL) == observed.pool
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    ]


def pod_failure(pod: Mapping[str, Any]) -> str | None:
    """Why a pod counts as failed for a rollout, or None."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"pod {name} failed ({status.get('reason') or 'Error'})"
    for cs in status.get("containerStatuses") or []:
        restarts = int(cs.get("restartCount") or 0)
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in CRASH_REASONS and restarts >= RESTART_THRESHOLD:
            return f"pod {name} is crash-looping ({waiting['reason']}, {restarts} restarts)"
    return None


def pool_failure(observed: PoolRollout, *, revision: str) -> str | None:
    """Why `revision` failed on this pool, or None."""
    deployment = observed.deployment
    if deployment is not None and _template_revision(deployment) == revision:
        meta, status = deployment.get("metadata") or {}, deployment.get("status") or {}
        current = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        for cond in status.get("conditions") or []:
            if (
                current
                and cond.get("type") == "Progressing"
                and cond.get("status") == "False"
                and cond.get("reason") == "ProgressDeadlineExceeded"
                and not deadline_from_capacity(observed, revision=revision, cond=cond)
            ):
                return f"pool {observed.pool}: progress deadline exceeded ({cond.get('message')})"
    for pod in revision_pods(observed, revision=revision):
        why = pod_failure(pod)
        if why:
            return f"pool {observed.pool}: {why}"
    return None


# --- capacity: a deadline the scheduler caused is no failure (docs/rollout.md, Capacity) ---


def _pod_scheduled(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled":
            return dict(cond)
    return None


def deadline_from_capacity(
    observed: PoolRollout, *, revision: str, cond: Mapping[str, Any]
) -> bool:
    """Whether the pool's ProgressDeadlineExceeded comes from GPU capacity, not the revision:
    a pod of the revision on the pool is Unschedulable now, or one was scheduled only after
    the deadline was declared (room appeared since; Kubernetes keeps the condition until the
    Deployment progresses again)."""
    declared = str(cond.get("lastUpdateTime") or cond.get("lastTransitionTime") or "")
    for pod in revision_pods(observed, revision=revision):
        scheduled = _pod_scheduled(pod)
        if scheduled is None:
            continue
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return True
        when = str(scheduled.get("lastTransitionTime") or "")
        if scheduled.get("status") == "True" and declared and when > declared:
            return True  # RFC 3339 UTC stamps of one format order as text
    return False


# --- end capacity ---


def pool_healthy(observed: PoolRollout, *, revision: str) -> bool:
    """Every replica of the pool's Deployment runs `revision` and is available."""
    deployment = observed.deployment
    if deployment is None:
        return False
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    replicas = int(spec.get("replicas") or 0)
    return (
        _template_revision(deployment) == revision
        and int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= replicas
        and int(status.get("availableReplicas") or 0) >= replicas
        and int(status.get("replicas") or 0) == replicas
    )


def healthy_template(observed: PoolRollout, *, revision: str) -> dict[str, Any] | None:
    """The pod template of `revision` from the pool's newest ReplicaSet that carries it."""
    candidates = [
        rs
        for rs in observed.replica_sets
        if _labels(rs).get(REVISION_LABEL) == revision
        and _labels(rs).get(POOL_LABEL) == observed.pool
    ]
    if not candidates:
        return None

    def order(rs: Mapping[str, Any]) -> int:
        annotations = (rs.get("metadata") or {}).get("annotations") or {}
        try:
            return int(annotations.get(RS_REVISION_ANNOTATION) or 0)
        except ValueError:
            return 0

    template = dict((max(candidates, key=order).get("spec") or {}).get("template") or {})
    meta = dict(template.get("metadata") or {})
    meta.pop("creationTimestamp", None)
    meta["labels"] = {
        k: v for k, v in (meta.get("labels") or {}).items() if k != POD_TEMPLATE_HASH_LABEL
    }
    template["metadata"] = meta
    return template


def restore_template(
    deployment: Mapping[str, Any], *, template: Mapping[str, Any], revision: str
) -> dict[str, Any]:
    """A rendered Deployment with `template` (a healthy revision's) in place of its own."""
    meta = dict(deployment["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), REVISION_LABEL: revision}
    return {
        **deployment,
        "metadata": meta,
        "spec": {**deployment["spec"], "template": dict(template)},
    }


def _state(
    previous: RolloutStatus | None,
    *,
    revision: str,
    phase: RolloutPhase,
    since: str,
    **changes: Any,
) -> RolloutStatus:
    base = {
        "current_revision": revision,
        "phase": phase,
        "since": since,
        "last_healthy_revision": previous.last_healthy_revision if previous else None,
        "failed_revision": previous.failed_revision if previous else None,
        "message": previous.message if previous else "",
        "analysis": None,
    }
    base.update(changes)
    return RolloutStatus(**base)


def _restore(
    *, state: RolloutStatus, pools: Sequence[PoolRollout], rollout: RolloutSpec, revision: str
) -> RolloutDecision:
    """Apply the last healthy revision's templates while the spec renders a failed revision."""
    target = state.last_healthy_revision
    holding = state.phase == "Canary" or (state.phase == "RolledBack" and rollout.auto_rollback)
    if not holding or target is None:
        return RolloutDecision(state=state, applied_revision=revision)
    templates: dict[str, dict[str, Any]] = {}
    problems = []
    for observed in pools:
        template = healthy_template(observed, revision=target)
        if template is None:
            problems.append(f"pool {observed.pool} keeps no ReplicaSet of revision {target}")
        else:
            templates[observed.pool] = template
    return RolloutDecision(
        state=state,
        applied_revision=target if templates else revision,
        templates=templates,
        restore_problems=tuple(problems),
        canary=state.phase == "Canary",
        canary_pool=state.analysis.pool if state.analysis else None,
    )


def canary_wanted(rollout: RolloutSpec, *, replacing: str | None, desired_replicas: int) -> bool:
    """Whether a new revision is analysed as a canary first (spec.rollout.canary.enabled unset:
    yes whenever there is a healthy revision serving to compare it with)."""
    return rollout.canary.enabled is not False and replacing is not None and desired_replicas > 0


def _fail(
    state: RolloutStatus,
    *,
    pools: Sequence[PoolRollout],
    rollout: RolloutSpec,
    revision: str,
    failure: str,
    stamp: str,
    analysis: AnalysisStatus | None = None,
) -> RolloutDecision:
    """Roll back to the last healthy revision, or report the failure where there is none."""
    target = state.last_healthy_revision
    can_restore = rollout.auto_rollback and target is not None and target != revision
    if can_restore and any(healthy_template(p, revision=target or "") for p in pools):
        message = f"revision {revision} failed: {failure}; restored revision {target}"
        failed = _state(
            state,
            revision=revision,
            phase="RolledBack",
            since=stamp,
            failed_revision=revision,
            message=message,
            analysis=analysis,
        )
        decision = _restore(state=failed, pools=pools, rollout=rollout, revision=revision)
        return RolloutDecision(
            state=failed,
            applied_revision=decision.applied_revision,
            templates=decision.templates,
            restore_problems=decision.restore_problems,
            events=(EventNote("Warning", "RolledBack", message),),
        )
    if not rollout.auto_rollback:
        left = "spec.rollout.autoRollback is false: the Deployments are left as they are"
    else:
        left = "no healthy revision to return to: the Deployments are left as they are"
    message = f"revision {revision} failed: {failure}; {left}"
    failed = _state(
        state,
        revision=revision,
        phase="Failed",
        since=stamp,
        failed_revision=revision,
        message=message,
        analysis=analysis,
    )
    return RolloutDecision(
        state=failed,
        applied_revision=revision,
        events=(EventNote("Warning", "RolloutFailed", message),),
    )


def _canary_placed(
    state: RolloutStatus, *, pools: Sequence[str], full: str | None
) -> RolloutStatus:
    """The canary moved to the next pool with room when its pool was found full; it stays on
    the last pool tried (its Pending pod waits there) when none has room."""
    analysis = state.analysis or AnalysisStatus(phase="Pending")
    if full is None or full in analysis.full_pools or full != analysis.pool:
        return state
    known = [*analysis.full_pools, full]
    room = [p for p in pools if p not in known]
    moved = analysis.model_copy(
        update={"full_pools": known, "pool": room[0] if room else analysis.pool}
    )
    return state.model_copy(update={"analysis": moved})


def canary_waits_for_capacity(state: RolloutStatus) -> bool:
    """Every pool the canary may run on was found full (it stays on the last one tried)."""
    analysis = state.analysis
    return bool(
        analysis is not None
        and analysis.phase == "Pending"
        and analysis.pool in analysis.full_pools
    )


def _canary_pass(
    state: RolloutStatus,
    *,
    pools: Sequence[PoolRollout],
    canary: PoolRollout | None,
    verdict: Verdict | None,
    rollout: RolloutSpec,
    revision: str,
    stamp: str,
) -> RolloutDecision:
    """Phase Canary: the healthy revision serves, one replica of `revision` is analysed."""
    previous = state.analysis or AnalysisStatus(phase="Pending")
    failure = pool_failure(canary, revision=revision) if canary is not None else None
    if failure is not None:
        analysis = previous.model_copy(update={"phase": "Failed", "message": failure})
        return _fail(
            state,
            pools=pools,
            rollout=rollout,
            revision=revision,
            failure=f"canary: {failure}",
            stamp=stamp,
            analysis=analysis,
        )
    if verdict is None:
        return _restore(state=state, pools=pools, rollout=rollout, revision=revision)
    starts = previous.phase == "Pending" and verdict.phase != "Pending"
    analysis = AnalysisStatus(
        phase=verdict.phase,
        canary_pod=verdict.pod or previous.canary_pod,
        started_at=None
        if verdict.phase == "Pending"
        else stamp
        if starts or (verdict.pod is not None and verdict.pod != previous.canary_pod)
        else previous.started_at,
        canary_requests=verdict.canary_requests,
        baseline_requests=verdict.baseline_requests,
        message=verdict.message,
        pool=previous.pool,
        full_pools=previous.full_pools,
    )
    if verdict.phase == "Failed":
        return _fail(
            state,
            pools=pools,
            rollout=rollout,
            revision=revision,
            failure=f"canary analysis failed: {verdict.message}",
            stamp=stamp,
            analysis=analysis,
        )
    if verdict.phase == "Successful":
        promoted = _state(
            state, revision=revision, phase="Progressing", since=stamp, analysis=analysis
        )
        return RolloutDecision(
            state=promoted,
            applied_revision=revision,
            events=(
                EventNote(
                    "Normal",
                    "CanaryPromoted",
                    f"revision {revision} passed its canary analysis ({verdict.message}); "
                    "rolling it out to every replica",
                ),
            ),
        )
    held = state.model_copy(update={"analysis": analysis})
    return _restore(state=held, pools=pools, rollout=rollout, revision=revision)


def decide(
    *,
    revision: str,
    pools: Sequence[PoolRollout],
    rollout: RolloutSpec,
    state: RolloutStatus | None,
    now: datetime,
    desired_replicas: int,
    canary: PoolRollout | None = None,
    verdict: Verdict | None = None,
    canary_pools: Sequence[str] = (),
    canary_full: str | None = None,
) -> RolloutDecision:
    """One rollout pass (see the module docstring).

    `canary` is what the cluster shows of the canary replica's Deployment and pods, `verdict`
    the analysis of its window so far (rollout_analysis.judge; None while it cannot be read),
    `canary_pools` the pools it may run on in fill order, `canary_full` the pool where its pod
    stayed Unschedulable past the pool's overflow delay (this pass).
    """
    stamp = rfc3339(now)
    if state is None or state.current_revision != revision:
        # A new revision (or the first): it has to prove itself; a new spec tries again.
        replacing = state.last_healthy_revision if state else None
        analysed = canary_wanted(rollout, replacing=replacing, desired_replicas=desired_replicas)
        started = _state(
            state,
            revision=revision,
            phase="Canary" if analysed else "Progressing",
            since=stamp,
            failed_revision=None,
            message="",
            analysis=(
                AnalysisStatus(
                    phase="Pending",
                    message="the canary replica is starting",
                    pool=canary_pools[0] if canary_pools else None,
                )
                if analysed
                else None
            ),
        )
        what = f"revision {revision}" + (f" replaces {replacing}" if replacing else "")
        if analysed:
            what += (
                f"; one canary replica is analysed first ({rollout.canary.analysis_seconds} s "
                "window, spec.rollout.canary)"
            )
        announced = EventNote("Normal", "RolloutStarted", f"rolling out {what}")
        # Pods of the revision may exist already (an operator that crashed after applying it
        # and before recording the start): they are judged at once, as the next pass would.
        failure = (
            None
            if analysed
            else next((why for p in pools if (why := pool_failure(p, revision=revision))), None)
        )
        if failure is not None:
            failed = _fail(
                started,
                pools=pools,
                rollout=rollout,
                revision=revision,
                failure=failure,
                stamp=stamp,
            )
            return replace(failed, events=(announced, *failed.events))
        decision = (
            _restore(state=started, pools=pools, rollout=rollout, revision=revision)
            if analysed
            else RolloutDecision(state=started, applied_revision=revision)
        )
        return RolloutDecision(
            state=started,
            applied_revision=decision.applied_revision,
            templates=decision.templates,
            restore_problems=decision.restore_problems,
            canary=decision.canary,
            events=(announced,),
        )
    if state.phase == "Canary":
        return _canary_pass(
            _canary_placed(state, pools=canary_pools, full=canary_full),
            pools=pools,
            canary=canary,
            verdict=verdict,
            rollout=rollout,
            revision=revision,
            stamp=stamp,
        )
    if state.phase in ("RolledBack", "Failed"):
        return _restore(state=state, pools=pools, rollout=rollout, revision=revision)
    if state.phase == "Healthy":
        return RolloutDecision(state=state, applied_revision=revision)

    # Progressing: judge the revision.
    failure = next((why for p in pools if (why := pool_failure(p, revision=revision))), None)
    if failure is not None:
        return _fail(
            state,
            pools=pools,
            rollout=rollout,
            revision=revision,
            failure=failure,
            stamp=stamp,
            analysis=state.analysis,
        )
    if desired_replicas > 0 and pools and all(pool_healthy(p, revision=revision) for p in pools):
        healthy = _state(
            state,
            revision=revision,
            phase="Healthy",
            since=stamp,
            last_healthy_revision=revision,
            analysis=state.analysis,
        )
        return RolloutDecision(
            state=healthy,
            applied_revision=revision,
            events=(
                EventNote(
                    "Normal",
                    "RolloutSucceeded",
                    f"revision {revision} is healthy: every replica stayed Ready "
                    f"{rollout.healthy_seconds}s",
                ),
            ),
        )
    return RolloutDecision(state=state, applied_revision=revision)
