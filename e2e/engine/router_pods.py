"""What a router pod asks of the pod supervisor: one process per container (pure).

The operator renders, per endpoint, a router Deployment (``app.kubernetes.io/component:
router``) in front of the engine pods: a ``router`` container (``vllm-router`` with Kubernetes
service discovery) and a ``front`` container (``magistral-runtime front``). The pod supervisor
never starts a vLLM simulator for such a pod; it runs each container's ``command + args`` as a
process of its own instead, as a kubelet runs containers. This module decides which processes a
router pod's JSON asks for:

* the **loopback mapping**: the containers of a pod share its network namespace, where
  ``0.0.0.0``, ``127.0.0.1`` and ``localhost`` are the pod's own addresses. Here every pod has
  a loopback IP of its own (kwok hands them out from 127.64.0.0/12), so each of those addresses
  in the args and literal env values (also inside URLs: ``http://127.0.0.1:8001``) becomes the
  pod IP: the front reaches its router on ``podIP:8001`` and two router pods never collide;
* the environment: literal ``value``s, ``valueFrom.fieldRef`` (``status.podIP``,
  ``metadata.name`` …) resolved from the pod, ``secretKeyRef``/``configMapKeyRef`` left for the
  supervisor to read through the API; ``$(VAR)`` in ``command``/``args`` expanded as the kubelet
  does;
* the port the process listens on (``--port`` in its args, else its first container port): the
  process counts as serving when that port accepts connections;
* the container's readiness probe (an ``httpGet``; its ``port`` by number or by name);
* whether it runs at all: as for engine pods, Running, not being deleted, a pod IP in
  127.0.0.0/8 (other IPs are refused), and the container running when kwok reports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from e2e.engine.pods import (
    JSON,
    ConfigMapKey,
    ReadinessProbe,
    SecretKey,
    container_running,
    is_loopback_ip,
    readiness_probe,
)

LOOPBACK_HOSTS = ("0.0.0.0", "127.0.0.1", "localhost")
"""The pod's own addresses inside its network namespace: mapped to the pod IP."""
_LOOPBACK = re.compile(r"(?<![\w.-])(?:0\.0\.0\.0|127\.0\.0\.1|localhost)(?![\w.-])")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def map_loopback(text: str, ip: str) -> str:
    """``text`` with every ``0.0.0.0``, ``127.0.0.1`` and ``localhost`` replaced by ``ip``.

    Only whole addresses: ``127.0.0.10`` or ``localhost.example`` stay as they are.
    """
    return _LOOPBACK.sub(ip, text)


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion in ``command``/``args``: a variable of the container's
    environment is replaced, an unknown one stays as written, ``$$`` is a literal ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR_REF.sub(repl, text)


@dataclass(frozen=True, slots=True)
class EnvFrom:
    """An environment variable the supervisor reads through the API when it starts the process."""

    name: str
    secret: SecretKey | None = None
    config_map: ConfigMapKey | None = None
    optional: bool = False


@dataclass(frozen=True, slots=True)
class RouterContainer:
    """One container of a router pod, run as a process on the pod's IP."""

    uid: str
    namespace: str
    name: str
    """The pod's name."""
    container: str
    ip: str
    port: int | None
    """The port it listens on (``--port`` of its args, else its first container port)."""
    argv: tuple[str, ...]
    """``command + args``, variables expanded and loopback addresses mapped."""
    env: tuple[tuple[str, str], ...]
    """Literal and ``fieldRef`` values (loopback addresses mapped), in the pod's order."""
    env_refs: tuple[EnvFrom, ...] = ()
    readiness: ReadinessProbe | None = None
    readiness_port: int | None = None
    service_account: str = "default"
    automount_token: bool = True
    """A kubeconfig for the pod's ServiceAccount is given (``automountServiceAccountToken``)."""
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What could not be mapped (logged)."""

    @property
    def key(self) -> str:
        """Its key among the supervisor's processes (an engine's is the pod's uid)."""
        return f"{self.uid}/{self.container}"

    @property
    def command(self) -> str:
        return self.argv[0]

    def fingerprint(self) -> tuple[object, ...]:
        """What needs a new process when it changes."""
        return (
            self.ip,
            self.port,
            self.argv,
            self.env,
            self.env_refs,
            self.service_account,
            self.automount_token,
        )


@dataclass(frozen=True, slots=True)
class RouterDecision:
    """The processes a router pod asks for, or why none runs (``reason``)."""

    containers: tuple[RouterContainer, ...]
    reason: str = ""
    refused: bool = False
    """The pod IP is outside 127.0.0.0/8: never run anything on it."""
    skipped: tuple[tuple[str, str], ...] = ()
    """``(container, why)`` for containers without a process while the pod runs."""


