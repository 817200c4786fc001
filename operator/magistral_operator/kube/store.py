"""A watch-fed copy of one kind of object (an informer's store, as client-go calls it).

`Store` holds the objects an `Informer` (kube/informer.py) lists and then follows through a
watch, plus what the operator itself wrote (the API's answer to an apply or a status patch),
so a pass right after a write sees it even before the watch brings it. An object is replaced
only by a version at least as new (`resourceVersion`, compared as the integers the API server
hands out), so a late watch event never rolls back a newer copy; a deleted object leaves a
tombstone so a late event cannot bring it back.

Objects are kept as compact JSON (with their labels and version beside it, for selectors and
ordering) and parsed on each read: a reader gets its own copy, never shared with the code that
edits it, and an operator watching thousands of children holds a few kilobytes per object,
not the several times that much a parsed dict takes.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]
"""(namespace, name)."""


class SelectorError(ValueError):
    """A label selector the store cannot evaluate (only ``k=v[,k=v]`` is supported)."""


def parse_selector(selector: str) -> dict[str, str]:
    """An equality selector ``k=v,k2=v2`` as a dict; anything else raises `SelectorError`."""
    wanted: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key or any(c in part for c in "!()<> ") or value.startswith("="):
            raise SelectorError(f"unsupported label selector {selector!r}")
        wanted[key.strip()] = value.strip()
    return wanted


def version_of(obj: dict[str, Any]) -> int | None:
    """The object's resourceVersion as an integer, or None when it is not one."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


def at_least(obj: dict[str, Any], version: str) -> bool:
    """Whether `obj` is as new as `version` (True when either is not comparable)."""
    mine = version_of(obj)
    return mine is None or not version.isdigit() or mine >= int(version)


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without managedFields (the largest part of most objects; never read)."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


@dataclass(frozen=True)
class _Entry:
    labels: dict[str, str]
    version: int | None
    raw: bytes

    @classmethod
    def of(cls, obj: dict[str, Any]) -> _Entry:
        slim = _slim(obj)
        labels = (slim.get("metadata") or {}).get("labels") or {}
        raw = json.dumps(slim, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(labels=dict(labels), version=version_of(slim), raw=raw)

    def load(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.raw)
        return loaded

    def matches(self, wanted: dict[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in wanted.items())


class Store:
    """The objects of one kind in one scope (a namespace, or all of them when None) that match
    `selector` (what its informer lists and watches): it holds nothing else, so the answer to a
    read of anything else must come from the API server."""

    def __init__(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        selector: str = "",
        index_label: str | None = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace
        self.selector = selector
        self._wanted = parse_selector(selector)
        self._objects: dict[Key, _Entry] = {}
        # A list whose selector names `index_label` looks only at the objects with that value
        # (the operator indexes its children by endpoint: a pass lists its own, not all).
        self.index_label = index_label
        self._index: dict[str, set[Key]] = {}
        self._tombstones: dict[Key, int] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()

    # --- what the informer feeds in ---

    def replace(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """A fresh listing replaces everything; returns the objects that changed or went."""
        listed = list(items)
        fresh = {_key(o): _Entry.of(o) for o in listed}
        with self._lock:
            changed = [
                o
                for o in listed
                if (entry := fresh[_key(o)]).version is None
                or _key(o) not in self._objects
                or self._objects[_key(o)].version != entry.version
            ]
            changed += [e.load() for k, e in self._objects.items() if k not in fresh]
            self._objects = fresh
            self._index = {}
            for k, e in fresh.items():
                self._indexed(k, e)
            self._tombstones.clear()
        self._synced.set()
        return changed

    def upsert(self, obj: dict[str, Any]) -> bool:
        """Keep `obj` unless the store has a newer copy or saw it deleted later, or it does not
        match the store's selector; True if kept."""
        key, entry = _key(obj), _Entry.of(obj)
        version = entry.version
        if not entry.matches(self._wanted):  # not what the watch follows: never kept
            return False
        with self._lock:
            current = self._objects.get(key)
            current_version = current.version if current is not None else None
            if version is not None:
                if current_version is not None and current_version > version:
                    return False
                if key in self._tombstones and self._tombstones[key] >= version:
                    return False
            self._tombstones.pop(key, None)
            if current is not None:
                self._unindexed(key, current)
            self._objects[key] = entry
            self._indexed(key, entry)
            return True

    def remove(self, obj: dict[str, Any]) -> bool:
        """A watch's DELETED event: forget the object (unless a newer copy is here)."""
        key, version = _key(obj), version_of(obj)
        with self._lock:
            current = self._objects.get(key)
            current_version = current.version if current is not None else None
            if version is not None and current_version is not None and current_version > version:
                return False
            gone = self._objects.pop(key, None)
            if gone is not None:
                self._unindexed(key, gone)
            if version is not None:
                self._tombstones[key] = version
            return True

    # --- what readers ask ---

    @property
    def synced(self) -> bool:
        """True once a listing has filled the store (before that, readers ask the API)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def covers(self, namespace: str | None) -> bool:
        """Whether this store holds the objects of `namespace` (None: all namespaces)."""
        return self.namespace is None or self.namespace == namespace

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get((namespace, name))
        return found.load() if found is not None else None

    def list(self, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        """Copies of the objects in `namespace` (None: all) matching an equality selector."""
        wanted = parse_selector(selector)
        with self._lock:
            if self.index_label is not None and self.index_label in wanted:
                keys = sorted(self._index.get(wanted[self.index_label], ()))
            else:
                keys = sorted(self._objects)
            found = [
                e
                for k in keys
                if (namespace is None or k[0] == namespace)
                and (e := self._objects[k]).matches(wanted)
            ]
        return [e.load() for e in found]

    def _indexed(self, key: Key, entry: _Entry) -> None:
        if self.index_label is not None and self.index_label in entry.labels:
            self._index.setdefault(entry.labels[self.index_label], set()).add(key)

    def _unindexed(self, key: Key, entry: _Entry) -> None:
        if self.index_label is not None and self.index_label in entry.labels:
            keys = self._index.get(entry.labels[self.index_label])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[entry.labels[self.index_label]]

    def keys(self) -> builtins.list[Key]:
        with self._lock:
            return sorted(self._objects)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)
