"""Applying an endpoint's children: skip unchanged ones, remove stale ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ..api.labels import APPLIED_HASH_ANNOTATION, ENDPOINT_LABEL, MANAGER
from .client import Kube, KubeError
from .drift import drifted

# Kinds whose set can shrink: one Deployment per usable pool, one ConfigMap per revision
# (pruned only once no pod template of the endpoint mounts it: config_maps_to_prune). The
# others always exist. Deployments are pruned first, so that their templates no longer count.
PRUNABLE_KINDS = ("Deployment", "ConfigMap")
# Objects whose pod templates keep a revision's ConfigMap alive: the Deployments, and the
# ReplicaSets Kubernetes keeps for them (revisionHistoryLimit), which a rollback restores from.
TEMPLATE_KINDS = ("Deployment", "ReplicaSet")

APPLY_WORKERS = 4
"""The most applies of one pass in flight at once (within one phase, below)."""

APPLY_THREADS = 8
"""The most applies in flight at once in the whole process, all passes together: the threads
of the shared pool. As many as kopf's 8 workers had, one apply each, before the phases: a
burst of creates then loads a busy API server no more than before (docs/scale.md, "Parallel
applies"), while a lone pass (a spec change) gets its applies in parallel."""

_POOL = ThreadPoolExecutor(max_workers=APPLY_THREADS, thread_name_prefix="apply")
"""Its threads start on first use."""


def shared_pool() -> ThreadPoolExecutor:
    """The process's pool of APPLY_THREADS threads for applies."""
    return _POOL


# The phases of a pass's applies: a phase starts once every apply of the one before has
# returned, so a pod never starts before what it needs exists. First everything a pod or a
# binding refers to (runtime ConfigMap, ServiceAccount, Role, Services, PDBs,
# NetworkPolicies); then the RoleBindings (the API server checks a binding against its Role,
# which must exist: the operator holds no `bind` verb); last the kinds with a pod template.
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
BINDING_KINDS = frozenset({"RoleBinding"})


def apply_phase(kind: str) -> int:
    """The phase (0, 1, 2) in which a child of `kind` is applied."""
    if kind in POD_TEMPLATE_KINDS:
        return 2
    if kind in BINDING_KINDS:
        return 1
    return 0


@dataclass(frozen=True)
class ChildRefused:
    """A child the API server refused to apply, with its answer."""

    label: str  # Kind/name
    digest: str  # content hash of what was refused (a changed spec retries at once)
    status: int
    message: str


@dataclass
class ApplyReport:
    """What an apply pass changed, and which children the API server refused."""

    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    refused: list[ChildRefused] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    """Deployments not created because they would run no pods (`deferred_create`)."""


def deferred_create(obj: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether a child is not created yet: a Deployment that does not exist and would run no
    pods (an overflow pool the placement leaves empty, an endpoint at zero replicas). It is
    created by the pass that gives it replicas; once it exists it stays, scaled to zero, so a
    rollback finds its ReplicaSets. One Deployment and ReplicaSet fewer per empty pool, and
    the status writes of both (docs/scale.md)."""
    if live is not None or obj.get("kind") != "Deployment":
        return False
    replicas = (obj.get("spec") or {}).get("replicas")
    return replicas is not None and int(replicas) == 0  # unset, Kubernetes runs 1


def with_applied_hash(obj: dict[str, Any], digest: str) -> dict[str, Any]:
    """A copy of `obj` annotated with the hash of its desired content."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH_ANNOTATION: digest}
    return {**obj, "metadata": meta}


def apply_children(
    kube: Kube,
    *,
    namespace: str,
    endpoint: str,
    desired: list[tuple[dict[str, Any], str]],
    held: dict[str, ChildRefused] | None = None,
    workers: int = APPLY_WORKERS,
    pool: Executor | None = None,
) -> ApplyReport:
    """Apply each (object, content hash) unless the live object carries the same hash.

    The hash annotation lets a re-reconcile of an unchanged endpoint issue no writes at all;
    a live object that no longer contains what the operator applies (someone scaled or edited
    it) is applied again. No periodic forced re-apply: it would write on every pass.

    The children to apply go in phases (`apply_phase`: what pods and bindings refer to, the
    RoleBindings, the Deployments), each phase's concurrently, up to `workers` at once, on
    `pool` (the process's `shared_pool()` unless given, which bounds the applies in flight
    across all passes); a phase starts when the one before has returned, so a Deployment is
    never applied before what its pods need. The report lists the children in `desired`
    order, as a sequential pass would. An error that is not a refusal ends the pass once its
    phase has returned (the earliest in `desired` order is raised; no later phase starts).

    A child the API server refuses (a 4xx, or the 500 a server-side apply gets for some invalid
    objects) does not stop the others: it is reported in ``refused``. ``held`` maps labels to
    earlier refusals still in back-off: a child whose content hash is unchanged since its
    refusal is not sent again and stays refused; a changed one is tried at once.
    """
    report = ApplyReport()
    held = held or {}
    # What each child needs is decided from the reads first (the cache's, in this thread):
    # per index, its refusal still held, "unchanged", or the phase that applies it.
    decided: list[ChildRefused | str | None] = []
    phases: dict[int, list[tuple[int, dict[str, Any], str, str]]] = {}
    for index, (obj, digest) in enumerate(desired):
        kind, name = obj["kind"], obj["metadata"]["name"]
        label = f"{kind}/{name}"
        earlier = held.get(label)
        if earlier is not None and earlier.digest == digest:
            decided.append(earlier)
            continue
        wanted = with_applied_hash(obj, digest)
        live = kube.get(kind, namespace=namespace, name=name)
        live_hash = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
            APPLIED_HASH_ANNOTATION
        )
        if live is not None and live_hash == digest and not drifted(live, wanted):
            decided.append("unchanged")
            continue
        if deferred_create(obj, live):
            decided.append("deferred")
            continue
        decided.append(None)  # applied, unless the phase's apply is refused
        phases.setdefault(apply_phase(kind), []).append((index, wanted, label, digest))
    for phase in sorted(phases):
        applied = _apply_phase(kube, phases[phase], workers=workers, pool=pool)
        for index, refused in applied:
            decided[index] = refused
    for (obj, _), outcome in zip(desired, decided, strict=True):
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if isinstance(outcome, ChildRefused):
            report.refused.append(outcome)
        elif outcome == "unchanged":
            report.unchanged.append(label)
        elif outcome == "deferred":
            report.deferred.append(label)
        else:
            report.applied.append(label)
    keep = {(o["kind"], o["metadata"]["name"]) for o, _ in desired}
    selector = f"{ENDPOINT_LABEL}={endpoint}"
    for kind in PRUNABLE_KINDS:
        names = [
            o["metadata"]["name"]
            for o in kube.list(kind, namespace=namespace, selector=selector)
            if _owned_by_us(o)
        ]
        current = {name for k, name in keep if k == kind}
        if kind == "ConfigMap":
            templates = [
                (o.get("spec") or {}).get("template") or {}
                for k in TEMPLATE_KINDS
                for o in kube.list(k, namespace=namespace, selector=selector)
            ]
            stale = config_maps_to_prune(names, current=current, templates=templates)
        else:
            stale = [name for name in names if name not in current]
        for name in stale:
            kube.delete(kind, namespace=namespace, name=name)
            report.deleted.append(f"{kind}/{name}")
    return report


def _apply_one(kube: Kube, wanted: dict[str, Any], label: str, digest: str) -> ChildRefused | None:
    """Server-side apply one child; its refusal, or None when applied."""
    try:
        kube.apply(wanted, field_manager=MANAGER)
    except KubeError as exc:
        if not refusal(exc):
            raise
        return ChildRefused(label=label, digest=digest, status=exc.status, message=exc.message)
    return None


def _apply_phase(
    kube: Kube,
    items: list[tuple[int, dict[str, Any], str, str]],
    *,
    workers: int,
    pool: Executor | None,
) -> list[tuple[int, ChildRefused | None]]:
    """Apply one phase's children (index, object, label, hash), up to `workers` at once on
    `pool` (a lone one too: the pool bounds the process's applies): (index, refusal or None)
    for each. Every apply has returned when this does; an error other than a refusal is
    raised then, the earliest child's (by index), and no apply of the phase starts after it."""
    if workers <= 1:
        return [
            (index, _apply_one(kube, wanted, label, digest))
            for index, wanted, label, digest in items
        ]
    executor = pool if pool is not None else shared_pool()
    waiting = list(items)
    running: dict[Future[ChildRefused | None], int] = {}
    done: list[tuple[int, Future[ChildRefused | None]]] = []
    while waiting or running:
        while waiting and len(running) < workers:
            index, wanted, label, digest = waiting.pop(0)
            running[executor.submit(_apply_one, kube, wanted, label, digest)] = index
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            done.append((running.pop(future), future))
        if any(f.exception() is not None for _, f in done):
            waiting = []  # no new apply once one failed; the running ones are awaited
    done.sort(key=lambda d: d[0])
    for _, future in done:
        error = future.exception()
        if error is not None:
            raise error
    return [(index, future.result()) for index, future in done]


def config_maps_in_template(template: Mapping[str, Any]) -> set[str]:
    """The ConfigMaps a pod template needs: volumes (also projected), envFrom and env refs."""
    spec = template.get("spec") or {}
    names: set[str] = set()
    for volume in spec.get("volumes") or []:
        if volume.get("configMap"):
            names.add(volume["configMap"].get("name", ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("configMap"):
                names.add(source["configMap"].get("name", ""))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for env_from in container.get("envFrom") or []:
            if env_from.get("configMapRef"):
                names.add(env_from["configMapRef"].get("name", ""))
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                names.add(ref.get("name", ""))
    names.discard("")
    return names


def config_maps_to_prune(
    live: Iterable[str], *, current: set[str], templates: Iterable[Mapping[str, Any]]
) -> list[str]:
    """The endpoint's ConfigMaps (``live``, owned by the operator) that may be deleted.

    A revision's ConfigMap stays while it is rendered now (``current``) or a pod template of the
    endpoint mounts it (``templates``: its Deployments' and ReplicaSets'). Kubernetes keeps
    ``revisionHistoryLimit`` ReplicaSets per Deployment, and a rollback restores a template
    from one of them: the config it mounts must still be there. When the last ReplicaSet that
    mounts a ConfigMap is gone, so is the ConfigMap (on the next pass).
    """
    in_use = set().union(*(config_maps_in_template(t) for t in templates))
    return sorted(name for name in live if name not in current and name not in in_use)


def refusal(exc: KubeError) -> bool:
    """Whether an answer refuses the object itself (retrying the same body cannot help).

    4xx other than 404/408/409/429 (missing namespace races, timeouts, conflicts and throttling
    are transient), and 500: the API server answers 500 to a server-side apply whose object it
    cannot merge (e.g. two env entries with the same name). A transient 500 is harmless here:
    refusals are retried with back-off, and a retry that succeeds clears it.
    """
    return exc.status == 500 or (400 <= exc.status < 500 and exc.status not in (404, 408, 409, 429))


def _owned_by_us(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(labels.get("app.kubernetes.io/managed-by") == MANAGER)
