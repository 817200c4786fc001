"""Applying an endpoint's children: skip unchanged ones, remove stale ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.labels import APPLIED_HASH_ANNOTATION, ENDPOINT_LABEL, MANAGER
from .client import Kube, KubeError
from .drift import drifted

# Kinds whose set can shrink (one Deployment per usable pool); the others always exist.
PRUNABLE_KINDS = ("Deployment",)


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
    for kind in PRUNABLE_KINDS:
        for live in kube.list(kind, namespace=namespace, selector=f"{ENDPOINT_LABEL}={endpoint}"):
            name = live["metadata"]["name"]
            if (kind, name) not in keep and _owned_by_us(live):
                kube.delete(kind, namespace=namespace, name=name)
                report.deleted.append(f"{kind}/{name}")
    return report


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
