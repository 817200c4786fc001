"""The canary Deployment: one replica of the rendered revision beside the healthy ones.

It is the rendered pool Deployment of the pool it runs on (its node selector, tolerations,
GPUs and runtime ConfigMap), renamed `<endpoint>-canary` and labelled with the reserved pool
name `canary`: its selector overlaps no pool Deployment's, no pool's observations or placement
count it, and the router finds it like any engine pod (`magistral.dev/endpoint` and the
inference component), so it receives its share of the endpoint's traffic.
"""

from __future__ import annotations

import copy
from typing import Any

from ..api.config import CANARY_POOL_NAME
from ..api.labels import CANARY_OF_ANNOTATION, POOL_LABEL


def canary_name(endpoint: str) -> str:
    return f"{endpoint}-{CANARY_POOL_NAME}"


def _relabel(labels: dict[str, Any] | None) -> dict[str, Any]:
    return {**(labels or {}), POOL_LABEL: CANARY_POOL_NAME}


def canary_deployment(deployment: dict[str, Any], *, endpoint: str) -> dict[str, Any]:
    """`deployment` (a rendered pool Deployment) as the endpoint's one-replica canary."""
    out = copy.deepcopy(deployment)
    meta = out["metadata"]
    pool = (meta.get("labels") or {}).get(POOL_LABEL, "")
    meta["name"] = canary_name(endpoint)
    meta["labels"] = _relabel(meta.get("labels"))
    meta["annotations"] = {**(meta.get("annotations") or {}), CANARY_OF_ANNOTATION: pool}
    spec = out["spec"]
    spec["replicas"] = 1
    spec["selector"]["matchLabels"] = _relabel(spec["selector"]["matchLabels"])
    template = spec["template"]
    template["metadata"]["labels"] = _relabel(template["metadata"].get("labels"))
    for constraint in template["spec"].get("topologySpreadConstraints") or []:
        selector = constraint.get("labelSelector") or {}
        if "matchLabels" in selector:
            selector["matchLabels"] = _relabel(selector["matchLabels"])
    return out
