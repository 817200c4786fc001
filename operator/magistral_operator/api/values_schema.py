"""The Helm chart's values.schema.json; its `config` part comes from OperatorConfig."""

from __future__ import annotations

import json
from typing import Any

from .config import OperatorConfig

VALUES_SCHEMA_FILE = "charts/magistral-operator/values.schema.json"

LOG_LEVELS = ("debug", "info", "warning")
"""`magistral-operator run --log-level` ($MAGISTRAL_LOG_LEVEL, the chart's `logLevel`)."""
LOG_FORMATS = ("text", "json")
"""`magistral-operator run --log-format` ($MAGISTRAL_LOG_FORMAT, the chart's `logFormat`)."""


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return _inline({**target, **rest}, defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in {"$defs", "title"}}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def operator_config_schema() -> dict[str, Any]:
    """JSON schema of the operator config, references inlined (any JSON-schema draft reads it)."""
    raw = OperatorConfig.model_json_schema(by_alias=True, mode="validation")
    inlined: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    return inlined


def _obj(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


def values_schema() -> dict[str, Any]:
    """The whole values schema."""
    string = {"type": "string"}
    quantity = {"anyOf": [{"type": "string"}, {"type": "number"}]}
    quantities = {"type": "object", "additionalProperties": quantity}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **_obj(
            {
                "image": _obj(
                    {
                        "repository": string,
                        "tag": string,
                        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                    },
                    required=["repository"],
                ),
                "imagePullSecrets": {"type": "array", "items": string},
                "crds": _obj({"enabled": {"type": "boolean"}, "keep": {"type": "boolean"}}),
                "watchNamespaces": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "uniqueItems": True,
                },
                "leaderElection": _obj(
                    {
                        "enabled": {"type": "boolean"},
                        "leaseDurationSeconds": {"type": "integer", "minimum": 2},
                        "renewDeadlineSeconds": {"type": "integer", "minimum": 1},
                        "retryPeriodSeconds": {"type": "integer", "minimum": 1},
                    }
                ),
                "replicas": {"type": "integer", "minimum": 0},
                "serviceAccount": _obj(
                    {
                        "create": {"type": "boolean"},
                        "name": string,
                        "annotations": {"type": "object", "additionalProperties": string},
                    }
                ),
                "resources": _obj(
                    {"requests": quantities, "limits": quantities},
                    required=["requests", "limits"],
                ),
                "nodeSelector": {"type": "object", "additionalProperties": string},
                "tolerations": {"type": "array", "items": {"type": "object"}},
                "affinity": {"type": "object"},
                "podAnnotations": {"type": "object", "additionalProperties": string},
                "priorityClassName": string,
                "metrics": _obj(
                    {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "serviceMonitor": _obj(
                            {
                                "enabled": {"type": "boolean"},
                                "interval": string,
                                "labels": {"type": "object", "additionalProperties": string},
                            }
                        ),
                    }
                ),
                "healthPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                "specWorkers": {"type": "integer", "minimum": 1, "maximum": 256},
                "logLevel": {"enum": list(LOG_LEVELS)},
                "logFormat": {"enum": list(LOG_FORMATS)},
                "config": operator_config_schema(),
            },
            required=["image", "config"],
        ),
        # Two operators without leader election would both reconcile every endpoint: more than
        # one replica needs the Lease (one active replica, docs/install.md).
        "if": {"properties": {"replicas": {"minimum": 2}}, "required": ["replicas"]},
        "then": {
            "properties": {
                "leaderElection": {
                    "properties": {"enabled": {"const": True}},
                    "required": ["enabled"],
                }
            },
            "required": ["leaderElection"],
        },
    }


def values_schema_json() -> str:
    """values.schema.json as committed."""
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"
