"""The fault suite's pure helpers (tests/cluster/faults.py): write signatures as the proxy and
the audit log see them, kill positions, owed Events, the normalised child content."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.cluster.faults import (
    KillingProxy,
    Position,
    Signature,
    StepState,
    _content,
    differences,
    hash_changes,
    owed_keys,
    positions,
    request_signature,
    select,
    status_of,
    summarise_events,
)

NS = "f-1234"


def test_a_write_into_the_namespace_has_a_signature_and_a_read_has_none() -> None:
    path = f"/apis/magistral.dev/v1alpha1/namespaces/{NS}/magistralendpoints/fault/status"
    assert request_signature("PATCH", path, b"{}", NS) == Signature(
        "patch", "magistralendpoints", "status", "fault"
    )
    assert request_signature("GET", path, b"", NS) is None
    assert request_signature("PATCH", path.replace(NS, "other"), b"{}", NS) is None
    apply = f"/apis/apps/v1/namespaces/{NS}/deployments/fault-router"
    assert request_signature("PATCH", apply, b"{}", NS) == Signature(
        "patch", "deployments", "", "fault-router"
    )


def test_a_created_event_is_named_from_its_body_without_its_per_run_key() -> None:
    body = json.dumps({"metadata": {"name": "fault.0123456789abcdef"}}).encode()
    sig = request_signature("POST", f"/api/v1/namespaces/{NS}/events", body, NS)
    assert sig == Signature("create", "events", "", "fault.*")


def test_positions_count_occurrences_of_each_signature() -> None:
    a = Signature("patch", "magistralendpoints", "status", "fault")
    b = Signature("create", "events", "", "fault.*")
    found = positions([a, b, a, b, b])
    assert [(p.index, p.occurrence) for p in found] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]
    assert select(found, "first") == [found[0], found[1]]
    assert select(found, "stride:2") == [found[0], found[2], found[4]]
    assert select(found, "2,5") == [found[1], found[4]]
    assert select(found, "all") == found
    assert select(found, "create events/fault.*@3, 1") == [found[0], found[4]]
    with pytest.raises(ValueError, match="no such write"):
        select(found, "create events/fault.*@4")
    assert str(found[2]) == "#3 patch magistralendpoints/status/fault (occurrence 2)"
    assert isinstance(found[0], Position)


def test_positions_in_a_step_are_counted_from_its_start_and_armed_there() -> None:
    """CI's kill position, the rollback step's first status write, was the 21st status write
    of the reference; a run whose earlier steps wrote one status less never reached a 21st
    before its end, and the kill never fired. Counted from its step, it is the 1st."""
    status = Signature("patch", "magistralendpoints", "status", "fault")
    event = Signature("create", "events", "", "fault.*")
    steps = {1: "create", 2: "create", 3: "create", 4: "rollback", 5: "rollback", 6: "rollback"}
    found = positions([status, event, status, status, event, status], steps.__getitem__)
    assert [(p.step, p.occurrence, p.in_step) for p in found] == [
        ("create", 1, 1),
        ("create", 1, 1),
        ("create", 2, 2),
        ("rollback", 3, 1),
        ("rollback", 2, 1),
        ("rollback", 4, 2),
    ]
    assert str(found[3]) == (
        "#4 patch magistralendpoints/status/fault (occurrence 3, 1 in step rollback)"
    )
    assert found[3].armed().occurrence == 1
    assert positions([status])[0].armed().occurrence == 1  # no step: counted over the run

    # The proxy, armed at the step's start, kills at the step's first status write, whatever
    # the steps before it wrote.
    proxy = KillingProxy("https://127.0.0.1:1", Path("/nonexistent"), namespace=NS)
    kills: list[int] = []
    for _ in range(5):  # the earlier steps: more status writes than the reference made
        proxy._count(status)
    proxy.arm(found[3].armed(), lambda: kills.append(len(kills)))
    proxy._count(event)
    assert not kills
    proxy._count(status)
    assert kills == [0]
    assert proxy.fired.is_set()
    proxy._count(status)
    assert kills == [0]  # once


def test_owed_events_are_the_keys_a_status_patch_records() -> None:
    body = json.dumps(
        {"status": {"pendingEvents": [{"key": "a" * 16}, {"key": "b" * 16}], "replicas": 1}}
    ).encode()
    assert owed_keys(status_of(body)) == {"a" * 16, "b" * 16}
    assert owed_keys(status_of(b"not json")) == set()
    assert owed_keys(status_of(json.dumps({"status": {}}).encode())) == set()


def test_child_content_leaves_out_what_differs_from_run_to_run() -> None:
    def service(namespace: str, uid: str, ip: str, digest: str) -> dict[str, object]:
        return {
            "kind": "Service",
            "metadata": {
                "name": "fault",
                "namespace": namespace,
                "uid": "child-" + uid,
                "resourceVersion": "7",
                "annotations": {"magistral.dev/applied-hash": digest},
                "ownerReferences": [{"uid": uid, "name": "fault"}],
            },
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]},
            "status": {},
        }

    one = _content(service("f-1", "u-1", "127.96.0.9", "h1"), namespace="f-1", uid="u-1")
    two = _content(service("f-2", "u-2", "127.96.0.7", "h2"), namespace="f-2", uid="u-2")
    assert one == two
    changed = service("f-2", "u-2", "127.96.0.7", "h2")
    changed["spec"] = {"ports": [{"port": 81}]}
    assert _content(changed, namespace="f-2", uid="u-2") != one


def _state(
    applied: dict[str, str],
    *,
    conditions: list[tuple[str, str, str]] | None = None,
    events: tuple[Any, ...] = (),
) -> StepState:
    return StepState(
        children={},
        contents={},
        applied=applied,
        conditions=conditions or [],
        **summarise_events(list(events)),
        event_names=[],
        lost=[],
        unrecorded=[],
        status={},
    )


def test_applied_hashes_compare_by_their_changes_from_step_to_step() -> None:
    steps = [_state({"A": "1", "B": "2"}), _state({"A": "1", "B": "3", "C": "4"}), _state({})]
    assert hash_changes(steps) == [
        {"A": "new", "B": "new"},
        {"A": "same", "B": "changed", "C": "new"},
        {"A": "gone", "B": "gone", "C": "gone"},
    ]


def _event(version: int, reason: str, message: str) -> Any:
    return SimpleNamespace(
        reason=reason, message=message, metadata=SimpleNamespace(resource_version=str(version))
    )


STABLE = [("Progressing", "False", "Stable"), ("Ready", "True", "ReplicasReady")]
CREATED = [
    _event(10, "ReplicasNotReady", "Ready=False: 0 of 1 replicas ready"),
    _event(11, "RolloutStarted", "revision a"),
    _event(12, "ReplicasReady", "Ready=True: 1 of 1 replicas ready"),
]


def test_a_flip_only_one_run_observed_is_not_a_difference() -> None:
    """The reference saw the scale step's pod unready for one pass (two flips); the run's
    restarted operator first looked when it was Ready (no flip): no Progressing flip at all,
    and none that disagrees with the conditions. Equal."""
    reference = _state(
        {},
        conditions=STABLE,
        events=[
            *CREATED,
            _event(20, "WaitingForReplicas", "Progressing=True: 1 of 2 ready"),
            _event(21, "Stable", "Progressing=False: 2 replicas of the current revision ready"),
        ],
    )
    run = _state({}, conditions=STABLE, events=CREATED)
    assert reference.flips != run.flips
    assert differences(reference, run, step="scale") == []


def test_a_decision_event_more_or_less_is_a_difference() -> None:
    reference = _state({}, conditions=STABLE, events=CREATED)
    run = _state(
        {}, conditions=STABLE, events=[*CREATED, _event(30, "RolloutStarted", "revision a")]
    )
    assert differences(reference, run, step="create") == [
        "create: events {'RolloutStarted': 1} vs {'RolloutStarted': 2}"
    ]


def test_a_last_flip_that_disagrees_with_the_condition_is_a_difference() -> None:
    """Posted in the order their resourceVersions say, not in the order listed: the run's
    last Ready flip announced False while Ready is True (a flip back never announced)."""
    reference = _state({}, conditions=STABLE, events=CREATED)
    late = _event(40, "ReplicasNotReady", "Ready=False: 0 of 1 replicas ready")
    run = _state({}, conditions=STABLE, events=[late, *CREATED])
    assert run.announced == {"Ready": "False"}
    found = differences(reference, run, step="scale")
    assert found == [
        "scale: the last flip Events {'Ready': 'False'} disagree with the conditions "
        "{'Progressing': 'False', 'Ready': 'True'}"
    ]
