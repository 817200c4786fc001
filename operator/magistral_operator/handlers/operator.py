"""kopf registrations. The operator config and API client come in through kopf's memo."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION
from ..api.labels import ENDPOINT_LABEL, MANAGER
from ..kube.client import KubeError
from ..kube.demand import HttpDemandReader
from .diffbase import DigestDiffBaseStorage
from .metrics import CHILD_WRITES, RECONCILE_SECONDS, RECONCILES
from .reconcile import Outcome, reconcile, report_failure
from .refusals import RefusalBook

# Periodic level-triggered pass; tests shorten it through the environment.
RESYNC_SECONDS = float(os.environ.get("MAGISTRAL_RESYNC_SECONDS", "30"))
MAX_BACKOFF_SECONDS = 300

log = logging.getLogger(__name__)

_locks: dict[tuple[str, str], threading.Lock] = {}
_refusals = RefusalBook()
_demand = HttpDemandReader()
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def backoff_seconds(retry: int) -> float:
    """Bounded exponential backoff for specs that cannot be served: 10 s, 20 s, ... 300 s."""
    return float(min(MAX_BACKOFF_SECONDS, 10 * 2 ** min(retry, 10)))


def _run(memo: kopf.Memo, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    with _lock_for(namespace, name), RECONCILE_SECONDS.time():
        # Re-read under the lock: the event's copy may predate the previous pass's status write,
        # and deriving from it would write (and announce) the same transition twice.
        fresh = memo.kube.get("MagistralEndpoint", namespace=namespace, name=name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return Outcome()
        try:
            outcome = reconcile(memo.kube, memo.config, fresh, demand=_demand, refusals=_refusals)
        except Exception as exc:
            if isinstance(exc, KubeError) and namespace_gone(exc):
                # The endpoint goes with its namespace: nothing to report.
                log.info("%s/%s: namespace is gone or terminating; skipped", namespace, name)
                _refusals.forget((namespace, name))
                _demand.forget((namespace, name))
                return Outcome()
            RECONCILES.labels(result="error").inc()
            _report(memo, fresh, exc)
            raise
    RECONCILES.labels(result="invalid" if outcome.problem else "ok").inc()
    for action, names in (("apply", outcome.applied), ("delete", outcome.deleted)):
        for name in names:
            CHILD_WRITES.labels(kind=name.split("/", 1)[0], action=action).inc()
    return outcome


def namespace_gone(exc: KubeError) -> bool:
    """A write into a namespace that was deleted, or is being deleted, with the endpoint."""
    return (exc.status == 404 and "namespaces" in exc.message and "not found" in exc.message) or (
        exc.status == 403 and "because it is being terminated" in exc.message
    )


def _report(memo: kopf.Memo, body: Mapping[str, Any], exc: Exception) -> None:
    meta = body["metadata"]
    try:
        report_failure(memo.kube, dict(body), exc)
    except Exception:
        log.warning("%s/%s: cannot report the failure in status", meta["namespace"], meta["name"])


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's own bookkeeping in annotations and out of status; we post our own Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.posting.enabled = False
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.execution.max_workers = 8
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_spec(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """A new or changed spec (or an operator restart): reconcile, retrying with backoff."""
    outcome = _run(memo, body)
    if outcome.problem:
        raise kopf.TemporaryError(outcome.problem, delay=backoff_seconds(retry))


@kopf.on.startup()
def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Start the periodic level-triggered pass (status refresh and drift repair).

    A plain thread rather than kopf timers: kopf puts a finalizer on objects with timers,
    which would block deleting an endpoint while the operator is down.
    """
    stop = threading.Event()
    memo.resync_stop = stop
    thread = threading.Thread(target=_resync_loop, args=(memo, stop), daemon=True)
    thread.start()


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    """Stop the periodic pass on shutdown."""
    stop = memo.get("resync_stop")
    if stop is not None:
        stop.set()


def _resync_loop(memo: kopf.Memo, stop: threading.Event) -> None:
    while not stop.wait(RESYNC_SECONDS):
        namespaces = memo.get("namespaces") or [None]
        for namespace in namespaces:
            try:
                endpoints = memo.kube.list("MagistralEndpoint", namespace=namespace)
            except Exception:
                log.exception("resync: cannot list endpoints in %s", namespace or "all namespaces")
                continue
            for body in endpoints:
                if body["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    _run(memo, body)
                except Exception:
                    meta = body["metadata"]
                    log.exception("resync of %s/%s failed", meta["namespace"], meta["name"])


def _parent_changed(body: kopf.Body, memo: kopf.Memo) -> None:
    meta = body.get("metadata", {})
    name = (meta.get("labels") or {}).get(ENDPOINT_LABEL)
    namespace = meta.get("namespace")
    if not name or not namespace:
        return
    parent = memo.kube.get("MagistralEndpoint", namespace=namespace, name=name)
    if parent is None or parent["metadata"].get("deletionTimestamp"):
        return
    _run(memo, parent)


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": MANAGER})
def deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A child Deployment changed: refresh the parent's status."""
    _parent_changed(body, memo)


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": MANAGER})
def pod_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A serving pod changed (scheduled, ready, failing): refresh the parent's status."""
    _parent_changed(body, memo)
