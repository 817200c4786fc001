"""Events survive a crash (the wiring of handlers/announce.py against the in-memory API).

The status write that records a decision also records the Events it owes
(`status.pendingEvents`). Killed after that write and before the Event, the operator's next
pass posts the Event first, exactly once; killed after the Event and before it is cleared from
status, the next pass's re-post answers AlreadyExists and nothing is announced twice; an
Event the API server refuses stays owed and is posted by a later pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.handlers.reconcile import reconcile, report_failure
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.kube.client import KubeError
from tests.unit.fake_kube import FakeKube, ScriptedDemand
from tests.unit.test_reconcile_canary import _set, _with_canary
from tests.unit.test_revision_config_maps import NAME, NS, _controller, _rollout


class CrashError(Exception):
    """The operator's process dies here."""


@dataclass
class FaultyKube(FakeKube):
    """Fails the first create of an Event with reason `reason`: `crash` before it is stored,
    `crash-after` once it is stored (the process dies before hearing back), or `refuse`
    (the API server answers 500; the pass goes on)."""

    reason: str = ""
    mode: str = "crash"

    def request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        if method == "POST" and path.endswith("/events") and body["reason"] == self.reason:
            self.reason = ""  # once
            if self.mode == "refuse":
                raise KubeError(status=500, method=method, path=path, body=json.dumps({}))
            if self.mode == "crash-after":
                super().request(method, path, body=body)
            raise CrashError(body["reason"])
        return super().request(method, path, query=query, body=body, content_type=content_type)


def _body(kube: FakeKube) -> dict[str, Any]:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    return body


def _pass(kube: FakeKube, config: OperatorConfig) -> None:
    reconcile(kube, config, _body(kube), demand=ScriptedDemand(), refusals=RefusalBook())


def _reasons(kube: FakeKube) -> list[str]:
    return [e["reason"] for e in kube.events]


def _pending(kube: FakeKube) -> list[str]:
    return [e["reason"] for e in _body(kube)["status"].get("pendingEvents") or []]


def _new_revision(kube: FaultyKube, config: OperatorConfig, mode: str = "") -> None:
    """Revision A healthy, then B set and reconciled: the pass that announces B's
    RolloutStarted (the canary's), with the fault `mode` armed for that Event."""
    kube.add(_with_canary(0.7))
    _pass(kube, config)
    _controller(kube)
    _pass(kube, config)
    assert _rollout(kube)["phase"] == "Healthy"
    assert _started(kube) == 0
    _set(kube, 0.9)
    kube.reason, kube.mode = ("RolloutStarted", mode) if mode else ("", "")
    _pass(kube, config)


def _started(kube: FakeKube) -> int:
    """B's RolloutStarted Events (A's first rollout announces one too)."""
    return sum(
        1 for e in kube.events if e["reason"] == "RolloutStarted" and "canary" in e["message"]
    )


def test_without_faults_every_event_is_posted_in_its_pass_and_none_stays_owed(
    operator_config: OperatorConfig,
) -> None:
    kube = FaultyKube()
    _new_revision(kube, operator_config)
    assert _started(kube) == 1
    assert _pending(kube) == []
    names = [e["metadata"]["name"] for e in kube.events]
    assert len(names) == len(set(names))
    assert all(n.startswith(f"{NAME}.") for n in names)


def test_a_crash_before_the_event_posts_it_first_on_the_next_pass(
    operator_config: OperatorConfig,
) -> None:
    kube = FaultyKube()
    with pytest.raises(CrashError):
        _new_revision(kube, operator_config, "crash")
    assert _started(kube) == 0
    assert _pending(kube)[-1] == "RolloutStarted"  # the status write recorded it
    before = len(kube.writes)
    _pass(kube, operator_config)  # the restarted operator
    assert kube.writes[before] == ("create", "Event/RolloutStarted")  # first of the pass
    assert _started(kube) == 1
    assert _pending(kube) == []
    _pass(kube, operator_config)
    assert _started(kube) == 1


def test_a_crash_after_the_event_never_posts_it_twice(operator_config: OperatorConfig) -> None:
    kube = FaultyKube()
    with pytest.raises(CrashError):
        _new_revision(kube, operator_config, "crash-after")
    assert _started(kube) == 1
    assert "RolloutStarted" in _pending(kube)  # not known to be posted
    _pass(kube, operator_config)  # re-posted: AlreadyExists, so done
    assert _started(kube) == 1
    assert _pending(kube) == []


def test_a_refused_event_stays_owed_and_a_later_pass_posts_it(
    operator_config: OperatorConfig,
) -> None:
    kube = FaultyKube()
    _new_revision(kube, operator_config, "refuse")  # the pass goes on
    assert _started(kube) == 0
    assert _pending(kube) == ["RolloutStarted"]
    _pass(kube, operator_config)
    assert _started(kube) == 1
    assert _pending(kube) == []


def test_a_crash_on_a_condition_flip_is_recovered_too(operator_config: OperatorConfig) -> None:
    kube = FaultyKube()
    kube.add(_with_canary(0.7))
    _pass(kube, operator_config)
    _controller(kube)
    _pass(kube, operator_config)
    kube.reason, kube.mode = "ReconcileError", "crash"
    with pytest.raises(CrashError):
        report_failure(kube, _body(kube), RuntimeError("boom"))
    assert _pending(kube) == ["ReconcileError"]
    _pass(kube, operator_config)
    assert _reasons(kube).count("ReconcileError") == 1
    assert _pending(kube) == []
