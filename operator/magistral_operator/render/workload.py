"""The serving Deployment of one GPU pool (pure)."""

from __future__ import annotations

import shlex
from typing import Any

from magistral_runtime.config import (
    API_KEY_ENV,
    CONFIG_PATH,
    DEFAULT_PORT,
    RuntimeConfig,
)
from magistral_runtime.launcher import build_vllm_args

from ..api.config import GPUPool
from ..api.endpoint import Endpoint
from ..api.spec import CacheType, SystemPromptMode
from .metadata import (
    ARGS_ANNOTATION,
    POOL_LABEL,
    REVISION_LABEL,
    TP_ANNOTATION,
    deployment_name,
    object_meta,
    selector_labels,
    standard_labels,
)
from .runtime_config import CACHE_MOUNT, MODELS_MOUNT, PROMPT_FILE, PROMPT_MOUNT
from .startup import PROBE_PERIOD_SECONDS, StartupBudget

CONTAINER = "vllm"
RUN_AS_USER = 1000
PRESTOP_SLEEP_SECONDS = 10
GRACE_MARGIN_SECONDS = 10
SHM_SIZE = "16Gi"
HEALTH_PATH = "/health"  # vLLM's own: 200 once the engine is up (start-up probe)
READY_PATH = "/magistral/ready"  # a real one-token generation, cached (magistral_runtime.health)
LIVE_PATH = "/magistral/live"  # fails only after generation has been stuck past a budget


def pod_template_annotations(config: RuntimeConfig) -> dict[str, str]:
    """Annotations that make the pod's vLLM command line visible to reviewers."""
    return {
        ARGS_ANNOTATION: shlex.join(build_vllm_args(config)),
        TP_ANNOTATION: str(config.tensor_parallel_size),
    }


def _env(endpoint: Endpoint) -> list[dict[str, Any]]:
    spec = endpoint.spec
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": f"{CACHE_MOUNT}/home"},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_MOUNT}/vllm"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_MOUNT}/triton"},
        {"name": "MAGISTRAL_RUNTIME_CONFIG", "value": CONFIG_PATH},
    ]
    key_ref = spec.auth.api_key_secret_ref
    if key_ref is not None and not spec.auth.disabled:
        env.append(
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": key_ref.name, "key": key_ref.key}},
            }
        )
    hub = spec.model.source.hub
    if hub is not None and hub.token_secret_ref is not None:
        ref = hub.token_secret_ref
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    if spec.model.source.pvc is not None:
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    env += [{"name": e.name, "value": e.value} for e in spec.runtime.env]
    return env


def _cache_volume(endpoint: Endpoint) -> dict[str, Any]:
    cache = endpoint.spec.model.cache
    if cache.type == CacheType.PVC:
        return {"name": "cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    if cache.type == CacheType.EPHEMERAL:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": cache.size}},
        }
        if cache.storage_class_name:
            claim_spec["storageClassName"] = cache.storage_class_name
        return {"name": "cache", "ephemeral": {"volumeClaimTemplate": {"spec": claim_spec}}}
    return {"name": "cache", "emptyDir": {"sizeLimit": cache.size}}


def _volumes(endpoint: Endpoint, *, pool: GPUPool, config_map: str) -> list[dict[str, Any]]:
    spec = endpoint.spec
    volumes: list[dict[str, Any]] = [
        {
            "name": "runtime-config",
            "configMap": {
                "name": config_map,
                "items": [{"key": runtime_config_key(pool.name), "path": "runtime.json"}],
            },
        },
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
        {"name": "tmp", "emptyDir": {}},
        _cache_volume(endpoint),
    ]
    pvc = spec.model.source.pvc
    if pvc is not None:
        volumes.append(
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True},
            }
        )
    prompt = spec.inference.system_prompt
    if prompt.mode == SystemPromptMode.CUSTOM:
        if prompt.config_map_ref is not None:
            source = {"name": prompt.config_map_ref.name, "key": prompt.config_map_ref.key}
        else:
            source = {"name": config_map, "key": PROMPT_FILE}
        volumes.append(
            {
                "name": "system-prompt",
                "configMap": {
                    "name": source["name"],
                    "items": [{"key": source["key"], "path": PROMPT_FILE}],
                },
            }
        )
    return volumes


