"""Status conditions: transition bookkeeping, the status object and the pool observations.

The Ready/Progressing/Degraded table is tests/unit/test_endpoint_conditions.py.
"""

from __future__ import annotations

from magistral_operator.api.config import OperatorConfig
from magistral_operator.api.status import Condition, MagistralEndpointStatus
from magistral_operator.plan import plan_endpoint
from magistral_operator.status.compute import build_status, status_changed
from magistral_operator.status.conditions import ConditionUpdate, merge_conditions
from magistral_operator.status.endpoint_conditions import ConditionInputs, endpoint_conditions
from magistral_operator.status.observe import PoolObservation, observe_pool

from .conftest import endpoint_from_spec

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def cond(type_: str, status: str, reason: str = "R", time: str = T0) -> Condition:
    return Condition(
        type=type_, status=status, reason=reason, message="m", last_transition_time=time
    )


def test_transition_time_moves_only_on_a_flip() -> None:
    previous = [cond("Ready", "False", "NoReplicasReady")]
    same, transitions = merge_conditions(
        previous, [ConditionUpdate("Ready", "False", "Other", "new message")], now=T1, generation=2
    )
    assert same[0].last_transition_time == T0
    assert same[0].reason == "Other"
    assert same[0].observed_generation == 2
    assert transitions == []
    flipped, transitions = merge_conditions(
        previous, [ConditionUpdate("Ready", "True", "ReplicasReady", "1/1")], now=T1, generation=2
    )
    assert flipped[0].last_transition_time == T1
    assert [(t.type, t.old_status, t.new.status) for t in transitions] == [
        ("Ready", "False", "True")
    ]


def test_new_conditions_get_now() -> None:
    merged, transitions = merge_conditions(
        [], [ConditionUpdate("Degraded", "False", "AsExpected", "")], now=T1, generation=1
    )
    assert merged[0].last_transition_time == T1
    assert transitions[0].old_status is None


def test_status_is_rewritten_only_when_it_changes(operator_config: OperatorConfig) -> None:
    endpoint = endpoint_from_spec({"auth": {"disabled": True}})
    plan = plan_endpoint(endpoint, operator_config)
    observed = {
        "reserved-h100": PoolObservation(
            pool="reserved-h100", replicas=1, pods=1, ready_replicas=1, current_revision_ready=1
        )
    }

    def build(previous: MagistralEndpointStatus, now: str) -> MagistralEndpointStatus:
        status, _ = build_status(
            previous=previous,
            generation=1,
            now=now,
            updates=endpoint_conditions(
                ConditionInputs(desired=plan.desired_replicas, observed=observed)
            ),
            plan=plan,
            observed=observed,
            revision="abc",
            url="http://ep.ns.svc.cluster.local/v1",
            served_model_name="m",
            startup_budget_seconds=100,
            startup_budget="100s",
        )
        return status

    first = build(MagistralEndpointStatus(), T0)
    assert status_changed(MagistralEndpointStatus(), first)
    second = build(first, T1)  # later, same world
    assert not status_changed(first, second)
    assert first.tensor_parallel_size == 1
    assert first.gpu_product == "NVIDIA-H100-80GB-HBM3"
    assert first.pools[0].kv_cache_tokens == 171264


def pod(
    name: str, *, pool: str, revision: str, ready: bool = False, **status: object
) -> dict[str, object]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {
        "metadata": {
            "name": name,
            "labels": {"magistral.dev/pool": pool, "magistral.dev/revision": revision},
        },
        "status": {"conditions": conditions, **status},
    }


def test_observe_pool_counts_and_reasons() -> None:
    pods = [
        pod("a", pool="p", revision="r2", ready=True),
        pod("b", pool="p", revision="r1", ready=True),
        pod("c", pool="other", revision="r2", ready=True),
        {
            "metadata": {"name": "d", "labels": {"magistral.dev/pool": "p"}},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ]
            },
        },
        pod(
            "e",
            pool="p",
            revision="r2",
            containerStatuses=[{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
        ),
    ]
    seen = observe_pool(pool="p", deployment={"spec": {"replicas": 3}}, pods=pods, revision="r2")
    assert (seen.replicas, seen.pods, seen.ready_replicas, seen.current_revision_ready) == (
        3,
        4,
        2,
        1,
    )
    assert seen.unschedulable is not None
    assert "Insufficient nvidia.com/gpu" in seen.unschedulable
    assert seen.failing == "pod e: CrashLoopBackOff"


def test_spec_warnings() -> None:
    from magistral_operator.status.compute import spec_warnings

    unpinned = endpoint_from_spec({"auth": {"disabled": True}, "runtime": {"maxModelLen": 65536}})
    text = " ".join(spec_warnings(unpinned))
    assert "spec.model.revision is not set" in text
    assert "spec.auth.disabled" in text
    assert "maxModelLen 65536" in text
    pinned = endpoint_from_spec(
        {"model": {"revision": "abc"}, "auth": {"apiKeySecretRef": {"name": "s", "key": "k"}}}
    )
    assert spec_warnings(pinned) == []