def _field_value(pod: JSON, path: str) -> str | None:
    """The value of a ``fieldRef.fieldPath`` the kubelet supports (None: not supported)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i.get("ip", "") for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i.get("ip", "") for i in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    return None


def _environment(
    pod: JSON, container: JSON, ip: str
) -> tuple[list[tuple[str, str]], list[EnvFrom], list[str]]:
    values: list[tuple[str, str]] = []
    refs: list[EnvFrom] = []
    notes: list[str] = []
    known: dict[str, str] = {}
    for env in container.get("env") or []:
        name = str(env.get("name") or "")
        if not name:
            continue
        if "value" in env or "valueFrom" not in env:
            value = map_loopback(expand_vars(str(env.get("value") or ""), known), ip)
        else:
            source = env.get("valueFrom") or {}
            if "fieldRef" in source:
                path = str((source.get("fieldRef") or {}).get("fieldPath") or "")
                found = _field_value(pod, path)
                if found is None:
                    notes.append(f"env {name}: fieldRef {path} is not supported; left unset")
                    continue
                value = found
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
                ref_name, ref_key = str(ref.get("name") or ""), str(ref.get("key") or "")
                if "secretKeyRef" in source:
                    refs.append(
                        EnvFrom(
                            name,
                            secret=SecretKey(ref_name, ref_key),
                            optional=bool(ref.get("optional")),
                        )
                    )
                else:
                    refs.append(
                        EnvFrom(
                            name,
                            config_map=ConfigMapKey(ref_name, ref_key),
                            optional=bool(ref.get("optional")),
                        )
                    )
                continue
            else:
                notes.append(f"env {name}: {', '.join(source)} is not supported; left unset")
                continue
        values.append((name, value))
        known[name] = value
    if container.get("envFrom"):
        notes.append("envFrom is not supported; those variables are unset")
    return values, refs, notes


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _named_port(container: JSON, port: object) -> int | None:
    if isinstance(port, int):
        return port
    text = str(port or "")
    if text.isdigit():
        return int(text)
    for item in container.get("ports") or []:
        if item.get("name") == text and item.get("containerPort"):
            return int(item["containerPort"])
    return None


def router_container(pod: JSON, container: JSON) -> RouterContainer | str:
    """The process ``container`` of a running router pod asks for, or why it has none."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ip = str((pod.get("status") or {}).get("podIP") or "")
    name = str(container.get("name", ""))
    command = [str(c) for c in container.get("command") or []]
    if not command:
        return "no command (the image's entrypoint is not known here)"
    running, detail = container_running(pod, name)
    if not running:
        return f"not running ({detail})"
    env, refs, notes = _environment(pod, container, ip)
    known = dict(env)
    argv = tuple(
        map_loopback(expand_vars(a, known), ip)
        for a in [*command, *(str(a) for a in container.get("args") or [])]
    )
    port_text = _flag_value(argv, "--port")
    port: int | None = int(port_text) if port_text and port_text.isdigit() else None
    if port is None:
        ports = [p for p in container.get("ports") or [] if p.get("containerPort")]
        port = int(ports[0]["containerPort"]) if ports else None
    probe = container.get("readinessProbe") or {}
    http_get = probe.get("httpGet")
    readiness: ReadinessProbe | None = None
    readiness_port: int | None = None
    if probe and http_get is None:
        notes.append("its readiness probe is not an httpGet; not probed")
    elif http_get is not None:
        readiness_port = _named_port(container, http_get.get("port"))
        if readiness_port is None:
            notes.append(f"readiness probe port {http_get.get('port')!r} is not a container port")
        else:
            readiness = readiness_probe(container)
    automount = spec.get("automountServiceAccountToken")
    return RouterContainer(
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        container=name,
        ip=ip,
        port=port,
        argv=argv,
        env=tuple(env),
        env_refs=tuple(refs),
        readiness=readiness,
        readiness_port=readiness_port,
        service_account=str(spec.get("serviceAccountName") or "default"),
        automount_token=automount is not False,
        notes=tuple(notes),
    )


def decide_router(pod: JSON) -> RouterDecision:
    """The processes a router pod should have right now (none while it should have none)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return RouterDecision((), "terminating")
    if status.get("phase") != "Running":
        return RouterDecision((), f"phase {status.get('phase') or 'unknown'}")
    ip = str(status.get("podIP") or "")
    if not ip:
        return RouterDecision((), "no pod IP")
    if not is_loopback_ip(ip):
        return RouterDecision((), f"pod IP {ip} is outside 127.0.0.0/8", refused=True)
    wanted: list[RouterContainer] = []
    skipped: list[tuple[str, str]] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        found = router_container(pod, container)
        if isinstance(found, str):
            skipped.append((str(container.get("name", "")), found))
        else:
            wanted.append(found)
    reason = "" if wanted else "no container to run"
    return RouterDecision(tuple(wanted), reason, skipped=tuple(skipped))
