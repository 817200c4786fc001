"""kopf registrations. The operator config and API client come in through kopf's memo."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any, cast

import kopf

from ..api import GROUP, PLURAL, VERSION
from ..api.labels import ENDPOINT_LABEL
from ..kube.cached import ENDPOINT_KIND
from ..kube.client import KubeError, NotLeaderError
from ..kube.collector import DemandCollector, RoundReport
from ..kube.lease import AlwaysLeader
from .diffbase import DigestDiffBaseStorage, LeaderOnlyProgressStorage
from .metrics import (
    CHILD_WRITES,
    DEMAND_READS,
    DEMAND_ROUND_SECONDS,
    PASSES,
    RECONCILE_SECONDS,
    RECONCILES,
)
from .reconcile import Outcome, reconcile, report_failure
from .refusals import RefusalBook
from .workqueue import PassQueue

# Periodic level-triggered pass; tests shorten it through the environment.
RESYNC_SECONDS = float(os.environ.get("MAGISTRAL_RESYNC_SECONDS", "30"))
# How long a child event waits for more events of the same endpoint (one pass for a burst).
COALESCE_SECONDS = float(os.environ.get("MAGISTRAL_COALESCE_SECONDS", "0.5"))
# Threads running queued passes (kopf's own executor runs the spec handlers).
PASS_WORKERS = 4
# Threads of kopf's executor: the endpoints' create, spec-change and resume passes (500
# creates at once queue here). A pass mostly waits on the API server, but more threads help
# only while the API server has CPU to spare: on the 2-core bench machine 16 converged slower
# than 8 (docs/scale.md, "Parallel applies"). Chart value `specWorkers`.
SPEC_WORKERS = int(os.environ.get("MAGISTRAL_SPEC_WORKERS", "8"))
# How long startup waits for the caches to fill before the first passes (they read the API
# until then).
CACHE_SYNC_SECONDS = 30.0
# How often the resync loop looks at the leadership term (no I/O): a new term starts a full pass.
LEADERSHIP_POLL_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 300

log = logging.getLogger(__name__)

_locks: dict[tuple[str, str], threading.Lock] = {}
_refusals = RefusalBook()
_demand = DemandCollector()
_locks_guard = threading.Lock()


def _lock_for(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def backoff_seconds(retry: int) -> float:
    """Bounded exponential backoff for specs that cannot be served: 10 s, 20 s, ... 300 s."""
    return float(min(MAX_BACKOFF_SECONDS, 10 * 2 ** min(retry, 10)))


def leadership(memo: kopf.Memo) -> Any:
    """The process's leadership: a `LeaseElector` with leader election, else `AlwaysLeader`."""
    found = memo.get("leadership")
    return found if found is not None else _ALWAYS


_ALWAYS = AlwaysLeader()


def _run(memo: kopf.Memo, body: Mapping[str, Any]) -> Outcome:
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if not leadership(memo).is_leader():
        # A standby neither reads nor writes; the leader's pass covers this event, and a new
        # leader starts with a full pass over every endpoint (level-triggered: nothing is lost).
        return Outcome()
    try:
        return _run_as_leader(memo, namespace, name, str(meta.get("resourceVersion") or ""))
    except NotLeaderError:
        log.warning("%s/%s: the lease was lost during the pass; stopped writing", namespace, name)
        return Outcome()


def _run_as_leader(memo: kopf.Memo, namespace: str, name: str, version: str) -> Outcome:
    with _lock_for(namespace, name), RECONCILE_SECONDS.time():
        # Re-read under the lock: the event's copy may predate the previous pass's status write,
        # and deriving from it would write (and announce) the same transition twice.
        # The cache's copy has every status write of this process (kube/cached.py); the first
        # pass of a leadership term reads the API, for the writes of a previous leader.
        fresh = memo.kube.get_fresh(
            "MagistralEndpoint",
            namespace=namespace,
            name=name,
            at_least=version,
            live=_first_in_term(memo, (namespace, name)),
        )
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return Outcome()
        try:
            try:
                outcome = reconcile(
                    memo.kube, memo.config, fresh, demand=_demand, refusals=_refusals
                )
            finally:
                PASSES.labels(namespace=namespace, endpoint=name).inc()
        except NotLeaderError:
            raise
        except Exception as exc:
            if isinstance(exc, KubeError) and (namespace_gone(exc) or endpoint_gone(exc, name)):
                # The endpoint went (alone or with its namespace) during the pass, or just
                # before it and the cache had not seen it go: nothing to report.
                log.info("%s/%s: the endpoint or its namespace is gone; skipped", namespace, name)
                _forget((namespace, name))
                return Outcome()
            RECONCILES.labels(result="error").inc()
            _report(memo, fresh, exc)
            raise
    RECONCILES.labels(result="invalid" if outcome.problem else "ok").inc()
    for action, names in (("apply", outcome.applied), ("delete", outcome.deleted)):
        for child in names:
            CHILD_WRITES.labels(kind=child.split("/", 1)[0], action=action).inc()
    return outcome


