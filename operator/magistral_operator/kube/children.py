"""Applying an endpoint's children: skip unchanged ones, remove stale ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
) -> ApplyReport:
    """Apply each (object, content hash) unless the live object carries the same hash.

    The hash annotation lets a re-reconcile of an unchanged endpoint issue no writes at all;
    a live object that no longer contains what the operator applies (someone scaled or edited
    it) is applied again. No periodic forced re-apply: it would write on every pass.

    A child the API server refuses (a 4xx, or the 500 a server-side apply gets for some invalid
    objects) does not stop the others: it is reported in ``refused``. ``held`` maps labels to
    earlier refusals still in back-off: a child whose content hash is unchanged since its
    refusal is not sent again and stays refused; a changed one is tried at once.
    """
    report = ApplyReport()
    held = held or {}
    for obj, digest in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        label = f"{kind}/{name}"
        earlier = held.get(label)
        if earlier is not None and earlier.digest == digest:
            report.refused.append(earlier)
            continue
        wanted = with_applied_hash(obj, digest)
        live = kube.get(kind, namespace=namespace, name=name)
        live_hash = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
            APPLIED_HASH_ANNOTATION
        )
        if live is not None and live_hash == digest and not drifted(live, wanted):
            report.unchanged.append(label)
            continue
        try:
            kube.apply(wanted, field_manager=MANAGER)
        except KubeError as exc:
            if not refusal(exc):
                raise
            report.refused.append(
                ChildRefused(label=label, digest=digest, status=exc.status, message=exc.message)
            )
            continue
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
