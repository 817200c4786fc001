"""The largest endpoint the CRD's bounds allow still renders children the API server takes.

Limits (Kubernetes): a ConfigMap's data at most 1 MiB; an object's annotations at most
256 KiB in all; a request (the whole object) at most 1.5 MiB (etcd's default). The spec is
filled to every bound with the widest characters (4 bytes in UTF-8, 12 as JSON escapes) on
the most pools an endpoint may name, so a value the CRD accepts can never make a child too
large (issue 8, class 3). The operator's own annotation on the endpoint (kopf's diff base) is
a digest, so it does not grow with the spec either.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from magistral_operator.api.config import OperatorConfig, parse_operator_config
from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.api.spec import (
    ENV_MAX_ITEMS,
    ENV_VALUE_MAX,
    EXTRA_ARG_MAX,
    EXTRA_ARGS_MAX_ITEMS,
    PROMPT_TEXT_MAX,
    GPUSpec,
)
from magistral_operator.handlers.diffbase import essence_digest
from magistral_operator.render import render_endpoint
from magistral_operator.render.metadata import is_engine_deployment

from .conftest import load_example

MIB = 1024 * 1024
CONFIGMAP_DATA_LIMIT = MIB
ANNOTATIONS_LIMIT = 256 * 1024
REQUEST_LIMIT = 3 * MIB // 2
WIDE = "😀"  # 4 bytes in UTF-8, a surrogate pair (12 bytes) as a JSON escape
MAX_POOLS = GPUSpec.model_fields["pools"].metadata[0].max_length  # type: ignore[attr-defined]


def _many_pools() -> OperatorConfig:
    base = load_example("operator-config.yaml")
    h100 = base["pools"][0]
    pools = [
        {**h100, "name": f"pool-{i:02d}", "nodeSelector": {"pool": f"p{i}"}}
        for i in range(MAX_POOLS)
    ]
    return parse_operator_config({**base, "pools": pools})


def _largest_spec(pools: list[str]) -> dict[str, Any]:
    # A long value for a switch that takes one: --served-model-name is managed, so use a
    # free-form one vLLM accepts (a chat template string is the longest realistic value).
    arg = "--chat-template-content-format=" + "s" * (EXTRA_ARG_MAX - 31)
    return {
        "gpu": {"pools": pools},
        "runtime": {
            "extraArgs": [arg] * EXTRA_ARGS_MAX_ITEMS,
            "env": [{"name": f"V{i}", "value": WIDE * ENV_VALUE_MAX} for i in range(ENV_MAX_ITEMS)],
        },
        "inference": {"systemPrompt": {"mode": "custom", "text": WIDE * PROMPT_TEXT_MAX}},
        "auth": {"disabled": True},
    }


def _bytes(obj: Any) -> int:
    return len(json.dumps(obj, ensure_ascii=False).encode())


def test_largest_spec_renders_children_within_the_api_servers_limits() -> None:
    config = _many_pools()
    spec = _largest_spec([p.name for p in config.pools])
    endpoint = parse_endpoint({"metadata": {"name": "x" * 40, "namespace": "team"}, "spec": spec})
    rendered = render_endpoint(endpoint, config)
    assert rendered.plan.ok, rendered.plan.problems
    deployments = [o for o in rendered.objects if is_engine_deployment(o)]
    assert len(deployments) == MAX_POOLS
    (config_map,) = [o for o in rendered.objects if o["kind"] == "ConfigMap"]
    data_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in config_map["data"].items())
    assert data_bytes <= CONFIGMAP_DATA_LIMIT, data_bytes
    for obj in rendered.objects:
        for meta in (obj["metadata"], obj.get("spec", {}).get("template", {}).get("metadata", {})):
            annotations = meta.get("annotations") or {}
            size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
            assert size <= ANNOTATIONS_LIMIT, (obj["kind"], size)
        assert _bytes(obj) <= REQUEST_LIMIT, (obj["kind"], _bytes(obj))
    # The endpoint itself, as a client sends it with JSON escapes (the worst case).
    body = {"metadata": {"name": "x" * 40}, "spec": spec}
    assert len(json.dumps(body).encode()) <= REQUEST_LIMIT


def test_a_prompt_longer_than_the_bound_is_refused_before_anything_renders() -> None:
    spec = _largest_spec([])
    spec["inference"]["systemPrompt"]["text"] += "x"
    with pytest.raises(ValueError, match=r"spec\.inference\.systemPrompt\.text"):
        parse_endpoint({"metadata": {"name": "x", "namespace": "team"}, "spec": spec})


def test_kopf_diff_base_is_a_fixed_size_digest() -> None:
    essence = {"spec": _largest_spec([]), "metadata": {"labels": {}, "annotations": {}}}
    digest = essence_digest(essence)
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64
    assert essence_digest(json.loads(json.dumps(essence))) == digest  # stable