_passed_in_term: dict[tuple[str, str], int | None] = {}


def _first_in_term(memo: kopf.Memo, key: tuple[str, str]) -> bool:
    """Whether this is the endpoint's first pass in the current leadership term."""
    term = leadership(memo).term()
    first = key not in _passed_in_term or _passed_in_term[key] != term
    _passed_in_term[key] = term
    return first


def _forget(key: tuple[str, str]) -> None:
    """Drop what this process keeps of an endpoint that is gone."""
    _refusals.forget(key)
    _demand.forget(key)
    _passed_in_term.pop(key, None)
    with contextlib.suppress(KeyError):
        PASSES.remove(*key)


def endpoint_gone(exc: KubeError, name: str) -> bool:
    """A write about the endpoint `name` (its status) answered: it does not exist."""
    return exc.status == 404 and f'magistralendpoints.magistral.dev "{name}" not found' in (
        exc.message
    )


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
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Keep kopf's own bookkeeping in annotations and out of status; we post our own Events.

    Only the leader stores it: a standby's kopf then has nothing to patch and writes nothing.
    """
    may_write = leadership(memo).is_leader
    settings.persistence.progress_storage = LeaderOnlyProgressStorage(
        prefix=GROUP, may_write=may_write
    )
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", may_write=may_write
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    settings.posting.enabled = False
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    settings.execution.max_workers = max(1, SPEC_WORKERS)
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
    """Start the demand collector, the watch-fed caches, the pass queue and the periodic
    level-triggered pass.

    The collector (kube/collector.py) reads the routers and engines in the background; the
    passes read its memory, and it queues an endpoint's pass when what it read would change
    the pass's decisions (`demand_changed`).

    The caches (kube/cached.py) answer the passes' reads of endpoints and children; their
    watch events queue the owning endpoint's pass (`child_changed`), coalesced by the queue
    (handlers/workqueue.py). The resync is a plain thread rather than kopf timers: kopf puts
    a finalizer on objects with timers, which would block deleting an endpoint while the
    operator is down.
    """
    _demand.on_change = lambda key: demand_changed(memo, key)
    _demand.on_round = record_round
    _demand.start(active=leadership(memo).is_leader)
    cache = memo.get("cache")
    if cache is not None:
        queue = PassQueue(lambda key: run_key(memo, key), workers=PASS_WORKERS)
        memo.queue = queue
        cache.on_change = lambda kind, event, obj: child_changed(memo, kind, event, obj)
        cache.start()
        queue.start()
        if not cache.wait_synced(CACHE_SYNC_SECONDS):
            log.warning(
                "caches not filled in %gs; passes read the API meanwhile", CACHE_SYNC_SECONDS
            )
    stop = threading.Event()
    memo.resync_stop = stop
    thread = threading.Thread(target=_resync_loop, args=(memo, stop), daemon=True)
    thread.start()


@kopf.on.cleanup()
def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    """Stop the periodic pass, the collector, the queue and the caches on shutdown; give the
    Lease up."""
    stop = memo.get("resync_stop")
    if stop is not None:
        stop.set()
    _demand.stop()
    queue, cache = memo.get("queue"), memo.get("cache")
    if queue is not None:
        queue.stop()
    if cache is not None:
        cache.close()
    leadership(memo).stop()


def _resync_loop(memo: kopf.Memo, stop: threading.Event, *, clock: Any = time.monotonic) -> None:
    """A full pass every RESYNC_SECONDS while leader, and one at once on becoming leader.

    A standalone operator is leader in term 0 from the start (kopf's resume handlers make its
    first pass); with leader election each new term starts with a full pass, which catches up
    on whatever changed while this process was standby. A lost term stops the pass at the
    next endpoint (and the Kube client refuses the writes of the endpoint in progress).
    """
    lead = leadership(memo)
    seen_term = lead.term()
    next_pass = clock() + RESYNC_SECONDS
    while not stop.wait(LEADERSHIP_POLL_SECONDS):
        term = lead.term()
        if term is None:
            seen_term = None
            continue
        if term == seen_term and clock() < next_pass:
            continue
        if term != seen_term:
            log.info("leader (term %s): a full pass over every endpoint", term)
        seen_term = term
        full_pass(memo, term)
        next_pass = clock() + RESYNC_SECONDS


def full_pass(memo: kopf.Memo, term: int | None) -> None:
    """A pass of every endpoint (queued, or run here without a queue), while leader in `term`."""
    lead = leadership(memo)
    namespaces = memo.get("namespaces") or [None]
    for namespace in namespaces:
        if lead.term() != term:
            return
        try:
            endpoints = memo.kube.list("MagistralEndpoint", namespace=namespace)
        except Exception:
            log.exception("resync: cannot list endpoints in %s", namespace or "all namespaces")
            continue
        for body in endpoints:
            if lead.term() != term:
                log.warning("resync: leadership lost; the pass stops")
                return
            meta = body["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            # Behind every event-driven pass (workqueue.py): the resync is the safety net.
            dispatch(memo, (meta["namespace"], meta["name"]), background=True)


def record_round(report: RoundReport) -> None:
    """The collector's round in the operator's metrics."""
    DEMAND_ROUND_SECONDS.observe(report.seconds)
    for component, result, count in (
        ("router", "answered", report.routers_answered),
        ("router", "silent", report.routers_silent),
        ("engine", "answered", report.engines_answered),
        ("engine", "silent", report.engines_silent),
    ):
        if count:
            DEMAND_READS.labels(component=component, result=result).inc(count)


def demand_changed(memo: kopf.Memo, key: tuple[str, str]) -> None:
    """The collector read something about `key` that its last pass did not see (a router
    answering or not, queued requests, a replica gone silent or unreachable): queue its pass."""
    if leadership(memo).is_leader():
        dispatch(memo, key)


def child_changed(memo: kopf.Memo, kind: str, event: str, obj: Mapping[str, Any]) -> None:
    """A cache saw a child change (or go): queue its endpoint's pass, coalesced.

    The endpoints' own events are kopf's (`on_spec`); a status write of ours is not a reason
    for another pass. A deleted endpoint's records (demand, refusals, term) are dropped.
    """
    meta = obj.get("metadata", {})
    if kind == ENDPOINT_KIND:
        if event == "DELETED":  # what this process kept of it goes too
            _forget((str(meta.get("namespace")), str(meta.get("name"))))
        return
    if not leadership(memo).is_leader():
        return
    name = (meta.get("labels") or {}).get(ENDPOINT_LABEL)
    namespace = meta.get("namespace")
    if name and namespace:
        dispatch(memo, (namespace, name), delay=COALESCE_SECONDS)


def dispatch(
    memo: kopf.Memo, key: tuple[str, str], *, delay: float = 0.0, background: bool = False
) -> None:
    """Queue `key`'s pass (`background`: the resync's, after every other due key); without a
    queue (a bare memo in tests), run it here."""
    queue = memo.get("queue")
    if queue is None:
        run_key(memo, key)
    else:
        queue.add(key, delay=delay, background=background)


def run_key(memo: kopf.Memo, key: Hashable) -> None:
    """One queued pass: the endpoint as the cache has it (nothing to do if it is gone)."""
    if not leadership(memo).is_leader():
        return
    namespace, name = cast(tuple[str, str], key)
    try:
        body = memo.kube.get("MagistralEndpoint", namespace=namespace, name=name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            _forget((namespace, name))  # gone: nothing to read again
            return
        _run(memo, body)
    except Exception:
        log.exception("pass of %s/%s failed", namespace, name)
