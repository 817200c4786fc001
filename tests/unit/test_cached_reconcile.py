"""Reconcile passes through the watch-fed caches (kube/cached.py) against the in-memory API:
at steady state a pass sends the API server nothing at all; a pass right after a pass does not
re-apply what the first wrote, even before the watch brings it; a child deleted by hand is
applied again; the first pass of a leadership term reads the endpoint from the API."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from magistral_operator.api.config import OperatorConfig
from magistral_operator.handlers import operator as op
from magistral_operator.handlers.reconcile import Outcome, reconcile
from magistral_operator.handlers.refusals import RefusalBook
from magistral_operator.kube.cached import ENDPOINT_KIND, OWNED_SELECTOR, Cache, CachedKube
from tests.unit.fake_kube import FakeKube, ScriptedDemand
from tests.unit.test_ha_wiring import Leadership
from tests.unit.test_revision_config_maps import NAME, NS, _controller, _endpoint
from tests.unit.test_watch_cache import CountingKube


def sync(cache: Cache, api: FakeKube) -> None:
    """What the informers do: every store holds what the API has (a fresh listing)."""
    for (kind, _), store in cache.stores.items():
        selector = "" if kind == ENDPOINT_KIND else OWNED_SELECTOR
        store.replace(FakeKube.list(api, kind, namespace=None, selector=selector))


def setup() -> tuple[CountingKube, Cache, CachedKube]:
    api = CountingKube()
    api.add(_endpoint(0.7, replicas=2))
    cache = Cache(api)
    sync(cache, api)
    return api, cache, CachedKube(api, cache=cache)


def one_pass(kube: CachedKube, config: OperatorConfig) -> None:
    body = kube.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    reconcile(kube, config, body, demand=ScriptedDemand(), refusals=RefusalBook())


def settle(api: CountingKube, cache: Cache, kube: CachedKube, config: OperatorConfig) -> None:
    """Passes, the controller and the watch, until a pass writes nothing."""
    for _ in range(8):
        before = len(api.writes)
        one_pass(kube, config)
        _controller(api)
        sync(cache, api)
        if len(api.writes) == before:
            return
    raise AssertionError(f"never settled: {api.writes[-10:]}")


def test_at_steady_state_a_pass_sends_the_api_server_nothing(
    operator_config: OperatorConfig,
) -> None:
    api, cache, kube = setup()
    settle(api, cache, kube, operator_config)
    api.reads.clear()
    writes = len(api.writes)
    one_pass(kube, operator_config)
    assert api.reads == []
    assert api.writes[writes:] == []
    assert kube.cache_hits > 0


def test_without_the_cache_the_same_pass_reads_every_child(
    operator_config: OperatorConfig,
) -> None:
    """The baseline the cache removes (what docs/scale.md counts per pass)."""
    api, cache, kube = setup()
    settle(api, cache, kube, operator_config)
    api.reads.clear()
    body = api.get("MagistralEndpoint", namespace=NS, name=NAME)
    assert body is not None
    api.reads.clear()
    reconcile(api, operator_config, body, demand=ScriptedDemand(), refusals=RefusalBook())
    assert len(api.reads) >= 10


def test_a_pass_right_after_a_pass_does_not_apply_again_before_the_watch_catches_up(
    operator_config: OperatorConfig,
) -> None:
    api, _cache, kube = setup()
    one_pass(kube, operator_config)  # creates every child
    created = [w for w in api.writes if w[0] == "apply"]
    assert len(created) >= 8
    before = len(api.writes)
    one_pass(kube, operator_config)  # no sync: only the answers of its own writes
    assert [w for w in api.writes[before:] if w[0] == "apply"] == []


def test_a_child_deleted_by_hand_is_applied_again(operator_config: OperatorConfig) -> None:
    api, cache, kube = setup()
    settle(api, cache, kube, operator_config)
    service = next(k for k in api.objects if k[0] == "Service")
    gone = api.objects.pop(service)
    cache.stores[("Service", None)].remove(gone)  # the watch's DELETED event
    before = len(api.writes)
    one_pass(kube, operator_config)
    assert ("apply", f"Service/{service[2]}") in api.writes[before:]


@pytest.fixture
def bodies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The resourceVersion of the endpoint each pass derived from."""
    seen: list[str] = []

    def fake(kube: Any, config: Any, body: dict[str, Any], **_: Any) -> Outcome:
        seen.append(body["metadata"]["resourceVersion"])
        return Outcome()

    monkeypatch.setattr(op, "reconcile", fake)
    return seen


def test_the_first_pass_of_a_term_reads_the_endpoint_from_the_api(bodies: list[str]) -> None:
    api = CountingKube()
    old = {**_endpoint(0.7), "metadata": {**_endpoint(0.7)["metadata"], "resourceVersion": "5"}}
    cache = Cache(api, kinds=(ENDPOINT_KIND,))
    cache.stores[(ENDPOINT_KIND, None)].replace([old])
    newer = {**old, "metadata": {**old["metadata"], "resourceVersion": "8"}}
    api.add(newer)  # a previous leader's last status write; the watch has not brought it
    lead = Leadership(7)
    m = kopf.Memo(config=None, kube=CachedKube(api, cache=cache), namespaces=[], leadership=lead)
    op._run(m, old)
    op._run(m, old)
    assert bodies == ["8", "8"]
    assert api.reads == ["get MagistralEndpoint"]  # the second from the refreshed cache
    lead.current = 8  # a new term: the API again
    op._run(m, old)
    assert api.reads == ["get MagistralEndpoint", "get MagistralEndpoint"]


def test_a_config_map_the_spec_names_is_read_from_the_api_never_kept(
    operator_config: OperatorConfig,
) -> None:
    """The caches hold only the operator's own objects: a user's ConfigMap is not in them, so
    the reference check must ask the API (or it would report an existing ConfigMap missing)."""
    api = CountingKube()
    body = _endpoint(0.7)
    body["spec"]["inference"]["systemPrompt"] = {
        "mode": "custom",
        "configMapRef": {"name": "prompt", "key": "text"},
    }
    api.add(body)
    api.add(
        {
            "kind": "ConfigMap",
            "metadata": {"name": "prompt", "namespace": NS},
            "data": {"text": "x"},
        }
    )
    cache = Cache(api)
    sync(cache, api)
    kube = CachedKube(api, cache=cache)
    one_pass(kube, operator_config)
    status = api.objects[("MagistralEndpoint", NS, NAME)]["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] != "ReferenceNotFound", degraded
    assert "get ConfigMap" in api.reads
    assert cache.stores[("ConfigMap", None)].get(NS, "prompt") is None
