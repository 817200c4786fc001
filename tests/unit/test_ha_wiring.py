"""Active/standby wiring: a standby's handlers, resync loop, kopf bookkeeping and client do
nothing that writes; a new term starts a full pass; a lost term stops the pass."""

from __future__ import annotations

import threading
import time
from typing import Any
from unittest import mock

import kopf
import pytest

from magistral_operator.handlers import operator as op
from magistral_operator.handlers.diffbase import DigestDiffBaseStorage, LeaderOnlyProgressStorage
from magistral_operator.handlers.reconcile import Outcome
from magistral_operator.kube.client import Kube, NotLeaderError


class Leadership:
    """A leadership whose term the test sets."""

    def __init__(self, term: int | None) -> None:
        self.current = term
        self.stopped = False

    def term(self) -> int | None:
        return self.current

    def is_leader(self) -> bool:
        return self.current is not None

    def stop(self) -> None:
        self.stopped = True


def endpoint(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "magistral.dev/v1alpha1",
        "kind": "MagistralEndpoint",
        "metadata": {"namespace": "ns", "name": name, "generation": 1},
        "spec": {},
    }


class RecordingKube(Kube):
    """Endpoints in memory; every call is recorded."""

    def __init__(self, names: list[str]) -> None:
        self.endpoints = {n: endpoint(n) for n in names}
        self.calls: list[str] = []

    def get(self, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        return self.endpoints.get(name)

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        self.calls.append(f"list {kind}")
        return list(self.endpoints.values())

    def request(self, method: str, path: str, **_: Any) -> dict[str, Any]:
        self.calls.append(f"{method} {path}")
        return {}


def memo(kube: Kube, lead: Leadership | None) -> kopf.Memo:
    return kopf.Memo(config=None, kube=kube, namespaces=[], leadership=lead)


def deployment_of(name: str) -> kopf.Body:
    raw = {
        "metadata": {
            "namespace": "ns",
            "name": f"{name}-pool",
            "labels": {"magistral.dev/endpoint": name},
        }
    }
    return kopf.Body(raw)


def test_a_standby_s_handlers_neither_read_nor_write(reconciled: list[str]) -> None:
    kube = RecordingKube(["ep"])
    standby = memo(kube, Leadership(None))
    op.on_spec(body=kopf.Body(endpoint("ep")), memo=standby, retry=0)
    op.child_changed(standby, "Deployment", "MODIFIED", deployment_of("ep"))
    op.child_changed(standby, "Pod", "MODIFIED", deployment_of("ep"))
    assert kube.calls == []
    assert reconciled == []


def test_the_leader_s_handlers_reconcile(reconciled: list[str]) -> None:
    kube = RecordingKube(["ep"])
    leader = memo(kube, Leadership(1))
    op.on_spec(body=kopf.Body(endpoint("ep")), memo=leader, retry=0)
    op.child_changed(leader, "Deployment", "MODIFIED", deployment_of("ep"))
    assert reconciled == ["ep", "ep"]


def test_standalone_is_always_leader(reconciled: list[str]) -> None:
    op.on_spec(body=kopf.Body(endpoint("ep")), memo=memo(RecordingKube(["ep"]), None), retry=0)
    assert reconciled == ["ep"]


def test_a_pass_that_loses_the_lease_stops_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = RecordingKube(["ep"])
    report = mock.Mock()
    monkeypatch.setattr(op, "_report", report)

    def refused(*_: Any, **__: Any) -> Outcome:
        raise NotLeaderError("PATCH ...: not the leader")

    monkeypatch.setattr(op, "reconcile", refused)
    op.on_spec(body=kopf.Body(endpoint("ep")), memo=memo(kube, Leadership(1)), retry=0)
    report.assert_not_called()  # no failure report: that would be a write too


def test_the_client_refuses_writes_but_not_reads_when_not_leader() -> None:
    api = mock.Mock()
    api.param_serialize.return_value = ("GET", "url", {}, None, [])
    kube = Kube(api, may_write=lambda: False)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(NotLeaderError):
            kube.request(method, "/api/v1/namespaces/ns/configmaps")
    api.call_api.assert_not_called()
    api.call_api.return_value = mock.Mock(status=200, read=lambda: b"{}")
    kube.request("GET", "/api/v1/namespaces/ns/configmaps")
    api.call_api.assert_called_once()


def test_every_request_has_a_timeout() -> None:
    """Reads are bounded too (a hung connection must not hold an endpoint's lock); a leader's
    writes are bounded by the fencing margin."""
    api = mock.Mock()
    api.param_serialize.return_value = ("GET", "url", {}, None, [])
    api.call_api.return_value = mock.Mock(status=200, read=lambda: b"{}")
    Kube(api).request("GET", "/api/v1/namespaces/ns/pods")
    assert api.call_api.call_args.kwargs["_request_timeout"] == 30.0
    Kube(api, write_timeout=5.0).request("PATCH", "/api/v1/namespaces/ns/pods/p")
    assert api.call_api.call_args.kwargs["_request_timeout"] == 5.0
    Kube(api, write_timeout=5.0).request("GET", "/api/v1/namespaces/ns/pods")
    assert api.call_api.call_args.kwargs["_request_timeout"] == 30.0


def test_kopf_bookkeeping_is_not_stored_by_a_standby() -> None:
    leading = {"value": False}
    diffbase = DigestDiffBaseStorage(
        prefix="magistral.dev", key="last-handled-configuration", may_write=lambda: leading["value"]
    )
    progress = LeaderOnlyProgressStorage(prefix="magistral.dev", may_write=lambda: leading["value"])
    body = kopf.Body({"metadata": {"name": "ep", "annotations": {"magistral.dev/h": "{}"}}})
    patch = kopf.Patch()
    diffbase.store(body=body, patch=patch, essence={"spec": {}})
    progress.store(key=kopf.HandlerId("h"), record={"retries": 1}, body=body, patch=patch)
    progress.purge(key=kopf.HandlerId("h"), body=body, patch=patch)
    progress.touch(body=body, patch=patch, value="x")
    assert not patch  # kopf sends no PATCH for an empty patch
    leading["value"] = True
    diffbase.store(body=body, patch=patch, essence={"spec": {}})
    assert patch["metadata"]["annotations"]["magistral.dev/last-handled-configuration"]


def run_loop(m: kopf.Memo, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, Any]:
    monkeypatch.setattr(op, "RESYNC_SECONDS", 3600.0)
    monkeypatch.setattr(op, "LEADERSHIP_POLL_SECONDS", 0.01)
    stop = threading.Event()
    thread = threading.Thread(target=op._resync_loop, args=(m, stop), daemon=True)
    thread.start()
    return stop, thread


def settle() -> None:
    time.sleep(0.2)


def test_resync_does_nothing_while_standby_and_a_full_pass_on_becoming_leader(
    reconciled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = RecordingKube(["a", "b", "c"])
    lead = Leadership(None)
    stop, thread = run_loop(memo(kube, lead), monkeypatch)
    try:
        settle()
        assert kube.calls == []
        assert reconciled == []
        lead.current = 1  # elected: every endpoint at once, not after RESYNC_SECONDS
        settle()
        assert reconciled == ["a", "b", "c"]
        settle()
        assert reconciled == ["a", "b", "c"]  # then only every RESYNC_SECONDS
        lead.current = None  # lost
        settle()
        calls = len(kube.calls)
        lead.current = 2  # a new term: catch up again
        settle()
        assert reconciled == ["a", "b", "c"] * 2
        assert len(kube.calls) > calls
    finally:
        stop.set()
        thread.join(timeout=5)


def test_losing_the_lease_stops_the_pass_at_the_next_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = RecordingKube(["a", "b", "c"])
    lead = Leadership(None)
    names: list[str] = []

    def lose_after_first(kube: Any, config: Any, body: dict[str, Any], **_: Any) -> Outcome:
        names.append(body["metadata"]["name"])
        lead.current = None
        return Outcome()

    monkeypatch.setattr(op, "reconcile", lose_after_first)
    stop, thread = run_loop(memo(kube, lead), monkeypatch)
    try:
        lead.current = 1
        settle()
        assert names == ["a"]
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_standalone_operator_s_resync_waits_for_the_period(
    reconciled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Term 0 from the start: kopf's resume handlers make the first pass, not the loop."""
    stop, thread = run_loop(memo(RecordingKube(["a"]), None), monkeypatch)
    try:
        settle()
        assert reconciled == []
    finally:
        stop.set()
        thread.join(timeout=5)


def test_cleanup_stops_the_election() -> None:
    lead = Leadership(1)
    m = memo(RecordingKube([]), lead)
    op.stop_resync(memo=m)
    assert lead.stopped
