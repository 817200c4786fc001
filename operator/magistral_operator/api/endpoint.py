"""A MagistralEndpoint object as the pure layers see it: identity plus validated spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import API_VERSION, KIND
from .config import OperatorConfig
from .errors import ConfigError, format_validation_error
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
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: metadata.name is required")
    source = f"MagistralEndpoint {meta.get('namespace', 'default')}/{name}"
    if len(name) > 40:
        raise ConfigError(
            f"{source}: metadata.name must be at most 40 characters (child names add suffixes)"
        )
    try:
        spec = MagistralEndpointSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="spec", source=source)) from exc
    return Endpoint(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spec=spec,
    )


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
