"""The endpoint's router pods and what they need (pure): Deployment, PDB, RBAC, headless Service.

Each router pod runs two containers (docs/architecture.md, the data plane):

- `router`: vllm-router, listening on 127.0.0.1 only, finding the engine pods by label selector
  (Kubernetes service discovery: it lists and watches the endpoint's pods, hence the Role) and
  choosing one per request (`spec.router.policy`).
- `front`: the runtime's `magistral-runtime front` on the pod's `http` port, which the
  endpoint's Service targets. It adds what vllm-router lacks: it holds requests while there
  is no replica (scale from zero) and admits at most `--max-num-seqs` requests per replica, so
  requests wait centrally rather than in one engine's queue. It answers the operator's demand
  reads on its `demand` port (`/demand`).
"""

from __future__ import annotations

from typing import Any

from magistral_runtime.config import DEFAULT_PORT

from ..api.config import ROUTER_POOL_NAME, OperatorConfig
from ..api.endpoint import Endpoint
from .metadata import COMPONENT, object_meta, standard_labels

ROUTER_COMPONENT = "router"
ROUTER_CONTAINER = "router"
FRONT_CONTAINER = "front"
ROUTER_PORT = 8001
ROUTER_METRICS_PORT = 29000
DEMAND_PORT = 9090
DEMAND_PATH = "/demand"
RUN_AS_USER = 1000
FRONT_DRAIN_SECONDS = 30


def router_name(endpoint: Endpoint) -> str:
    """The router Deployment, its pods' ServiceAccount, Role, RoleBinding and PDB."""
    return f"{endpoint.name}-{ROUTER_POOL_NAME}"


def engines_service_name(endpoint: Endpoint) -> str:
    """The headless Service over the engine pods (DNS records per pod; never load-balanced)."""
    return f"{endpoint.name}-engines"


def router_selector(endpoint: Endpoint) -> dict[str, str]:
    """Labels that select the endpoint's router pods (the endpoint's Service targets these)."""
    return {
        "magistral.dev/endpoint": endpoint.name,
        "app.kubernetes.io/component": ROUTER_COMPONENT,
    }


def engine_selector_args(endpoint: Endpoint) -> list[str]:
    """vllm-router's `--selector` values: the endpoint's engine pods."""
    return [f"magistral.dev/endpoint={endpoint.name}", f"app.kubernetes.io/component={COMPONENT}"]


def router_args(endpoint: Endpoint) -> list[str]:
    """The `vllm-router` command line (vllm-router 0.1.17; docs/router.md has each flag)."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(ROUTER_PORT),
        "--policy",
        str(endpoint.spec.router.policy),
        "--service-discovery",
        "--selector",
        *engine_selector_args(endpoint),
        "--service-discovery-port",
        str(DEFAULT_PORT),
        "--service-discovery-namespace",
        endpoint.namespace,
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(ROUTER_METRICS_PORT),
        # The front already holds and times out requests; the router sends what it gets.
        "--request-timeout-secs",
        "3600",
        "--log-level",
        "info",
    ]


def front_args(endpoint: Endpoint, *, max_num_seqs: int) -> list[str]:
    """The `magistral-runtime front` command line (docs/router-front.md)."""
    router = endpoint.spec.router
    return [
        "--host",
        "0.0.0.0",
        "--port",
        str(DEFAULT_PORT),
        "--demand-port",
        str(DEMAND_PORT),
        "--router-url",
        f"http://127.0.0.1:{ROUTER_PORT}",
        "--max-num-seqs",
        str(max_num_seqs),
        "--router-replicas",
        str(router.replicas),
        "--hold-timeout-seconds",
        str(router.hold_timeout_seconds),
        "--retry-after-seconds",
        str(router.retry_after_seconds),
        "--drain-seconds",
        str(FRONT_DRAIN_SECONDS),
    ]


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def render_router_deployment(
    endpoint: Endpoint, config: OperatorConfig, *, max_num_seqs: int
) -> dict[str, Any]:
    """The router Deployment: `spec.router.replicas` CPU-only pods, spread over nodes."""
    selector = router_selector(endpoint)
    labels = standard_labels(endpoint, component=ROUTER_COMPONENT)
    router = {
        "name": ROUTER_CONTAINER,
        "image": config.router_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm-router"],
        "args": router_args(endpoint),
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        # vllm-router stops listening at SIGTERM; both containers get it together, so it
        # waits out the front's drain before (the front sends what it still holds).
        "lifecycle": {"preStop": {"sleep": {"seconds": FRONT_DRAIN_SECONDS}}},
        "securityContext": _CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    front = {
        "name": FRONT_CONTAINER,
        "image": config.router_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["magistral-runtime", "front"],
        "args": front_args(endpoint, max_num_seqs=max_num_seqs),
        "ports": [
            {"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"},
            {"name": "demand", "containerPort": DEMAND_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        # Ready once the router answers; a router without replicas is still ready (it holds).
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "demand"},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "http"},
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": _CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(
            endpoint, name=router_name(endpoint), labels={"app.kubernetes.io/component": "router"}
        ),
        "spec": {
            "replicas": endpoint.spec.router.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": router_name(endpoint),
                    "automountServiceAccountToken": True,  # service discovery reads pods
                    "enableServiceLinks": False,
                    "containers": [router, front],
                    "terminationGracePeriodSeconds": FRONT_DRAIN_SECONDS + 15,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": selector},
                        }
                    ],
                },
            },
        },
    }


def render_router_rbac(endpoint: Endpoint) -> list[dict[str, Any]]:
    """ServiceAccount, Role (read the namespace's pods) and RoleBinding for discovery."""
    name = router_name(endpoint)
    labels = {"app.kubernetes.io/component": ROUTER_COMPONENT}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": object_meta(endpoint, name=name, labels=labels),
            "automountServiceAccountToken": False,  # only the router pods mount it
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": object_meta(endpoint, name=name, labels=labels),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": object_meta(endpoint, name=name, labels=labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": endpoint.namespace}],
        },
    ]


def render_router_pdb(endpoint: Endpoint) -> dict[str, Any]:
    """A node drain takes at most one router pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(
            endpoint, name=router_name(endpoint), labels={"app.kubernetes.io/component": "router"}
        ),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": router_selector(endpoint)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
