"""The rollout decision (pure): tables for each transition, properties for safety."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api.canary import CanarySpec
from magistral_operator.api.spec import RolloutSpec
from magistral_operator.api.status import RolloutStatus
from magistral_operator.rollout import (
    RESTART_THRESHOLD,
    PoolRollout,
    decide,
    healthy_template,
    restore_template,
)
from magistral_operator.status.endpoint_conditions import ConditionInputs, endpoint_conditions
from magistral_operator.status.observe import PoolObservation

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POOL = "reserved-h100"
A, B = "aaaa", "bbbb"


def deployment(
    revision: str,
    *,
    replicas: int = 2,
    updated: int = 2,
    available: int = 2,
    total: int | None = None,
    generation: int = 3,
    observed: int = 3,
    deadline: bool = False,
) -> dict[str, Any]:
    conditions = []
    if deadline:
        conditions.append(
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            }
        )
    return {
        "metadata": {"name": f"ep-{POOL}", "generation": generation},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"magistral.dev/revision": revision}}},
        },
        "status": {
            "observedGeneration": observed,
            "replicas": replicas if total is None else total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "conditions": conditions,
        },
    }


def replica_set(revision: str, number: int) -> dict[str, Any]:
    labels = {"magistral.dev/revision": revision, "magistral.dev/pool": POOL}
    return {
        "metadata": {
            "labels": {**labels, "pod-template-hash": f"h{number}"},
            "annotations": {"deployment.kubernetes.io/revision": str(number)},
        },
        "spec": {
            "template": {
                "metadata": {
                    "creationTimestamp": None,
                    "labels": {**labels, "pod-template-hash": f"h{number}"},
                },
                "spec": {"containers": [{"name": "vllm", "image": f"img:{revision}"}]},
            }
        },
    }


def pod(revision: str, *, restarts: int = 0, waiting: str | None = None, phase: str = "Running"):
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {
        "metadata": {
            "name": f"pod-{revision}",
            "labels": {"magistral.dev/revision": revision, "magistral.dev/pool": POOL},
        },
        "status": {
            "phase": phase,
            "containerStatuses": [{"restartCount": restarts, "state": state}],
        },
    }


def state(phase: str, *, current: str = B, healthy: str | None = A, failed: str | None = None):
    return RolloutStatus(
        current_revision=current,
        phase=phase,  # type: ignore[arg-type]
        since="2026-01-01T11:00:00Z",
        last_healthy_revision=healthy,
        failed_revision=failed,
    )


def observe(dep: dict[str, Any] | None, *, pods: tuple[Any, ...] = (), sets: tuple[Any, ...] = ()):
    return [PoolRollout(pool=POOL, deployment=dep, replica_sets=sets, pods=pods)]


CRASH = pod(B, restarts=RESTART_THRESHOLD, waiting="CrashLoopBackOff")
SETS = (replica_set(A, 1), replica_set(B, 2))


TRANSITIONS = [
        ("first revision starts", None, observe(None), True, "Progressing", B, "RolloutStarted"),
        (
            "a new spec starts over after a failure",
            state("RolledBack", current=A, healthy=A, failed=A),
            observe(deployment(A)),
            True,
            "Progressing",
            B,
            "RolloutStarted",
        ),
        ("waits while rolling", state("Progressing"), observe(deployment(B, available=1)), True,
         "Progressing", B, None),
        ("old pods still there", state("Progressing"), observe(deployment(B, total=3)), True,
         "Progressing", B, None),
        ("stale generation", state("Progressing"), observe(deployment(B, observed=2)), True,
         "Progressing", B, None),
        ("template not yet applied", state("Progressing"), observe(deployment(A)), True,
         "Progressing", B, None),
        ("all available: healthy", state("Progressing"), observe(deployment(B)), True,
         "Healthy", B, "RolloutSucceeded"),
        ("few restarts: wait", state("Progressing"),
         observe(deployment(B, available=0),
                 pods=(pod(B, restarts=RESTART_THRESHOLD - 1, waiting="CrashLoopBackOff"),),
                 sets=SETS),
         True, "Progressing", B, None),
        ("crash-loop: rolled back", state("Progressing"),
         observe(deployment(B, available=0), pods=(CRASH,), sets=SETS), True,
         "RolledBack", A, "RolledBack"),
        ("failed pod: rolled back", state("Progressing"),
         observe(deployment(B, available=0), pods=(pod(B, phase="Failed"),), sets=SETS), True,
         "RolledBack", A, "RolledBack"),
        ("deadline: rolled back", state("Progressing"),
         observe(deployment(B, available=0, deadline=True), sets=SETS), True,
         "RolledBack", A, "RolledBack"),
        ("crash-loop, no autoRollback", state("Progressing"),
         observe(deployment(B, available=0), pods=(CRASH,), sets=SETS), False,
         "Failed", B, "RolloutFailed"),
        ("crash-loop, nothing healthy", state("Progressing", healthy=None),
         observe(deployment(B, available=0), pods=(CRASH,), sets=SETS), True,
         "Failed", B, "RolloutFailed"),
        ("crash-loop, healthy RS gone", state("Progressing"),
         observe(deployment(B, available=0), pods=(CRASH,), sets=(replica_set(B, 2),)), True,
         "Failed", B, "RolloutFailed"),
        ("old revision's crash is not ours", state("Progressing"),
         observe(deployment(B, available=1),
                 pods=(pod(A, restarts=9, waiting="CrashLoopBackOff"),), sets=SETS),
         True, "Progressing", B, None),
        ("rolled back stays rolled back", state("RolledBack", failed=B),
         observe(deployment(A), sets=SETS), True, "RolledBack", A, None),
        ("healthy is never judged again", state("Healthy", healthy=B),
         observe(deployment(B, available=0), pods=(CRASH,), sets=SETS), True,
         "Healthy", B, None),
]  # fmt: skip
"""(case, previous state, observations, autoRollback, phase, applied revision, Event)."""


@pytest.mark.parametrize("row", TRANSITIONS, ids=[row[0] for row in TRANSITIONS])
def test_transitions(row: tuple[Any, ...]) -> None:
    case, previous, pools, auto, phase, applied, event = row
    decision = decide(
        revision=B,
        pools=pools,
        rollout=RolloutSpec(auto_rollback=auto, canary=CanarySpec(enabled=False)),
        state=previous,
        now=NOW,
        desired_replicas=2,
    )
    assert decision.state.phase == phase, case
    assert decision.applied_revision == applied, case
    assert [e.reason for e in decision.events] == ([event] if event else []), case
    assert decision.state.current_revision == B
    if applied == A:
        assert decision.templates[POOL]["spec"]["containers"][0]["image"] == "img:aaaa"
    else:
        assert decision.templates == {}


def test_rollback_records_what_and_why() -> None:
    decision = decide(
        revision=B,
        pools=observe(deployment(B, available=0), pods=(CRASH,), sets=SETS),
        rollout=RolloutSpec(),
        state=state("Progressing"),
        now=NOW,
        desired_replicas=2,
    )
    assert decision.state.failed_revision == B
    assert decision.state.last_healthy_revision == A
    assert decision.state.since == "2026-01-01T12:00:00Z"
    assert "revision bbbb failed" in decision.state.message
    assert "crash-looping" in decision.state.message
    assert "restored revision aaaa" in decision.state.message
    observed = {POOL: PoolObservation(pool=POOL, ready_replicas=2, current_revision_ready=2)}
    inputs = ConditionInputs(desired=2, observed=observed, rollout=decision)
    overrides = {o.type: o for o in endpoint_conditions(inputs)}
    assert overrides["Degraded"].reason == "RolloutFailed"
    assert overrides["Degraded"].status == "True"
    assert overrides["Progressing"].reason == "RolledBack"
    assert decision.events[0].type == "Warning"


def test_a_new_revision_whose_pods_already_fail_is_judged_at_once() -> None:
    """The operator crashed after applying revision B and before recording its start: the
    next pass meets B's crash-looping pods with the state still Healthy on A, and fails the
    rollout in that pass (announcing its start too) rather than first reporting the pods as a
    plain ReplicasFailing and failing it one pass later (the fault suite's positions 48/49)."""
    pools = observe(deployment(B, available=0), pods=(CRASH,), sets=SETS)
    decision = decide(
        revision=B,
        pools=pools,
        rollout=RolloutSpec(canary=CanarySpec(enabled=False)),
        state=state("Healthy", current=A, healthy=A),
        now=NOW,
        desired_replicas=2,
    )
    assert (decision.state.phase, decision.applied_revision) == ("RolledBack", A)
    assert [e.reason for e in decision.events] == ["RolloutStarted", "RolledBack"]
    assert "crash-looping" in decision.state.message
    fresh = decide(
        revision=B,
        pools=observe(deployment(A), sets=SETS),  # B's pods do not exist yet: nothing to judge
        rollout=RolloutSpec(canary=CanarySpec(enabled=False)),
        state=state("Healthy", current=A, healthy=A),
        now=NOW,
        desired_replicas=2,
    )
    assert (fresh.state.phase, [e.reason for e in fresh.events]) == (
        "Progressing",
        ["RolloutStarted"],
    )


def test_rolling_out_over_a_healthy_revision_says_so() -> None:
    decision = decide(
        revision=B,
        pools=observe(deployment(B, available=1)),
        rollout=RolloutSpec(),
        state=state("Progressing"),
        now=NOW,
        desired_replicas=2,
    )
    observed = {POOL: PoolObservation(pool=POOL, ready_replicas=2, current_revision_ready=1)}
    _, progressing, _ = endpoint_conditions(
        ConditionInputs(desired=2, observed=observed, rollout=decision)
    )
    assert (progressing.status, progressing.reason) == ("True", "RollingOut")


def test_healthy_template_is_the_newest_of_the_revision_without_its_hash() -> None:
    sets = (replica_set(A, 1), replica_set(A, 4), replica_set(B, 5))
    template = healthy_template(observe(None, sets=sets)[0], revision=A)
    assert template is not None
    assert template["metadata"]["labels"] == {
        "magistral.dev/revision": A,
        "magistral.dev/pool": POOL,
    }
    assert "creationTimestamp" not in template["metadata"]
    restored = restore_template(
        {"metadata": {"labels": {"magistral.dev/revision": B}}, "spec": {"replicas": 2}},
        template=template,
        revision=A,
    )
    assert restored["metadata"]["labels"]["magistral.dev/revision"] == A
    assert restored["spec"] == {"replicas": 2, "template": template}


# Properties ---------------------------------------------------------------------------------

revisions = st.sampled_from([A, B, "cccc"])
phases = st.sampled_from(["Progressing", "Healthy", "RolledBack", "Failed"])


@st.composite
def states(draw: st.DrawFn) -> RolloutStatus | None:
    """Reachable states: Healthy records its revision, RolledBack/Failed their failed one."""
    if draw(st.booleans()):
        return None
    current, phase = draw(revisions), draw(phases)
    healthy = draw(st.none() | revisions.filter(lambda r: r != current))
    return RolloutStatus(
        current_revision=current,
        phase=phase,
        since="2026-01-01T11:00:00Z",
        last_healthy_revision=current if phase == "Healthy" else healthy,
        failed_revision=current if phase in ("RolledBack", "Failed") else None,
    )


@st.composite
def observations(draw: st.DrawFn) -> list[PoolRollout]:
    revision = draw(revisions)
    replicas = draw(st.integers(0, 3))
    dep = deployment(
        revision,
        replicas=replicas,
        updated=draw(st.integers(0, replicas)),
        available=draw(st.integers(0, replicas)),
        total=draw(st.integers(replicas, replicas + 1)),
        observed=draw(st.integers(2, 3)),
        deadline=draw(st.booleans()),
    )
    pods = draw(
        st.lists(
            st.builds(
                pod,
                revisions,
                restarts=st.integers(0, 5),
                waiting=st.none() | st.just("CrashLoopBackOff"),
                phase=st.sampled_from(["Running", "Failed"]),
            ),
            max_size=3,
        )
    )
    sets = draw(st.lists(st.builds(replica_set, revisions, st.integers(1, 5)), max_size=3))
    return observe(draw(st.none() | st.just(dep)), pods=tuple(pods), sets=tuple(sets))


@settings(max_examples=300, deadline=None)
@given(
    revision=revisions,
    pools=observations(),
    previous=states(),
    auto=st.booleans(),
    minutes=st.integers(0, 600),
)
def test_properties(
    revision: str,
    pools: list[PoolRollout],
    previous: RolloutStatus | None,
    auto: bool,
    minutes: int,
) -> None:
    now = NOW + timedelta(minutes=minutes)
    spec = RolloutSpec(auto_rollback=auto)

    def run(s: RolloutStatus | None) -> Any:
        return decide(
            revision=revision, pools=pools, rollout=spec, state=s, now=now, desired_replicas=2
        )

    first = run(previous)
    # Deterministic for identical inputs.
    assert run(previous) == first
    # A healthy revision is never replaced by a failed one.
    if (
        previous is not None
        and previous.phase == "Healthy"
        and previous.current_revision == revision
    ):
        assert first.state == previous
        assert first.templates == {}
    assert first.state.failed_revision != first.state.last_healthy_revision or (
        first.state.failed_revision is None
    )
    if first.state.phase == "RolledBack":
        assert first.applied_revision in (revision, first.state.last_healthy_revision)
        assert first.applied_revision != first.state.failed_revision or not first.templates
    if first.state.phase == "Healthy":
        assert first.state.last_healthy_revision == first.state.current_revision
    # Idempotent: at most two steps reach a fixed point that posts nothing more.
    second = run(first.state)
    third = run(second.state)
    assert third.state == second.state
    assert third.events == ()
    assert run(third.state) == third


def test_status_patch_nulls_fields_dropped_at_any_depth() -> None:
    from magistral_operator.status.patch import merge_patch

    old = {"rollout": {"phase": "RolledBack", "failedRevision": B}, "url": "u", "keep": [1]}
    new = {"rollout": {"phase": "Progressing"}, "keep": [2]}
    assert merge_patch(old, new) == {
        "rollout": {"phase": "Progressing", "failedRevision": None},
        "url": None,
        "keep": [2],
    }
