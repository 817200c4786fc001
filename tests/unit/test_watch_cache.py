"""The watch-fed caches (kube/store.py, kube/informer.py, kube/cached.py): a store keeps the
newest copy of each object whatever order copies arrive in; an informer lists, watches,
resumes and lists again after a 410 or an error; the cached client answers reads from filled
stores and keeps the answers to its own writes."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from magistral_operator.kube.cached import Cache, CachedKube
from magistral_operator.kube.client import KubeError
from magistral_operator.kube.informer import Informer
from magistral_operator.kube.store import SelectorError, Store, parse_selector
from tests.unit.fake_kube import FakeKube

MANAGED = {"app.kubernetes.io/managed-by": "magistral-operator"}


def obj(name: str, version: int | str, *, ns: str = "ns", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "resourceVersion": str(version),
            "labels": {**MANAGED, **labels},
            "managedFields": [{"manager": "x"}],
        },
    }


def version(store: Store, name: str, ns: str = "ns") -> str | None:
    found = store.get(ns, name)
    return None if found is None else found["metadata"]["resourceVersion"]


# --- Store -----------------------------------------------------------------------------------


def test_a_store_keeps_the_newest_copy_whatever_order_they_arrive_in() -> None:
    store = Store("Pod")
    assert store.upsert(obj("a", 5))
    assert not store.upsert(obj("a", 4))  # a late watch event never rolls back a write
    assert version(store, "a") == "5"
    assert store.upsert(obj("a", 5))  # the watch's copy of our own write
    assert store.upsert(obj("a", 7))
    assert version(store, "a") == "7"


def test_a_store_keeps_only_what_its_selector_follows() -> None:
    store = Store("Pod", selector="owner=us")
    assert store.upsert(obj("ours", 1, owner="us"))
    assert not store.upsert(obj("theirs", 1, owner="them"))
    assert store.keys() == [("ns", "ours")]


def test_a_deleted_object_is_not_brought_back_by_a_late_event() -> None:
    store = Store("Pod")
    store.upsert(obj("a", 5))
    assert not store.remove(obj("a", 3))  # a delete older than what we hold
    assert version(store, "a") == "5"
    assert store.remove(obj("a", 6))
    assert store.get("ns", "a") is None
    assert not store.upsert(obj("a", 5))  # late MODIFIED after the DELETED
    assert store.get("ns", "a") is None
    assert store.upsert(obj("a", 9))  # created again
    assert version(store, "a") == "9"


def test_a_store_hands_out_copies_without_managed_fields() -> None:
    store = Store("Pod")
    store.upsert(obj("a", 1, app="x"))
    got = store.get("ns", "a")
    assert got is not None
    assert "managedFields" not in got["metadata"]
    got["metadata"]["labels"]["app"] = "changed"
    assert store.list("ns", "app=x")  # the store's copy is untouched


def test_list_filters_by_namespace_and_equality_selector() -> None:
    store = Store("Pod")
    store.replace([obj("a", 1, app="x"), obj("b", 1, app="y"), obj("c", 1, ns="other", app="x")])
    assert [o["metadata"]["name"] for o in store.list("ns", "app=x")] == ["a"]
    assert [o["metadata"]["name"] for o in store.list(None, "app=x")] == ["a", "c"]
    assert len(store.list("ns")) == 2


def test_an_indexed_list_answers_what_a_scan_answers_whatever_the_changes() -> None:
    """The index by endpoint label (a pass lists its own children, not every object) never
    answers differently from a full scan, through adds, relabels, deletes and relistings."""
    rng = random.Random(7)
    indexed, scanned = Store("Pod", index_label="ep"), Store("Pod")
    for step in range(600):
        name, ep, version = f"p{rng.randrange(30)}", f"e{rng.randrange(4)}", step + 1
        op, app = rng.random(), rng.choice("xy")
        for store in (indexed, scanned):
            if op < 0.6:
                store.upsert(obj(name, version, ep=ep, app=app))
            elif op < 0.95:
                store.remove(obj(name, version))
            elif step % 7 == 0:
                store.replace([obj(f"p{i}", version, ep=f"e{i % 4}") for i in range(5)])
        for selector in ("ep=e1", "ep=e2,app=x", "app=y", ""):
            assert indexed.list("ns", selector) == scanned.list("ns", selector), (step, selector)


@pytest.mark.parametrize(
    ("selector", "parsed"),
    [
        ("", {}),
        ("a=b", {"a": "b"}),
        ("a=b, c=d", {"a": "b", "c": "d"}),
        ("app.kubernetes.io/name=x", {"app.kubernetes.io/name": "x"}),
        ("a!=b", None),
        ("a", None),
        ("a in (b,c)", None),
        ("a==b", None),
        ("!a", None),
    ],
)  # fmt: skip
def test_selectors_the_store_evaluates(selector: str, parsed: dict[str, str] | None) -> None:
    if parsed is None:
        with pytest.raises(SelectorError):
            parse_selector(selector)
    else:
        assert parse_selector(selector) == parsed


def test_replace_reports_what_changed_or_went() -> None:
    store = Store("Pod")
    assert not store.synced
    store.replace([obj("a", 1), obj("b", 1)])
    assert store.synced
    changed = store.replace([obj("a", 1), obj("b", 2), obj("c", 1)])
    assert sorted(o["metadata"]["name"] for o in changed) == ["b", "c"]
    changed = store.replace([obj("c", 1)])
    assert sorted(o["metadata"]["name"] for o in changed) == ["a", "b"]
    assert store.keys() == [("ns", "c")]


# --- Informer --------------------------------------------------------------------------------


class Source:
    """Scripted listings and watches; records the version each watch starts from."""

    def __init__(self, listings: list[list[dict[str, Any]]], watches: list[Any]) -> None:
        self.listings = listings
        self.watches = watches
        self.started: list[str] = []

    def list_with_version(
        self, kind: str, *, namespace: str | None, selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        if not self.listings:
            raise KubeError(status=500, method="GET", path=kind, body="{}")
        return self.listings.pop(0), "10"

    def watch(
        self,
        kind: str,
        *,
        namespace: str | None,
        selector: str = "",
        resource_version: str,
        timeout_seconds: int = 0,
    ) -> Iterator[dict[str, Any]]:
        self.started.append(resource_version)
        if not self.watches:
            self.stop.set()
            return iter(())
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        return iter(script)

    stop = threading.Event()


def run_informer(source: Source) -> tuple[Store, list[tuple[str, str]], Informer]:
    store, seen = Store("Pod"), []
    source.stop = threading.Event()
    informer = Informer(
        source,
        store,
        on_change=lambda kind, o: seen.append((kind, o["metadata"]["name"])),
        stop=source.stop,
        sleep=lambda _: False,
    )
    informer.run()
    return store, seen, informer


def test_an_informer_lists_follows_the_watch_and_resumes_where_it_stopped() -> None:
    source = Source(
        [[obj("a", 1)]],
        [
            [
                {"type": "ADDED", "object": obj("b", 11)},
                {"type": "MODIFIED", "object": obj("a", 12)},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            [{"type": "DELETED", "object": obj("b", 16)}],
        ],
    )
    store, seen, informer = run_informer(source)
    assert seen == [("SYNC", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert source.started == ["10", "15", "16"]  # resumed from the bookmark, not listed again
    assert informer.lists == 1
    assert store.keys() == [("ns", "a")]
    assert version(store, "a") == "12"


def test_an_expired_version_or_a_failure_lists_again() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    source = Source(
        [[obj("a", 1)], [obj("a", 20)], [obj("b", 30)]],
        [[gone], KubeError(status=500, method="WATCH", path="p", body="{}")],
    )
    store, seen, informer = run_informer(source)
    assert informer.lists == 3
    assert store.keys() == [("ns", "b")]
    assert ("SYNC", "a") in seen
    assert ("SYNC", "b") in seen


def test_an_informer_that_cannot_list_keeps_trying() -> None:
    source = Source([], [])
    store, informer_sleeps = Store("Pod"), []

    def sleep(delay: float) -> bool:
        informer_sleeps.append(delay)
        if len(informer_sleeps) == 3:
            source.listings.append([obj("a", 1)])
        return False

    source.stop = threading.Event()
    Informer(source, store, stop=source.stop, sleep=sleep).run()
    assert informer_sleeps == [1.0, 2.0, 5.0]  # backing off
    assert store.synced
    assert store.keys() == [("ns", "a")]


# --- CachedKube ------------------------------------------------------------------------------


class CountingKube(FakeKube):
    """The API: FakeKube, counting the reads that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get(self, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"get {kind}")
        return super().get(kind, namespace=namespace, name=name)

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        self.reads.append(f"list {kind}")
        return super().list(kind, namespace=namespace, selector=selector)


