"""kopf registrations. The operator config and API client come in through kopf's memo."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION
from ..api.labels import ENDPOINT_LABEL, MANAGER
from .metrics import CHILD_WRITES, RECONCILE_SECONDS, RECONCILES
from .reconcile import Outcome, reconcile

RESYNC_SECONDS = 30
FORCE_APPLY_EVERY = 20  # timer ticks: a full re-apply (drift repair) every 10 minutes
MAX_BACKOFF_SECONDS = 300

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def backoff_seconds(retry: int) -> float:
    """Bounded exponential backoff for specs that cannot be served: 10 s, 20 s, ... 300 s."""
    return float(min(MAX_BACKOFF_SECONDS, 10 * 2 ** min(retry, 10)))


def plain(value: Any) -> Any:
    """kopf's mapping views as plain dicts and lists (what the pure layers expect)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _run(memo: kopf.Memo, body: Mapping[str, Any], *, force_apply: bool = False) -> Outcome:
    meta = body["metadata"]
    with _lock_for(meta["namespace"], meta["name"]), RECONCILE_SECONDS.time():
        try:
            outcome = reconcile(memo.kube, memo.config, plain(body), force_apply=force_apply)
        except Exception:
            RECONCILES.labels(result="error").inc()
            raise
    RECONCILES.labels(result="invalid" if outcome.problem else "ok").inc()
    for action, names in (("apply", outcome.applied), ("delete", outcome.deleted)):
        for name in names:
            CHILD_WRITES.labels(kind=name.split("/", 1)[0], action=action).inc()
    return outcome


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's own bookkeeping in annotations and out of status; we post our own Events."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
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


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Periodic level-triggered pass: status refresh and drift repair."""
    ticks = memo.setdefault("ticks", {})
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    ticks[key] = ticks.get(key, 0) + 1
    _run(memo, body, force_apply=ticks[key] % FORCE_APPLY_EVERY == 0)


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