def _mounts(endpoint: Endpoint) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "runtime-config", "mountPath": CONFIG_PATH.rsplit("/", 1)[0], "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_MOUNT},
    ]
    if endpoint.spec.model.source.pvc is not None:
        mounts.append({"name": "weights", "mountPath": MODELS_MOUNT, "readOnly": True})
    if endpoint.spec.inference.system_prompt.mode == SystemPromptMode.CUSTOM:
        mounts.append({"name": "system-prompt", "mountPath": PROMPT_MOUNT, "readOnly": True})
    return mounts


def runtime_config_key(pool: str) -> str:
    """The ConfigMap key holding one pool's runtime config."""
    return f"runtime-{pool}.json"


def grace_period_seconds(config: RuntimeConfig) -> int:
    """preStop sleep + vLLM's shutdown timeout + a margin: draining always finishes first."""
    return PRESTOP_SLEEP_SECONDS + config.shutdown_timeout_seconds + GRACE_MARGIN_SECONDS


def render_deployment(
    *,
    endpoint: Endpoint,
    pool: GPUPool,
    runtime: RuntimeConfig,
    replicas: int,
    image: str,
    revision: str,
    budget: StartupBudget,
    config_map: str,
) -> dict[str, Any]:
    """The Deployment serving `endpoint` on `pool` with `replicas` pods of `runtime.tp` GPUs."""
    spec = endpoint.spec
    tp = runtime.tensor_parallel_size
    pool_labels = {POOL_LABEL: pool.name}
    selector = {**selector_labels(endpoint), **pool_labels}
    pod_labels = {**standard_labels(endpoint), **pool_labels, REVISION_LABEL: revision}
    http_get = {"path": HEALTH_PATH, "port": "http"}  # start-up only
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["magistral-runtime", "serve", "--config", CONFIG_PATH],
        "ports": [{"name": "http", "containerPort": DEFAULT_PORT, "protocol": "TCP"}],
        "env": _env(endpoint),
        "resources": {
            "requests": {
                "cpu": spec.runtime.cpu,
                "memory": spec.runtime.memory,
                "nvidia.com/gpu": str(tp),
            },
            "limits": {"memory": spec.runtime.memory, "nvidia.com/gpu": str(tp)},
        },
        "volumeMounts": _mounts(endpoint),
        "startupProbe": {
            "httpGet": http_get,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": budget.failure_threshold,
        },
        # Readiness generates one token through the engine (vLLM's /health answers 200 while
        # a wedged engine produces nothing); its timeout exceeds the runtime's 5 s generation
        # timeout. Readiness fails first when draining.
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": 5,
            "timeoutSeconds": 8,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": LIVE_PATH, "port": "http"},
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": _volumes(endpoint, pool=pool, config_map=config_map),
        "nodeSelector": dict(pool.node_selector),
        "tolerations": [t.to_wire() for t in pool.tolerations],
        "terminationGracePeriodSeconds": grace_period_seconds(runtime),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
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
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(
            endpoint,
            name=deployment_name(endpoint, pool.name),
            labels={**pool_labels, REVISION_LABEL: revision},
            annotations={TP_ANNOTATION: str(tp)},
        ),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            # New pods count as available (and old ones go) only after staying Ready this long.
            "minReadySeconds": spec.rollout.healthy_seconds,
            # A new pod must start (the budget) and then stay Ready for minReadySeconds before
            # it counts as progress; the API server also requires deadline > minReadySeconds.
            "progressDeadlineSeconds": budget.seconds + spec.rollout.healthy_seconds + 60,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": pod_template_annotations(runtime),
                },
                "spec": pod_spec,
            },
        },
    }