def test_reads_go_to_the_api_until_the_store_is_filled_then_never() -> None:
    api = CountingKube()
    api.add(obj("a", 1, app="x"))
    cache = Cache(api, kinds=("Pod",))
    kube = CachedKube(api, cache=cache)
    assert kube.get("Pod", namespace="ns", name="a") is not None
    assert api.reads == ["get Pod"]
    cache.stores[("Pod", None)].replace(api.objects.values())
    api.reads.clear()
    assert kube.get("Pod", namespace="ns", name="a") is not None
    assert [o["metadata"]["name"] for o in kube.list("Pod", namespace="ns", selector="app=x")] == [
        "a"
    ]
    assert kube.get("Pod", namespace="ns", name="missing") is None
    assert api.reads == []
    kube.list("Pod", namespace="ns", selector="app!=x")  # the store cannot: the API answers
    kube.get("Service", namespace="ns", name="s")  # not cached
    assert api.reads == ["list Pod", "get Service"]


def test_a_namespaced_cache_answers_only_for_its_namespaces() -> None:
    api = CountingKube()
    cache = Cache(api, namespaces=("team",), kinds=("Pod",))
    for store in cache.stores.values():
        store.replace([])
    kube = CachedKube(api, cache=cache)
    kube.list("Pod", namespace="team")
    kube.list("Pod", namespace="other")
    kube.list("Pod", namespace=None)
    assert api.reads == ["list Pod", "list Pod"]


