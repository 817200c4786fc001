"""A router pod's labels and containers as the operator renders them (the agreed contract).

Written by hand for the harness's tests of router pods (``test_router_pods.py`` here and in
``tests/cluster``), which take a copy and add to it.
"""

from __future__ import annotations

from typing import Any

MANAGED = {"app.kubernetes.io/managed-by": "magistral-operator"}


def router_labels(endpoint: str) -> dict[str, str]:
    return {
        **MANAGED,
        "app.kubernetes.io/component": "router",
        "magistral.dev/endpoint": endpoint,
    }


def engine_labels(endpoint: str) -> dict[str, str]:
    return {
        **MANAGED,
        "app.kubernetes.io/component": "inference",
        "magistral.dev/endpoint": endpoint,
    }


def router_containers(*, namespace: str, endpoint: str) -> list[dict[str, Any]]:
    """The ``router`` (vllm-router, service discovery) and ``front`` containers."""
    return [
        {
            "name": "router",
            "image": "registry.invalid/vllm-router:test",
            "command": ["vllm-router"],
            "args": [
                *("--host", "127.0.0.1", "--port", "8001", "--service-discovery"),
                *("--selector", f"magistral.dev/endpoint={endpoint}"),
                "app.kubernetes.io/component=inference",
                *("--service-discovery-port", "8000"),
                *("--service-discovery-namespace", namespace, "--policy", "cache_aware"),
                *("--prometheus-host", "127.0.0.1", "--prometheus-port", "29000"),
            ],
            "ports": [{"name": "router-metrics", "containerPort": 29000}],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        },
        {
            "name": "front",
            "image": "registry.invalid/magistral/runtime:test",
            "command": ["magistral-runtime", "front"],
            "args": [
                *("--host", "0.0.0.0", "--port", "8000", "--demand-port", "9090"),
                *("--router-url", "http://127.0.0.1:8001", "--max-num-seqs", "256"),
                *("--router-replicas", "2", "--hold-timeout-seconds", "300"),
                *("--retry-after-seconds", "30"),
            ],
            "ports": [
                {"name": "http", "containerPort": 8000},
                {"name": "demand", "containerPort": 9090},
            ],
            "readinessProbe": {
                "httpGet": {"path": "/healthz", "port": "demand"},
                "periodSeconds": 1,
            },
            "env": [],
        },
    ]
