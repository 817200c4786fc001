"""Reads from watch-fed stores instead of the API server (controller-runtime's cached client).

`Cache` owns one `Store` and one `Informer` per kind and scope: the endpoints themselves, and
every kind of child the operator creates or observes, filtered by the operator's managed-by
label. `CachedKube` is the `Kube` the reconcile pass uses: a GET or a LIST of a cached kind is
answered from its store once the store has been filled (before that, and for every other
kind, from the API server). A store holds only the operator's own objects, so an object of a
cached kind that is not the operator's (a ConfigMap a spec names) is read with
`get_fresh(..., live=True)`; the answers to its own writes (applies, status patches) go into
the store at once, so the next pass never acts on a copy older than what it wrote.

Staleness is bounded by the watch: a pass may see a child a moment before a change the API
server already has, and the watch event of that change then queues the next pass (the
operator's coalescing queue, handlers/workqueue.py), which sees it. Writes never depend on a
stale read being right: children are server-side applied whole, and the status is derived from
the endpoint's own latest copy (`get_fresh`).
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..api.labels import ENDPOINT_LABEL, MANAGER
from .client import Kube
from .informer import Informer
from .store import SelectorError, Store, at_least

log = logging.getLogger(__name__)

ENDPOINT_KIND = "MagistralEndpoint"
CHILD_KINDS = (
    "Pod",
    "Deployment",
    "ReplicaSet",
    "ConfigMap",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceAccount",
    "Role",
    "RoleBinding",
)
"""What the pass reads of its children: everything it applies, plus Pods and ReplicaSets."""

OWNED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGER}"


class Cache:
    """The stores and informers for `namespaces` (empty: the whole cluster)."""

    def __init__(
        self,
        source: Kube,
        *,
        namespaces: Iterable[str] = (),
        kinds: Iterable[str] = (ENDPOINT_KIND, *CHILD_KINDS),
        on_change: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.stop = threading.Event()
        self.on_change = on_change
        scopes: list[str | None] = list(namespaces) or [None]
        self.stores: dict[tuple[str, str | None], Store] = {}
        self.informers: list[Informer] = []
        for kind in kinds:
            for scope in scopes:
                store = Store(
                    kind,
                    namespace=scope,
                    selector="" if kind == ENDPOINT_KIND else OWNED_SELECTOR,
                    index_label=None if kind == ENDPOINT_KIND else ENDPOINT_LABEL,
                )
                self.stores[(kind, scope)] = store
                self.informers.append(
                    Informer(
                        source,
                        store,
                        selector=store.selector,
                        on_change=self._changed_for(kind),
                        stop=self.stop,
                    )
                )

    def _changed_for(self, kind: str) -> Callable[[str, dict[str, Any]], None]:
        def changed(event: str, obj: dict[str, Any]) -> None:
            if self.on_change is not None:
                self.on_change(kind, event, obj)

        return changed

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def close(self) -> None:
        """Stop the informers (each ends with its current watch, at the latest)."""
        self.stop.set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every store has been filled once; False on timeout."""
        return all(store.wait_synced(timeout) for store in self.stores.values())

    def store_for(self, kind: str, namespace: str | None) -> Store | None:
        """The filled store that holds `kind` in `namespace` (None: all namespaces), if any."""
        for (cached_kind, scope), store in self.stores.items():
            if cached_kind != kind or not store.synced:
                continue
            if scope is None or scope == namespace:
                return store
        return None


class CachedKube(Kube):
    """`inner` (the API client), with reads of cached kinds from `cache` (see the module
    docstring). Every other request goes to `inner` unchanged."""

    def __init__(self, inner: Kube, *, cache: Cache) -> None:
        self.inner = inner
        self.cache = cache
        self.cache_hits = 0

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.inner.request(method, path, **kwargs)

    def get(self, kind: str, *, namespace: str, name: str) -> dict[str, Any] | None:
        store = self.cache.store_for(kind, namespace)
        if store is None:
            return self.inner.get(kind, namespace=namespace, name=name)
        self.cache_hits += 1
        return store.get(namespace, name)

    def get_fresh(
        self, kind: str, *, namespace: str, name: str, at_least: str = "", live: bool = False
    ) -> dict[str, Any] | None:
        """The cached copy if it is as new as `at_least` (the event's version), else a GET
        (always a GET when `live`; the answer refreshes the cache)."""
        store = self.cache.store_for(kind, namespace)
        found = store.get(namespace, name) if store is not None and not live else None
        if found is not None and _as_new(found, at_least):
            self.cache_hits += 1
            return found
        current = self.inner.get(kind, namespace=namespace, name=name)
        if current is not None and store is not None:
            store.upsert(current)
        return current

    def list(self, kind: str, *, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        store = self.cache.store_for(kind, namespace)
        if store is not None:
            try:
                found = store.list(namespace, selector)
            except SelectorError:
                pass
            else:
                self.cache_hits += 1
                return found
        return self.inner.list(kind, namespace=namespace, selector=selector)

    def list_with_version(
        self, kind: str, *, namespace: str | None, selector: str = ""
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        return self.inner.list_with_version(kind, namespace=namespace, selector=selector)

    def watch(self, kind: str, **kwargs: Any) -> Any:
        return self.inner.watch(kind, **kwargs)

    def apply(self, obj: dict[str, Any], *, field_manager: str) -> dict[str, Any]:
        written = self.inner.apply(obj, field_manager=field_manager)
        self._remember(obj["kind"], written)
        return written

    def delete(self, kind: str, *, namespace: str, name: str) -> None:
        self.inner.delete(kind, namespace=namespace, name=name)

    def patch_status(
        self, kind: str, *, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        written = self.inner.patch_status(kind, namespace=namespace, name=name, status=status)
        self._remember(kind, written)
        return written

    def _remember(self, kind: str, written: dict[str, Any]) -> None:
        meta = written.get("metadata") or {}
        store = self.cache.store_for(kind, meta.get("namespace"))
        if store is not None and meta.get("name"):
            store.upsert(written)


def _as_new(obj: dict[str, Any], version: str) -> bool:
    return not version or at_least(obj, version)
