"""A MagistralEndpoint object as the pure layers see it: identity plus validated spec."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import ValidationError

from . import API_VERSION, KIND
from .config import OperatorConfig
from .errors import ConfigError, format_validation_error
from .k8s_rules import DNS1035_LABEL, DNS1123_LABEL
from .spec import MagistralEndpointSpec


@dataclass(frozen=True)
class Endpoint:
    """Identity of an endpoint (for names, owner references, status) and its spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: MagistralEndpointSpec

    @property
    def served_model_name(self) -> str:
        """The model name clients send: spec value or the repository's name."""
        return self.spec.model.served_model_name or self.spec.model.repo.split("/", 1)[1]


def parse_endpoint(obj: dict[str, Any]) -> Endpoint:
    """Validate a MagistralEndpoint object (as read from the API or a file).

    Raises ConfigError whose message names each offending field as `spec.<path>`.
    """
    source = "MagistralEndpoint"
    if obj.get("apiVersion") not in (None, API_VERSION) or obj.get("kind") not in (None, KIND):
        raise ConfigError(
            f"expected apiVersion {API_VERSION} and kind {KIND}, got "
            f"{obj.get('apiVersion')} {obj.get('kind')}"
        )
    unknown = sorted(set(obj) - TOP_LEVEL_FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: metadata.name is required")
    source = f"MagistralEndpoint {meta.get('namespace', 'default')}/{name}"
    if len(name) > 40:
        raise ConfigError(
            f"{source}: metadata.name must be at most 40 characters (child names add suffixes)"
        )
    if not re.fullmatch(DNS1035_LABEL[1:-1], name):
        raise ConfigError(
            f"{source}: metadata.name must be a DNS-1035 label (it names the endpoint's "
            "Service): lower-case letters, digits and '-', starting with a letter"
        )
    namespace = meta.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str)
        and len(namespace) <= 63
        and re.fullmatch(DNS1123_LABEL[1:-1], namespace)
    ):
        raise ConfigError(f"{source}: metadata.namespace must be a DNS label")
    spec_obj = obj.get("spec")
    if spec_obj is None:
        spec_obj = {}
    if not isinstance(spec_obj, dict):
        raise ConfigError(f"{source}: spec must be an object")
    try:
        # Strict, as the API server reads JSON: "3" is not 3, "yes" is not true; an integral
        # number (2.0) is the integer the API server stores.
        spec = MagistralEndpointSpec.model_validate_json(
            json.dumps(_integral_floats(spec_obj)), strict=True
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="spec", source=source)) from exc
    return Endpoint(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spec=spec,
    )


# What a MagistralEndpoint object may hold at the top level.
TOP_LEVEL_FIELDS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})


def _integral_floats(value: Any, path: str = "spec") -> Any:
    """JSON as the API server stores it: 2.0 becomes 2 (float fields still accept 2).

    Except where a CEL rule reads the field: the API server then refuses 2.0 ("invalid data,
    expected int, got float64 evaluating rule"), so it is left as a float here and refused too.
    """
    if isinstance(value, float) and value.is_integer() and path not in cel_read_integers():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral_floats(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats(v, f"{path}[]") for v in value]
    return value


_SELF_PATH = re.compile(r"\b(?:self|oldSelf)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


@cache
def cel_read_integers() -> frozenset[str]:
    """Paths (`spec.scaling.maxReplicas`) of integer fields that the CRD's CEL rules read."""
    from .crd import schema_for  # the CRD is generated from the same models

    found: set[str] = set()

    def leaf(node: dict[str, Any], parts: list[str]) -> dict[str, Any] | None:
        for part in parts:
            node = (node.get("properties") or {}).get(part) or {}
        return node or None

    def walk(node: dict[str, Any], path: str) -> None:
        for rule in node.get("x-kubernetes-validations") or []:
            for match in _SELF_PATH.finditer(rule["rule"]):
                parts = [p for p in match.group(1).split(".") if p]
                target = leaf(node, parts)
                if target and (
                    target.get("type") == "integer" or target.get("x-kubernetes-int-or-string")
                ):
                    found.add(".".join([path, *parts]))
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema_for(MagistralEndpointSpec), "spec")
    return frozenset(found)


def check_against_config(endpoint: Endpoint, config: OperatorConfig) -> list[str]:
    """Problems that only the operator config can reveal (unknown pools), each naming the field."""
    problems = []
    known = [p.name for p in config.pools]
    for i, pool in enumerate(endpoint.spec.gpu.pools):
        if pool not in known:
            problems.append(
                f"spec.gpu.pools[{i}]: unknown pool {pool!r}; the operator config defines: "
                f"{', '.join(known)}"
            )
    return problems


def endpoint_pools(endpoint: Endpoint, config: OperatorConfig) -> list[str]:
    """Pool names the endpoint may use, in order of preference."""
    return list(endpoint.spec.gpu.pools) or [p.name for p in config.pools]
