"""Generate the MagistralEndpoint CRD from the pydantic models (the single source of truth).

Pydantic's JSON schema is turned into a Kubernetes structural schema: references inlined,
`Optional` unwrapped, `const` to `enum`, draft-2020 exclusive bounds to OpenAPI v3 booleans,
defaults filled in from default factories (so the API server defaults nested objects), and the
CEL rules each model declares kept as `x-kubernetes-validations`.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from . import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .spec import MagistralEndpointSpec
from .status import MagistralEndpointStatus

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"crds/{GROUP}_{PLURAL}.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the endpoint serves requests.",
    },
    {
        "name": "Replicas",
        "type": "integer",
        "jsonPath": ".status.replicas",
        "description": "Desired replicas across pools.",
    },
    {
        "name": "Available",
        "type": "integer",
        "jsonPath": ".status.readyReplicas",
        "description": "Ready replicas across pools.",
    },
    {
        "name": "TP",
        "type": "integer",
        "jsonPath": ".status.tensorParallelSize",
        "description": "Tensor-parallel size (GPUs per replica).",
    },
    {
        "name": "GPU",
        "type": "string",
        "jsonPath": ".status.gpuProduct",
        "description": "GPU of the preferred pool.",
    },
    {
        "name": "Router",
        "type": "string",
        "jsonPath": ".status.router.ready",
        "description": "Ready/desired router pods (every request goes through them).",
    },
    {
        "name": "Held",
        "type": "integer",
        "jsonPath": ".status.autoscaler.heldRequests",
        "description": "Requests the routers hold for a replica (scale from zero).",
    },
    {
        "name": "Demand",
        "type": "string",
        "jsonPath": ".status.autoscaler.read",
        "description": "The autoscaler's last demand read: ok, partial or failed.",
        "priority": 1,
    },
    {
        "name": "Rollout",
        "type": "string",
        "jsonPath": ".status.rollout.phase",
        "description": "The revision rollout: Canary, Progressing, Healthy, RolledBack or Failed.",
    },
    {
        "name": "Revision",
        "type": "string",
        "jsonPath": ".status.rollout.currentRevision",
        "description": "The revision the spec renders now.",
        "priority": 1,
    },
    {
        "name": "Health",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Degraded")].reason',
        "description": "AsExpected, or why the endpoint is Degraded (kubectl describe says more).",
    },
    {
        "name": "Reason",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        "description": "Why the endpoint is (not) ready.",
        "priority": 1,
    },
    {
        "name": "URL",
        "type": "string",
        "jsonPath": ".status.url",
        "description": "In-cluster base URL.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

ROOT_RULES = [
    {
        "rule": "size(self.metadata.name) <= 40",
        "message": "metadata.name must be at most 40 characters (child names add suffixes)",
    },
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name must be a DNS-1035 label (it names the endpoint's Service)",
    },
]

_DROP_KEYS = {"title", "$defs", "discriminator"}


def _model_classes(*roots: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model class reachable from `roots`, by the name pydantic uses in $defs."""
    found: dict[str, type[BaseModel]] = {}
    stack = list(roots)
    while stack:
        cls = stack.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            stack.extend(_models_in(field.annotation))
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_models_in(arg))
    return out


def _factory_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Wire-form defaults of fields that use default_factory, by alias."""
    out = {}
    for name, field in cls.model_fields.items():
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            alias = field.alias or name
            if isinstance(value, BaseModel):
                out[alias] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
            else:
                out[alias] = value
    return out


class _Converter:
    def __init__(self, defs: dict[str, Any], classes: dict[str, type[BaseModel]]) -> None:
        self.defs = defs
        self.classes = classes

    def convert(self, node: dict[str, Any], *, model: str | None = None) -> dict[str, Any]:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {**self.defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
            return self.convert(merged, model=name)
        if node.get("x-kubernetes-int-or-string"):
            kept = {
                k: v
                for k, v in node.items()
                if k in {"description", "default", "x-kubernetes-validations"}
            }
            return {"x-kubernetes-int-or-string": True, **kept}
        if "anyOf" in node:
            options = [o for o in node["anyOf"] if o.get("type") != "null"]
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if len(options) == 1:
                return self.convert({**options[0], **rest}, model=model)
            raise ValueError(f"cannot express anyOf in a structural schema: {node}")
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DROP_KEYS:
                continue
            if key == "default" and value is None:
                continue
            if key == "additionalProperties" and value is False:
                continue  # structural schemas prune unknown fields instead
            if key == "const":
                out["enum"] = [value]
                out.setdefault("type", "string" if isinstance(value, str) else "integer")
            elif key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "properties":
                out["properties"] = {k: self.convert(v) for k, v in value.items()}
            elif key == "items":
                out["items"] = self.convert(value)
            elif key == "additionalProperties" and isinstance(value, dict):
                out["additionalProperties"] = self.convert(value)
            else:
                out[key] = value
        if model is not None and model in self.classes and "properties" in out:
            for alias, default in _factory_defaults(self.classes[model]).items():
                out["properties"][alias].setdefault("default", default)
        if "properties" in out:
            out["type"] = "object"
        return out


def schema_for(cls: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    converter = _Converter(raw.get("$defs", {}), _model_classes(cls))
    return converter.convert(raw, model=cls.__name__)


def _check_descriptions(schema: dict[str, Any], path: str) -> None:
    for name, prop in schema.get("properties", {}).items():
        if not prop.get("description"):
            raise ValueError(f"{path}.{name} has no description")
        _check_descriptions(prop, f"{path}.{name}")
    if "items" in schema:
        _check_descriptions(schema["items"], f"{path}[]")


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    spec_schema = schema_for(MagistralEndpointSpec)
    status_schema = schema_for(MagistralEndpointStatus)
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    _check_descriptions(spec_schema, "spec")
    _check_descriptions(status_schema, "status")
    root = {
        "type": "object",
        "description": "MagistralEndpoint is a dedicated, single-tenant Magistral Small "
        "inference endpoint served by vLLM on GPU node pools.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "magistral"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["magistral", "ai"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def crd_yaml() -> str:
    """The CRD as the YAML committed under crds/."""
    header = "# Generated by `make crds` from magistral_operator.api; do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100)


CHART_CRD_FILE = "charts/magistral-operator/templates/crds.yaml"
KEEP_BLOCK = """  {{- if .Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
"""


def chart_crd_template() -> str:
    """The chart's CRD template: the same CRD behind `crds.enabled`, kept unless told not to."""
    body = crd_yaml().split("\n", 1)[1]  # drop the generated-file header
    anchor = "  labels:\n    app.kubernetes.io/part-of: magistral\n"
    if anchor not in body:
        raise ValueError("CRD metadata changed shape; update chart_crd_template")
    body = body.replace(anchor, anchor + KEEP_BLOCK, 1)
    header = "# Generated by `make crds` from magistral_operator.api; do not edit.\n"
    return f"{header}{{{{- if .Values.crds.enabled }}}}\n{body}{{{{- end }}}}\n"


def main() -> None:
    """Write the CRD file and the chart's copy (used by `make crds`)."""
    from pathlib import Path

    from .values_schema import VALUES_SCHEMA_FILE, values_schema_json

    Path(CRD_FILE).write_text(crd_yaml())
    Path(CHART_CRD_FILE).write_text(chart_crd_template())
    Path(VALUES_SCHEMA_FILE).write_text(values_schema_json())
    print(f"wrote {CRD_FILE}, {CHART_CRD_FILE} and {VALUES_SCHEMA_FILE}")


if __name__ == "__main__":
    main()
