"""List, then watch, one kind into a `Store` (client-go's reflector, in a thread).

The informer lists the kind (filtered by a label selector), fills its store, and follows the
watch from the listing's resourceVersion, resuming where it stopped when the server ends a
watch and listing afresh when the server has compacted that version away (410 Gone) or the
connection fails. Every change is handed to `on_change` (the operator queues the owning
endpoint's pass there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .client import KubeError
from .store import Store

log = logging.getLogger(__name__)

BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)

OnChange = Callable[[str, dict[str, Any]], None]
"""Called with the event type (ADDED, MODIFIED, DELETED; SYNC after a listing) and object."""


class WatchSource(Protocol):
    """What an informer needs of the API client (kube/client.py `Kube`)."""

    def list_with_version(
        self, kind: str, *, namespace: str | None, selector: str = ""
    ) -> tuple[list[dict[str, Any]], str]: ...

    def watch(
        self,
        kind: str,
        *,
        namespace: str | None,
        selector: str = "",
        resource_version: str,
        timeout_seconds: int = ...,
    ) -> Any: ...


class ExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Informer:
    """Keeps `store` in step with the API server until `stop` is set."""

    def __init__(
        self,
        source: WatchSource,
        store: Store,
        *,
        selector: str = "",
        on_change: OnChange | None = None,
        stop: threading.Event | None = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.selector = selector
        self.on_change = on_change
        self.stop = stop or threading.Event()
        self._sleep = sleep or self.stop.wait
        self.lists = 0
        self.watches = 0

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"informer-{self.store.kind}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        """List and watch until stopped; back off on errors, never give up."""
        failures = 0
        while not self.stop.is_set():
            try:
                version = self.list_once()
                failures = 0
                while not self.stop.is_set():
                    version = self.watch_once(version)
            except ExpiredError:
                log.info("informer %s: resourceVersion expired; listing again", self.store.kind)
            except KubeError as exc:
                if exc.status == 410:
                    log.info("informer %s: resourceVersion expired; listing again", self.store.kind)
                    continue
                if self._back_off(exc, failures):
                    return
                failures += 1
            except Exception as exc:
                if self._back_off(exc, failures):
                    return
                failures += 1

    def _back_off(self, exc: Exception, failures: int) -> bool:
        """Wait before listing again; True when stopped meanwhile."""
        delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
        log.warning("informer %s: %s; listing again in %gs", self.store.kind, exc, delay)
        return bool(self._sleep(delay))

    def list_once(self) -> str:
        items, version = self.source.list_with_version(
            self.store.kind, namespace=self.store.namespace, selector=self.selector
        )
        self.lists += 1
        for obj in self.store.replace(items):
            self._notify("SYNC", obj)
        return version

    def watch_once(self, version: str) -> str:
        """Follow one watch to its end; returns the resourceVersion to resume from."""
        self.watches += 1
        for event in self.source.watch(
            self.store.kind,
            namespace=self.store.namespace,
            selector=self.selector,
            resource_version=version,
        ):
            if self.stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise ExpiredError()
                raise KubeError(
                    status=int(obj.get("code") or 500),
                    method="WATCH",
                    path=self.store.kind,
                    body=str(obj.get("message") or obj),
                )
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            changed = self.store.remove(obj) if kind == "DELETED" else self.store.upsert(obj)
            if changed:
                self._notify(str(kind), obj)
        return version

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, obj)
        except Exception:
            log.exception("informer %s: change handler failed", self.store.kind)
