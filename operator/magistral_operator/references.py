"""Objects an endpoint refers to but does not own, and what to say when one is missing (pure).

Two ways to find out, chosen for least privilege (docs/validation.md):

* ConfigMaps (a custom prompt) and PersistentVolumeClaims (weights, a shared cache) are read
  before any pod is created: reading them reveals nothing secret, and a missing one keeps the
  endpoint's Deployments from being applied (Degraded, ReferenceNotFound, naming the field).
* Secrets (the API key, the Hub token) are never read: the operator has no access to Secrets.
  The kubelet reports a missing Secret or key in the pod's container state
  (``CreateContainerConfigError``, ``secret "x" not found`` or ``couldn't find key k in
  Secret ns/x``); that message is mapped back to the field that names the Secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from .api.endpoint import Endpoint
from .api.spec import CacheType, SystemPromptMode

Kind = Literal["ConfigMap", "PersistentVolumeClaim", "Secret"]
READ_BEFORE_PODS: tuple[Kind, ...] = ("ConfigMap", "PersistentVolumeClaim")


@dataclass(frozen=True)
class Reference:
    """One object (and key) the endpoint's pods need, with the spec field that names it."""

    kind: Kind
    name: str
    key: str | None
    field: str


def endpoint_references(endpoint: Endpoint) -> list[Reference]:
    """Everything the endpoint's pods refer to, in spec order."""
    spec = endpoint.spec
    refs: list[Reference] = []
    hub = spec.model.source.hub
    if hub is not None and hub.token_secret_ref is not None:
        ref = hub.token_secret_ref
        refs.append(Reference("Secret", ref.name, ref.key, "spec.model.source.hub.tokenSecretRef"))
    pvc = spec.model.source.pvc
    if pvc is not None:
        refs.append(
            Reference("PersistentVolumeClaim", pvc.claim_name, None, "spec.model.source.pvc")
        )
    cache = spec.model.cache
    if cache.type == CacheType.PVC and cache.claim_name:
        refs.append(
            Reference("PersistentVolumeClaim", cache.claim_name, None, "spec.model.cache.claimName")
        )
    prompt = spec.inference.system_prompt
    if prompt.mode == SystemPromptMode.CUSTOM and prompt.config_map_ref is not None:
        cm = prompt.config_map_ref
        refs.append(
            Reference("ConfigMap", cm.name, cm.key, "spec.inference.systemPrompt.configMapRef")
        )
    if not spec.auth.disabled and spec.auth.api_key_secret_ref is not None:
        ref = spec.auth.api_key_secret_ref
        refs.append(Reference("Secret", ref.name, ref.key, "spec.auth.apiKeySecretRef"))
    return refs


def missing_references(
    refs: list[Reference], found: dict[tuple[str, str], dict[str, Any] | None]
) -> list[str]:
    """Problems for references read before pods: `found` maps (kind, name) to the object."""
    problems = []
    for ref in refs:
        if ref.kind not in READ_BEFORE_PODS:
            continue
        obj = found.get((ref.kind, ref.name))
        if obj is None:
            problems.append(f"{ref.field}: {ref.kind} {ref.name!r} does not exist")
        elif ref.key is not None and ref.key not in (obj.get("data") or {}) | (
            obj.get("binaryData") or {}
        ):
            problems.append(f"{ref.field}: {ref.kind} {ref.name!r} has no key {ref.key!r}")
    return problems


_SECRET_MISSING = re.compile(r'secret "(?P<name>[^"]+)" not found')
_SECRET_KEY_MISSING = re.compile(r"couldn't find key (?P<key>\S+) in Secret [^/\s]+/(?P<name>\S+)")


def secret_problem(kubelet_message: str, refs: list[Reference]) -> str | None:
    """The field naming a Secret the kubelet could not find (or whose key it lacks), if any."""
    for ref in refs:
        if ref.kind != "Secret":
            continue
        missing = _SECRET_MISSING.search(kubelet_message)
        if missing and missing.group("name") == ref.name:
            return (
                f"{ref.field}: Secret {ref.name!r} does not exist (the kubelet: {kubelet_message})"
            )
        no_key = _SECRET_KEY_MISSING.search(kubelet_message)
        if no_key and no_key.group("name") == ref.name and no_key.group("key") == ref.key:
            return (
                f"{ref.field}: Secret {ref.name!r} has no key {ref.key!r} "
                f"(the kubelet: {kubelet_message})"
            )
    return None
