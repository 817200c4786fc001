"""Applying an endpoint's children: skip unchanged ones, remove stale ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..api.labels import APPLIED_HASH_ANNOTATION, ENDPOINT_LABEL, MANAGER
from .client import Kube
from .drift import drifted

# Kinds whose set can shrink (one Deployment per usable pool); the others always exist.
PRUNABLE_KINDS = ("Deployment",)


@dataclass
class ApplyReport:
    """What an apply pass changed."""

    applied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


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
) -> ApplyReport:
    """Apply each (object, content hash) unless the live object carries the same hash.

    The hash annotation lets a re-reconcile of an unchanged endpoint issue no writes at all;
    a live object that no longer contains what the operator applies (someone scaled or edited
    it) is applied again. No periodic forced re-apply: it would write on every pass.
    """
    report = ApplyReport()
    for obj, digest in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        label = f"{kind}/{name}"
        wanted = with_applied_hash(obj, digest)
        live = kube.get(kind, namespace=namespace, name=name)
        live_hash = ((live or {}).get("metadata", {}).get("annotations") or {}).get(
            APPLIED_HASH_ANNOTATION
        )
        if live is not None and live_hash == digest and not drifted(live, wanted):
            report.unchanged.append(label)
            continue
        kube.apply(wanted, field_manager=MANAGER)
        report.applied.append(label)
    keep = {(o["kind"], o["metadata"]["name"]) for o, _ in desired}
    for kind in PRUNABLE_KINDS:
        for live in kube.list(kind, namespace=namespace, selector=f"{ENDPOINT_LABEL}={endpoint}"):
            name = live["metadata"]["name"]
            if (kind, name) not in keep and _owned_by_us(live):
                kube.delete(kind, namespace=namespace, name=name)
                report.deleted.append(f"{kind}/{name}")
    return report


def _owned_by_us(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(labels.get("app.kubernetes.io/managed-by") == MANAGER)
