"""What a pod asks of its simulator: address, ``vllm serve`` flags, API key, lifecycle (pure).

Works on pod JSON as the API server returns it. A simulator runs for a pod that is Running,
not being deleted, has a loopback pod IP, a container with a port named ``http`` and (when
kwok reports container states) that container running, unless it is a router pod (label
``app.kubernetes.io/component: router``: its containers run as processes, ``router_pods.py``).
The kwok simulation knobs of ``e2e/cluster/stages.py`` map onto the engine:
``magistral.dev/sim-startup`` delays the port opening (model loading) until about when kwok
turns the pod Ready, and
``magistral.dev/sim-unready=true`` makes ``/health`` answer 503 (the failing readiness probe),
except on pods whose readiness the supervisor plays (``E2E_SIM_READINESS=supervisor``, the real
engine's pod, and every router pod): there the labels are the supervisor's verdict, not an input.
Container env knobs make the engine slow or failing (a revision that is up but misbehaves):
``E2E_SIM_TTFT_MS``, ``E2E_SIM_ITL_MS`` and ``E2E_SIM_ERROR_RATE`` become ``--ttft-ms``,
``--itl-ms`` and ``--error-rate`` after the ``vllm serve`` flags; a value that is not valid is
ignored and named in ``PodSim.warnings`` (the supervisor logs it), as an unparsable
``sim-startup`` is ignored.
The files the container mounts from ConfigMaps are recorded too (``ConfigMapMount``), so the
supervisor can find the runtime config and the custom system prompt an operator pod reads.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from e2e.cluster.stages import (
    COMPONENT_LABEL,
    ROUTER_COMPONENT,
    SIM_ERROR_RATE_ENV,
    SIM_ITL_MS_ENV,
    SIM_READINESS_ENV,
    SIM_READINESS_SUPERVISOR,
    SIM_STARTUP_ANNOTATION,
    SIM_TTFT_MS_ENV,
    SIM_UNREADY_LABEL,
)
from e2e.engine.config import API_KEY_ENV, parse_fraction, simulator_args_from_vllm

JSON = dict[str, Any]

MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=magistral-operator"
"""Same value as ``magistral_operator.api.labels.MANAGED_BY_SELECTOR`` (a test checks it)."""
ARGS_ANNOTATION = "magistral.dev/vllm-args"
"""Same value as ``magistral_operator.api.labels.ARGS_ANNOTATION`` (a test checks it)."""
HTTP_PORT_NAME = "http"
# COMPONENT_LABEL, ROUTER_COMPONENT (from e2e.cluster.stages): pods labelled
# ``app.kubernetes.io/component: router`` are router pods (the operator's engine pods say
# ``inference``): they never get a simulator; their containers run as processes
# (``router_pods.py``), and kwok keeps them not Ready until the supervisor's probes pass.
RUNTIME_CONFIG_ENV = "MAGISTRAL_RUNTIME_CONFIG"
"""Same value as ``magistral_runtime.config.CONFIG_ENV`` (a test checks it)."""
RUNTIME_CONFIG_PATH = "/etc/magistral/runtime.json"
"""Same value as ``magistral_runtime.config.CONFIG_PATH``: where the runtime looks by default."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
DEFAULT_GRACE_SECONDS = 30.0
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _milliseconds(*, positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(
                f"{text!r} is not a number of milliseconds {'> 0' if positive else '>= 0'}"
            )
        return value

    return parse


SIM_ENV_FLAGS: dict[str, tuple[str, Callable[[str], float]]] = {
    SIM_TTFT_MS_ENV: ("--ttft-ms", _milliseconds(positive=False)),
    SIM_ITL_MS_ENV: ("--itl-ms", _milliseconds(positive=True)),
    SIM_ERROR_RATE_ENV: ("--error-rate", parse_fraction),
}
"""Container env knob -> the simulator flag it sets, and the parser that checks its value."""


def sim_env_args(container: JSON) -> tuple[list[str], list[str]]:
    """The simulator flags of the container's literal env knobs (``SIM_ENV_FLAGS``), and a
    warning for each knob whose value is not valid (that one is ignored)."""
    args: list[str] = []
    warnings: list[str] = []
    for name, (flag, parse) in SIM_ENV_FLAGS.items():
        text = _literal_env(container, name)
        if text is None:
            continue
        try:
            value = parse(text.strip())
        except ValueError as err:
            warnings.append(f"{name} ignored: {err}")
            continue
        args += [flag, repr(value)]
    return args, warnings


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``45s``, ``1m30s`` or ``1.5h``; ValueError otherwise."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"not a Go duration: {text!r}")
    return total


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def is_loopback_ip(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in LOOPBACK
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class ConfigMapKey:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class ConfigMapMount:
    """A ConfigMap volume mounted in the serving container."""

    mount_path: str
    name: str
    items: tuple[tuple[str, str], ...] | None
    """``(key, path)`` pairs; None: every key, as a file named after it."""
    sub_path: str = ""

    def key_for(self, path: str) -> ConfigMapKey | None:
        """The ConfigMap key whose content the container sees at ``path`` (None: not here)."""
        mount = self.mount_path.rstrip("/")
        if self.sub_path:
            rel = self.sub_path if path == mount else None
        elif path.startswith(mount + "/"):
            rel = path[len(mount) + 1 :]
        else:
            rel = None
        if not rel:
            return None
        if self.items is None:
            return None if "/" in rel else ConfigMapKey(self.name, rel)
        for key, item_path in self.items:
            if item_path.strip("/") == rel:
                return ConfigMapKey(self.name, key)
        return None


def configmap_key_for(mounts: Sequence[ConfigMapMount], path: str) -> ConfigMapKey | None:
    """Which ConfigMap key a file path inside the container comes from (None: none)."""
    for mount in mounts:
        found = mount.key_for(path)
        if found is not None:
            return found
    return None


@dataclass(frozen=True, slots=True)
class ReadinessProbe:
    """The ``http`` container's readiness probe (an ``httpGet``), with the kubelet's defaults."""

    path: str = "/health"
    """Without an ``httpGet`` readiness probe: vLLM's ``/health`` (the engine is up)."""
    period_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay_s: float = 0.0


def readiness_probe(container: JSON) -> ReadinessProbe:
    """What the kubelet would probe for readiness (its defaults where the pod sets nothing)."""
    probe = container.get("readinessProbe") or {}
    http_get = probe.get("httpGet") or {}
    default = ReadinessProbe()
    return ReadinessProbe(
        path=str(http_get.get("path") or default.path),
        period_s=float(probe.get("periodSeconds") or default.period_s),
        timeout_s=float(probe.get("timeoutSeconds") or default.timeout_s),
        failure_threshold=int(probe.get("failureThreshold") or default.failure_threshold),
        success_threshold=int(probe.get("successThreshold") or default.success_threshold),
        initial_delay_s=float(probe.get("initialDelaySeconds") or 0),
    )


@dataclass(frozen=True, slots=True)
class PodSim:
    """The simulator a pod asks for."""

    uid: str
    namespace: str
    name: str
    ip: str
    port: int
    sim_args: tuple[str, ...]
    """Simulator flags translated from the pod's ``vllm serve`` line."""
    api_key: str | None
    api_key_secret: SecretKey | None
    node_name: str | None
    startup_delay_s: float
    healthy: bool
    config_maps: tuple[ConfigMapMount, ...] = ()
    """The ConfigMap files the serving container mounts."""
    runtime_config_path: str = RUNTIME_CONFIG_PATH
    """Where the runtime reads its config in the container (``$MAGISTRAL_RUNTIME_CONFIG``)."""
    readiness: ReadinessProbe = ReadinessProbe()
    """The container's readiness probe (played by the supervisor for a real engine)."""
    readiness_gated: bool = False
    """``E2E_SIM_READINESS=supervisor``: kwok shows the pod Ready only when the supervisor's
    readiness probe passes (then its sim-ready/sim-unready labels are the supervisor's)."""
    knob_args: tuple[str, ...] = ()
    """Simulator flags of the pod's env knobs (``SIM_ENV_FLAGS``): the supervisor puts them
    last, after its own flags, so that a knob on one revision wins over a test's defaults."""
    warnings: tuple[str, ...] = ()
    """Env knobs ignored because their values are not valid (the supervisor logs them)."""

    @property
    def runtime_config_source(self) -> ConfigMapKey | None:
        """The ConfigMap key mounted as the runtime config (None: no runtime config)."""
        return configmap_key_for(self.config_maps, self.runtime_config_path)

    @property
    def served_model_name(self) -> str | None:
        args = list(self.sim_args)
        if "--served-model-name" in args:
            i = args.index("--served-model-name")
            if i + 1 < len(args):
                return args[i + 1]
        return None

    def fingerprint(self) -> tuple[object, ...]:
        """What needs a new process when it changes (health and start-up delay do not)."""
        return (
            self.ip,
            self.port,
            self.sim_args,
            self.knob_args,
            self.api_key,
            self.api_key_secret,
            self.node_name,
            self.config_maps,
            self.runtime_config_path,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """``sim`` to run, or why none runs (``reason``)."""

    sim: PodSim | None
    reason: str = ""
    refused: bool = False
    """The pod IP is outside 127.0.0.0/8: never serve it."""


@dataclass(frozen=True, slots=True)
class Termination:
    """How the kubelet would stop the pod's container: preStop first, then SIGTERM."""

    prestop_s: float
    grace_s: float


def pod_key(pod: JSON) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _http_container(pod: JSON) -> tuple[JSON, int] | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == HTTP_PORT_NAME and port.get("containerPort"):
                return container, int(port["containerPort"])
    return None


def container_running(pod: JSON, name: str) -> tuple[bool, str]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") != name:
            continue
        state = status.get("state") or {}
        if "running" in state:
            return True, str((state["running"] or {}).get("startedAt") or "")
        waiting = (state.get("waiting") or {}).get("reason")
        return False, str(waiting or next(iter(state), "not running"))
    return True, ""  # no status reported for it: go by the pod phase


def _api_key(container: JSON) -> tuple[str | None, SecretKey | None]:
    for env in container.get("env") or []:
        if env.get("name") != API_KEY_ENV:
            continue
        if "value" in env:
            return str(env["value"]) or None, None
        ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
        if ref.get("name") and ref.get("key"):
            return None, SecretKey(str(ref["name"]), str(ref["key"]))
    return None, None


def _config_map_mounts(pod: JSON, container: JSON) -> tuple[ConfigMapMount, ...]:
    volumes = {
        str(v.get("name")): v["configMap"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if isinstance(v.get("configMap"), dict) and v["configMap"].get("name")
    }
    mounts: list[ConfigMapMount] = []
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(str(mount.get("name")))
        if source is None or not mount.get("mountPath"):
            continue
        items = source.get("items")
        mounts.append(
            ConfigMapMount(
                mount_path=str(mount["mountPath"]),
                name=str(source["name"]),
                items=(
                    tuple((str(i.get("key")), str(i.get("path"))) for i in items) if items else None
                ),
                sub_path=str(mount.get("subPath") or ""),
            )
        )
    return tuple(mounts)


def _literal_env(container: JSON, name: str) -> str | None:
    for env in container.get("env") or []:
        if env.get("name") == name and "value" in env:
            return str(env["value"])
    return None


def is_router_pod(pod: JSON) -> bool:
    """The pod is labelled ``app.kubernetes.io/component: router``."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(COMPONENT_LABEL) == ROUTER_COMPONENT


def readiness_gated(pod: JSON) -> bool:
    """kwok leaves the pod's readiness to the supervisor: it is a router pod (always, by its
    label: stage ``magistral-pod-sim-gated-router``), or its ``http`` container has
    ``E2E_SIM_READINESS=supervisor`` (see PodSim)."""
    if is_router_pod(pod):
        return True
    found = _http_container(pod)
    return (
        found is not None and _literal_env(found[0], SIM_READINESS_ENV) == SIM_READINESS_SUPERVISOR
    )


def vllm_argv(pod: JSON) -> list[str]:
    """The pod's ``vllm serve`` argv from its annotation (empty if absent or unparsable)."""
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ARGS_ANNOTATION)
    if not text:
        return []
    try:
        return shlex.split(text)
    except ValueError:
        return []


def decide(pod: JSON, *, now: datetime | None = None) -> Decision:
    """The simulator ``pod`` should have right now (None while it should have none)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return Decision(None, "terminating")
    if status.get("phase") != "Running":
        return Decision(None, f"phase {status.get('phase') or 'unknown'}")
    ip = str(status.get("podIP") or "")
    if not ip:
        return Decision(None, "no pod IP")
    if not is_loopback_ip(ip):
        return Decision(None, f"pod IP {ip} is outside 127.0.0.0/8", refused=True)
    if is_router_pod(pod):
        return Decision(None, "a router pod (its containers run as processes)")
    found = _http_container(pod)
    if found is None:
        return Decision(None, f"no container port named {HTTP_PORT_NAME!r}")
    container, port = found
    running, detail = container_running(pod, str(container.get("name", "")))
    if not running:
        return Decision(None, f"container {container.get('name')} not running ({detail})")
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    delay = 0.0
    startup = annotations.get(SIM_STARTUP_ANNOTATION)
    if startup:
        try:
            delay = parse_go_duration(str(startup))
        except ValueError:
            delay = 0.0
        started = _parse_time(detail) or _parse_time(status.get("startTime"))
        if started is not None:
            elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
            delay = max(0.0, delay - elapsed)
    key, secret = _api_key(container)
    knob_args, warnings = sim_env_args(container)
    return Decision(
        PodSim(
            uid=str(meta.get("uid", "")),
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            ip=ip,
            port=port,
            sim_args=tuple(simulator_args_from_vllm(vllm_argv(pod))),
            knob_args=tuple(knob_args),
            api_key=key,
            api_key_secret=secret,
            node_name=(pod.get("spec") or {}).get("nodeName"),
            startup_delay_s=round(delay, 3),
            healthy=labels.get(SIM_UNREADY_LABEL) != "true",
            config_maps=_config_map_mounts(pod, container),
            runtime_config_path=_literal_env(container, RUNTIME_CONFIG_ENV) or RUNTIME_CONFIG_PATH,
            readiness=readiness_probe(container),
            readiness_gated=_literal_env(container, SIM_READINESS_ENV) == SIM_READINESS_SUPERVISOR,
            warnings=tuple(warnings),
        )
    )


def termination(pod: JSON, container: str | None = None) -> Termination:
    """The preStop sleep of the ``http`` container (or of the container named ``container``)
    and the grace period of a deleted pod."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    grace = meta.get("deletionGracePeriodSeconds")
    if grace is None:
        grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    prestop = 0.0
    if container is None:
        found = _http_container(pod)
        chosen = None if found is None else found[0]
    else:
        named = [c for c in spec.get("containers") or [] if c.get("name") == container]
        chosen = named[0] if named else None
    if chosen is not None:
        sleep = ((chosen.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        prestop = float(sleep.get("seconds") or 0)
    return Termination(prestop_s=prestop, grace_s=float(grace))