def test_get_fresh_reads_the_api_when_the_copy_is_older_than_the_event_or_live() -> None:
    api = CountingKube()
    cache = Cache(api, kinds=("Pod",))
    store = cache.stores[("Pod", None)]
    store.replace([obj("a", 5)])
    api.add(obj("a", 8))
    kube = CachedKube(api, cache=cache)
    got = kube.get_fresh("Pod", namespace="ns", name="a", at_least="5")
    assert got is not None
    assert got["metadata"]["resourceVersion"] == "5"
    assert api.reads == []
    got = kube.get_fresh("Pod", namespace="ns", name="a", at_least="8")
    assert got is not None
    assert got["metadata"]["resourceVersion"] == "8"
    assert api.reads == ["get Pod"]
    assert version(store, "a") == "8"  # the answer refreshed the cache
    kube.get_fresh("Pod", namespace="ns", name="a", live=True)
    assert api.reads == ["get Pod", "get Pod"]


def test_the_answers_to_its_own_writes_are_in_the_store_at_once() -> None:
    api = CountingKube()
    cache = Cache(api, kinds=("Pod", "MagistralEndpoint"))
    for store in cache.stores.values():
        store.replace([])
    kube = CachedKube(api, cache=cache)
    kube.apply(obj("a", 1), field_manager="m")
    assert kube.get("Pod", namespace="ns", name="a") is not None
    api.add({"kind": "MagistralEndpoint", "metadata": {"name": "e", "namespace": "ns"}})
    kube.patch_status("MagistralEndpoint", namespace="ns", name="e", status={"phase": "x"})
    got = kube.get("MagistralEndpoint", namespace="ns", name="e")
    assert got is not None
    assert got["status"] == {"phase": "x"}
