"""Runs one simulated vLLM replica per pod: ``python -m e2e.engine.supervisor --kubeconfig K``.

It watches the pods matching a label selector (default: the operator's
``app.kubernetes.io/managed-by=magistral-operator``) and, for each pod kwok runs with a loopback
IP, starts ``python -m e2e.engine.simulator`` on ``podIP:<container port "http">`` with the
flags of the pod's ``vllm serve`` line (annotation ``magistral.dev/vllm-args``) and of its env
knobs (``E2E_SIM_TTFT_MS``, ``E2E_SIM_ITL_MS``, ``E2E_SIM_ERROR_RATE``: ``pods.SIM_ENV_FLAGS``),
the GPU of its node and its API key (a literal ``VLLM_API_KEY`` or, read through the API, the
Secret it refers to). It plays the kubelet's part in the pod's lifecycle: a deleted pod's
simulator gets the preStop sleep, then SIGTERM (and drains for the ``--shutdown-timeout`` of its
vLLM line), then SIGKILL when the grace period ends; a pod that loses its IP or whose container
stops running loses its simulator at once; a simulator that dies while its pod runs is restarted
with back-off. Pod IPs outside 127.0.0.0/8 are refused.

A pod that mounts a runtime config from a ConfigMap (as the operator's pods do) gets the
project's runtime middleware, as ``magistral-runtime serve`` starts vLLM: the supervisor reads
the ConfigMap (and a custom system prompt's), writes them into a directory of the pod's own with
a simulated model cache (``runtime_files.py``), and starts the simulator with ``--middleware
magistral_runtime.middleware.MagistralMiddleware`` and ``$MAGISTRAL_RUNTIME_CONFIG``. Anything
missing is logged and the plain simulator runs; ``runtime_middleware=False`` turns it off.

With ``real_engine`` (a predicate on pod JSON; CLI ``--real-engine GLOB``) one selected pod at a
time is served by the real vLLM engine instead (``real_pods.py``, ``e2e/real_engine``): the
engine venv's ``magistral-runtime serve`` with the pod's runtime config adapted to the tiny
model. The supervisor plays the kubelet's readiness probe (the pod's ``readinessProbe``) for
that pod and for every pod gated by ``E2E_SIM_READINESS=supervisor`` (kwok keeps such a pod
Running, not Ready from its creation): it labels the pod ``magistral.dev/sim-ready=true`` when
the probe passes and ``magistral.dev/sim-unready=true`` while it fails afterwards. An ungated
real-engine pod is labelled ``sim-unready`` when first seen, racing kwok's pod-ready stage.

Router pods (label ``app.kubernetes.io/component: router``) never get a simulator: each of their
containers' ``command + args`` runs as a process (the command from the repo venv's ``bin``),
with ``0.0.0.0``/``127.0.0.1``/``localhost`` mapped to the pod IP and ``$KUBECONFIG`` pointing at
a kubeconfig with the pod's ServiceAccount token (``router_pods.py``), under the same lifecycle
rules; ``routers()`` and ``wait_for_routers()`` show them. Every router pod is gated (kwok keeps
it Running, not Ready from its creation, by its label, without any env): it is labelled
``magistral.dev/sim-ready=true`` when every container's readiness probe passes (a container
without one: when its process serves), and ``magistral.dev/sim-unready=true`` while one fails
afterwards or a process is gone (killed, restarting).

From Python (for example a pytest fixture)::

    with Supervisor(kubeconfig=cluster.kubeconfig, sim_args=["--itl-ms", "2"]) as sup:
        sims = sup.wait_for(lambda s: len(serving(s)) == 3, timeout=60)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fnmatch
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from e2e.cluster.processes import group_alive
from e2e.cluster.stages import SIM_READY_LABEL, SIM_UNREADY_LABEL
from e2e.engine.config import API_KEY_ENV, DEFAULT_GPU
from e2e.engine.pods import (
    GPU_MEMORY_LABEL,
    GPU_PRODUCT_LABEL,
    JSON,
    MANAGED_BY_SELECTOR,
    ConfigMapKey,
    Decision,
    PodSim,
    configmap_key_for,
    decide,
    is_router_pod,
    pod_key,
    readiness_gated,
    termination,
)
from e2e.engine.real_pods import EngineFiles, EngineInstall, ReadinessProber, prepare
from e2e.engine.router_pods import RouterContainer, decide_router
from e2e.engine.runtime_files import (
    CLEARED_ENV,
    MIDDLEWARE,
    RuntimeFiles,
    RuntimeSetupError,
    custom_prompt_path,
    parse_config,
    write_runtime_files,
)

log = logging.getLogger("e2e.engine.supervisor")

REPO_ROOT = Path(__file__).resolve().parents[2]
TICK_SECONDS = 0.1
WATCH_TIMEOUT_SECONDS = 290
BACKOFF_MAX_SECONDS = 30.0
TOKEN_SECONDS = 86400
"""Lifetime of the ServiceAccount token a router pod's containers get (the kubelet's is
refreshed; a test session is shorter than this)."""
_T = TypeVar("_T")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: no dlopen between fork and exec


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it exits."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class SimulatorInfo:
    """A snapshot of one simulator process, for tests and logs."""

    namespace: str
    pod: str
    uid: str
    ip: str
    port: int
    pid: int | None
    state: str
    """``waiting-address``, ``starting``, ``serving``, ``backoff`` or ``terminating``."""
    served_model_name: str | None
    api_key: bool
    healthy: bool
    restarts: int
    log_path: str
    runtime_middleware: bool = False
    """The simulator runs the project's runtime middleware (the pod's runtime config)."""
    real_engine: bool = False
    """The real vLLM engine serves this pod, not the simulator."""
    health_seconds: float | None = None
    """With the supervisor's readiness probe (real engine, gated pod): seconds from the
    process's start to ``/health`` answering 200."""
    ready_seconds: float | None = None
    """With the supervisor's readiness probe: seconds from the process's start to the probe
    first passing (the pod turned Ready)."""
    ready_before_engine: bool = False
    """Real engine: the pod was seen Ready before the engine was (kwok's stage won the race
    against the ``sim-unready`` label); the cluster then saw a Ready pod that was not."""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class RouterProcessInfo:
    """A snapshot of one container process of a router pod, for tests and logs."""

    namespace: str
    pod: str
    uid: str
    container: str
    ip: str
    port: int | None
    """The port it listens on (None: none known; it counts as serving once started)."""
    pid: int | None
    state: str
    """``waiting-address``, ``starting``, ``serving``, ``backoff`` or ``terminating``."""
    restarts: int
    log_path: str
    argv: tuple[str, ...]
    """As started: the command resolved in the venv's bin dir, loopback addresses mapped."""
    ready: bool | None = None
    """Its readiness probe passes (None: the container has none)."""
    ready_seconds: float | None = None
    """Seconds from the process's start to its readiness probe first passing."""
    kubeconfig: str | None = None
    """Its ``$KUBECONFIG`` (None: not started yet, or ``automountServiceAccountToken: false``)."""

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def serving_pods(infos: Sequence[RouterProcessInfo]) -> dict[str, list[RouterProcessInfo]]:
    """Router pods (by name) all of whose container processes serve."""
    pods: dict[str, list[RouterProcessInfo]] = {}
    for info in infos:
        pods.setdefault(info.pod, []).append(info)
    return {name: procs for name, procs in pods.items() if all(p.state == "serving" for p in procs)}


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """How a deleted (or stopped) pod's process ended; times are ``time.monotonic()``."""

    namespace: str
    pod: str
    uid: str
    real_engine: bool
    pid: int | None
    returncode: int | None
    deleted_at: float | None
    """When the supervisor saw the pod deleted (None: stopped for another reason)."""
    prestop_s: float
    grace_s: float
    sigterm_at: float | None
    exited_at: float
    """When its main process (the container's PID 1) was seen gone."""
    sigkilled: bool
    """The grace period ended (or the pod went away at once) before it exited."""
    container: str | None = None
    """The container of a router pod (None: an engine's process)."""

    @property
    def drain_seconds(self) -> float | None:
        """From SIGTERM to exit."""
        return None if self.sigterm_at is None else self.exited_at - self.sigterm_at

    @property
    def grace_left_seconds(self) -> float | None:
        """How much of the grace period was left when it exited."""
        if self.deleted_at is None:
            return None
        return self.deleted_at + self.grace_s - self.exited_at


def serving(sims: Sequence[SimulatorInfo]) -> list[SimulatorInfo]:
    """The simulators whose port accepts connections (pods not being deleted)."""
    return [s for s in sims if s.state == "serving"]


@dataclass(eq=False)
class _Proc:
    spec: PodSim | RouterContainer
    """An engine's simulator (or real engine), or one container of a router pod."""
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    state: str = "waiting-address"
    restarts: int = 0
    next_start: float = 0.0
    healthy: bool = True
    """What the pod asks for (label sim-unready)."""
    applied_healthy: bool = True
    """What the process was told (flag at start, then SIGUSR1/SIGUSR2 once serving)."""
    term_at: float | None = None
    kill_at: float | None = None
    termed: bool = False
    started_at: float = 0.0
    runtime: RuntimeFiles | None = None
    """The runtime middleware's files of the running process (None: plain simulator)."""
    real: bool = False
    """Served by the real engine (decided when the pod is first seen; kept across restarts)."""
    engine: EngineFiles | None = None
    prober: ReadinessProber | None = None
    reaper: subprocess.Popen[bytes] | None = None
    pgid: int | None = None
    """The process group of a real engine (vLLM's engine core and worker are in it) or of a
    router pod's container: SIGKILL goes to all of it, and it runs while any of it runs."""
    argv: tuple[str, ...] = ()
    """A router container's command line as started."""
    kubeconfig: str | None = None
    """A router container's ``$KUBECONFIG`` as started."""
    deleted_at: float | None = None
    prestop_s: float = 0.0
    grace_s: float = 0.0
    sigterm_at: float | None = None
    sigkilled: bool = False
    exited_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def key(self) -> str:
        """Its key among the supervisor's processes: the pod's uid for an engine,
        ``<uid>/<container>`` for a router pod's container."""
        return self.spec.key if isinstance(self.spec, RouterContainer) else self.spec.uid

    @property
    def sim(self) -> PodSim:
        """The engine's spec (only engine processes have one)."""
        assert isinstance(self.spec, PodSim), self.spec
        return self.spec

    @property
    def what(self) -> str:
        if isinstance(self.spec, RouterContainer):
            return f"container {self.spec.container}"
        return "real engine" if self.real else "simulator"

    def main_alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def alive(self) -> bool:
        """The process runs; for a real engine or a container, any process of its group
        (vLLM's children).

        Once the group is found gone, its id is forgotten and its reaper ended, so that nothing
        ever signals that id again (the system may hand it out anew)."""
        if self.main_alive():
            return True
        if self.pgid is not None:
            if group_alive(self.pgid):
                return True
            self.pgid = None
            self._end_reaper()
        return False

    def signal(self, sig: signal.Signals) -> None:
        """As the kubelet signals a container: SIGTERM to PID 1, SIGKILL to every process."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGKILL and self.pgid is not None:
                os.killpg(self.pgid, sig)
            elif self.popen is not None and self.main_alive():
                os.kill(self.popen.pid, sig)
        if sig == signal.SIGTERM and self.sigterm_at is None:
            self.sigterm_at = time.monotonic()
        if sig == signal.SIGKILL:
            self.sigkilled = True

    def end_helpers(self) -> None:
        """Stop the readiness prober and the orphan reaper (the engine's group is gone)."""
        if self.prober is not None:
            self.prober.stop()
        self._end_reaper()

    def _end_reaper(self) -> None:
        if self.reaper is not None:
            # Stopped before it could ever signal a process group id handed out again.
            self.reaper.kill()
            self.reaper.wait()
            self.reaper = None


@dataclass
class _RealSlot:
    """The one pod the real engine serves (held until its engine has exited)."""

    uid: str
    namespace: str
    name: str
    retry_at: float = 0.0
    engine_was_ready: bool = False
    ready_before_engine: bool = False


class Supervisor:
    """Watches pods and keeps one simulator process per running pod."""

    def __init__(
        self,
        *,
        kubeconfig: Path | str,
        label_selector: str = MANAGED_BY_SELECTOR,
        namespace: str | None = None,
        sim_args: Sequence[str] = (),
        sim_env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        honor_prestop: bool = True,
        die_with_parent: bool = True,
        python: str = sys.executable,
        stop_grace_seconds: float = 5.0,
        runtime_middleware: bool = True,
        real_engine: Callable[[JSON], bool] | None = None,
        real_engine_overrides: Mapping[str, Any] | None = None,
        engine_install: EngineInstall | None = None,
        bin_dir: Path | None = None,
        router_kubeconfig: Path | None = None,
    ) -> None:
        """``sim_args`` are appended to every simulator's flags (they win), e.g.
        ``["--itl-ms", "2"]`` for fast tests; ``sim_env`` is added to their environment.
        ``honor_prestop``: wait a deleted pod's preStop sleep before SIGTERM, as the kubelet
        does. ``stop_grace_seconds``: on ``stop()``, how long simulators may drain before
        SIGKILL. ``runtime_middleware``: run the project's runtime middleware in the simulators
        of pods that mount a runtime config (it needs ConfigMap reads); not when ``sim_args``
        name a ``--middleware`` of their own.

        ``real_engine``: pods (their JSON) the real vLLM engine may serve instead of the
        simulator; the first one seen gets it, and the next only once that engine has exited
        (one at a time: it takes about 4.6 GiB). ``real_engine_overrides``: runtime config
        fields set last for it (e.g. ``{"shutdown_timeout_seconds": 10}``; see
        ``e2e/real_engine/pod_config.py`` for what is always adapted). ``engine_install``: the
        engine venv and tiny model (default: installed or reused by ``start()``).

        Router pods (``app.kubernetes.io/component: router``) get no simulator: each container's
        ``command + args`` runs as a process, the command taken from ``bin_dir`` (default: the
        directory of ``python``, the repo venv's ``bin``; ``vllm-router`` and
        ``magistral-runtime`` are console scripts there), with the pod's loopback addresses
        mapped to its IP (``router_pods.py``). ``router_kubeconfig``: the kubeconfig their
        containers get in ``$KUBECONFIG`` (default: one with a token of the pod's
        ServiceAccount, minted through the TokenRequest API, as the kubelet mounts it).
        """
        self.kubeconfig = Path(kubeconfig)
        self.label_selector = label_selector
        self.namespace = namespace
        self.sim_args = list(sim_args)
        self.sim_env = dict(sim_env or {})
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="magistral-sims-"))
        self.honor_prestop = honor_prestop
        self.die_with_parent = die_with_parent
        self.python = python
        self.stop_grace_seconds = stop_grace_seconds
        self.runtime_middleware = runtime_middleware
        self.real_engine = real_engine
        self.real_engine_overrides = dict(real_engine_overrides or {})
        self._install = engine_install
        self.bin_dir = bin_dir or Path(python).parent
        self.router_kubeconfig = router_kubeconfig
        self._pod_kubeconfigs: dict[str, Path] = {}
        self._router_snapshot: list[RouterProcessInfo] = []
        self._slot: _RealSlot | None = None
        self._label_retry: dict[str, float] = {}
        self._exits: list[ProcessExit] = []
        self._core: Any = None
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stopping = threading.Event()
        self._control: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._watch_resp: Any = None
        self._resp_lock = threading.Lock()
        self._pods: dict[str, JSON] = {}
        self._procs: dict[str, _Proc] = {}
        self._dying: list[_Proc] = []
        self._nodes: dict[str, tuple[str, int | None]] = {}
        self._reported: dict[str, str] = {}
        self._last_word: dict[str, str] = {}  # pod key -> its last report (for timeouts)
        self._turned_at = time.monotonic()  # the control loop's last turn
        self._snapshot: list[SimulatorInfo] = []
        self._snap_lock = threading.Lock()
        self._changed = threading.Condition(self._snap_lock)
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ public
    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Supervisor:
        """List the pods (errors raise here), then watch and supervise in background threads."""
        from kubernetes import client, config

        if self.real_engine is not None and self._install is None:
            self._install = EngineInstall.ensure()
        api_client = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        self._core = client.CoreV1Api(api_client)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        items, rv = self._list()
        self._events.put(("SYNC", items))
        self._control = threading.Thread(target=self._control_loop, name="sim-control", daemon=True)
        self._watcher = threading.Thread(
            target=self._watch_loop, args=(rv,), name="sim-watch", daemon=True
        )
        self._control.start()
        self._watcher.start()
        log.info(
            "supervising pods matching %r; simulator logs in %s", self.label_selector, self.log_dir
        )
        return self

    def stop(self) -> None:
        """Stop watching; SIGTERM every simulator, SIGKILL what is left after the grace."""
        self._stopping.set()
        with self._resp_lock:
            resp = self._watch_resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown()
        if self._control is not None:
            self._control.join(timeout=self.stop_grace_seconds + 15)
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    @property
    def failed(self) -> bool:
        """The control loop died (its exception was logged); simulators were stopped."""
        return self._error is not None

    def simulators(self) -> list[SimulatorInfo]:
        with self._snap_lock:
            return list(self._snapshot)

    def routers(self) -> list[RouterProcessInfo]:
        """The container processes of router pods (not in ``simulators()``)."""
        with self._snap_lock:
            return list(self._router_snapshot)

    def exits(self) -> list[ProcessExit]:
        """The processes of deleted (or stopped) pods that have exited, oldest first."""
        with self._snap_lock:
            return list(self._exits)

    def wait_for(
        self, predicate: Callable[[list[SimulatorInfo]], bool], *, timeout: float = 60.0
    ) -> list[SimulatorInfo]:
        """Block until ``predicate(simulators())`` holds; TimeoutError with the last state."""
        return self._wait(lambda: self._snapshot, predicate, timeout=timeout, what="simulators")

    def wait_for_routers(
        self, predicate: Callable[[list[RouterProcessInfo]], bool], *, timeout: float = 60.0
    ) -> list[RouterProcessInfo]:
        """Block until ``predicate(routers())`` holds; TimeoutError with the last state.

        For example ``wait_for_routers(lambda r: len(serving_pods(r)) == 2)``."""
        return self._wait(
            lambda: self._router_snapshot, predicate, timeout=timeout, what="router processes"
        )

    def _wait(
        self,
        current: Callable[[], list[_T]],
        predicate: Callable[[list[_T]], bool],
        *,
        timeout: float,
        what: str,
    ) -> list[_T]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(current())):
                if self._error is not None:
                    raise RuntimeError("the supervisor failed") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout:g}s; {what}: {current()}; {self._seen()}"
                    )
                self._changed.wait(min(left, 0.5))
            return list(current())

    def _seen(self) -> str:
        """What the supervisor last said of each pod it saw, and when its control loop last
        turned (a timeout's context: no pod seen, pods without an IP, a stuck loop)."""
        words = "; ".join(f"{pod}: {word}" for pod, word in sorted(self._last_word.items()))
        return (
            f"pods seen: {words or 'none'}; control loop last turned "
            f"{time.monotonic() - self._turned_at:.1f}s ago, {self._events.qsize()} events queued"
        )

    # -------------------------------------------------------------- kube calls
    def _list(self) -> tuple[list[JSON], str]:
        kwargs: dict[str, Any] = {"label_selector": self.label_selector, "_preload_content": False}
        if self.namespace:
            resp = self._core.list_namespaced_pod(self.namespace, **kwargs)
        else:
            resp = self._core.list_pod_for_all_namespaces(**kwargs)
        body: JSON = json.loads(resp.data)
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def _open_watch(self, rv: str) -> Any:
        kwargs: dict[str, Any] = {
            "label_selector": self.label_selector,
            "watch": True,
            "resource_version": rv,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_TIMEOUT_SECONDS,
            "_preload_content": False,
            "_request_timeout": (10, WATCH_TIMEOUT_SECONDS + 30),
        }
        if self.namespace:
            return self._core.list_namespaced_pod(self.namespace, **kwargs)
        return self._core.list_pod_for_all_namespaces(**kwargs)

    def _watch_loop(self, rv: str) -> None:
        while not self._stopping.is_set():
            try:
                rv = self._watch_once(rv)
            except Exception as err:
                if self._stopping.is_set():
                    return
                log.warning("pod watch failed (%s); listing again", err)
                time.sleep(1.0)
                try:
                    items, rv = self._list()
                except Exception as list_err:
                    log.warning("pod list failed: %s", list_err)
                    continue
                self._events.put(("SYNC", items))

    def _watch_once(self, rv: str) -> str:
        resp = self._open_watch(rv)
        with self._resp_lock:
            self._watch_resp = resp
        try:
            buffer = b""
            for chunk in resp.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise RuntimeError(f"watch error: {obj.get('message', obj)}")
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._events.put((str(kind), obj))
        finally:
            with self._resp_lock:
                self._watch_resp = None
            resp.release_conn()
        return rv

    def _secret_value(
        self,
        *,
        namespace: str,
        name: str,
        key: str,
        without: str = "the simulator runs without an API key",
    ) -> str | None:
        try:
            resp = self._core.read_namespaced_secret(name, namespace, _preload_content=False)
            data = (json.loads(resp.data).get("data") or {}).get(key)
        except Exception as err:
            log.warning(
                "cannot read Secret %s/%s (%s); %s",
                namespace,
                name,
                getattr(err, "status", err),
                without,
            )
            return None
        if data is None:
            log.warning("Secret %s/%s has no key %r; %s", namespace, name, key, without)
            return None
        return base64.b64decode(data).decode()

    def _configmap_value(self, *, namespace: str, ref: ConfigMapKey, what: str) -> str | None:
        try:
            resp = self._core.read_namespaced_config_map(
                ref.name, namespace, _preload_content=False
            )
            body = json.loads(resp.data)
        except Exception as err:
            log.warning(
                "cannot read ConfigMap %s/%s (%s) for the %s",
                namespace,
                ref.name,
                getattr(err, "status", err),
                what,
            )
            return None
        data = body.get("data") or {}
        if ref.key in data:
            return str(data[ref.key])
        binary = (body.get("binaryData") or {}).get(ref.key)
        if binary is not None:
            return base64.b64decode(binary).decode(errors="replace")
        log.warning("ConfigMap %s/%s has no key %r (the %s)", namespace, ref.name, ref.key, what)
        return None

    def _runtime_sources(self, spec: PodSim) -> tuple[str, str, str | None]:
        """The pod's runtime config (text and origin) and custom prompt, read from its
        ConfigMaps. Raises RuntimeSetupError."""
        source = spec.runtime_config_source
        if source is None:
            raise RuntimeSetupError(f"no runtime config mounted at {spec.runtime_config_path}")
        text = self._configmap_value(namespace=spec.namespace, ref=source, what="runtime config")
        if text is None:
            raise RuntimeSetupError("runtime config unavailable")
        origin = f"ConfigMap {spec.namespace}/{source.name} key {source.key}"
        custom: str | None = None
        prompt_path = custom_prompt_path(parse_config(text, source=origin))
        if prompt_path is not None:
            prompt_ref = configmap_key_for(spec.config_maps, prompt_path)
            if prompt_ref is None:
                raise RuntimeSetupError(
                    f"the custom system prompt {prompt_path} is not mounted from a ConfigMap"
                )
            custom = self._configmap_value(
                namespace=spec.namespace, ref=prompt_ref, what="custom system prompt"
            )
            if custom is None:
                raise RuntimeSetupError(f"the custom system prompt {prompt_path} is missing")
        return text, origin, custom

    def _runtime_files(self, proc: _Proc) -> RuntimeFiles | None:
        """The runtime middleware's files for ``proc`` (None: the plain simulator runs)."""
        spec = proc.sim
        if not self.runtime_middleware or "--middleware" in self.sim_args:
            return None
        where = f"{spec.namespace}/{spec.name}"
        if spec.runtime_config_source is None:
            log.info(
                "%s: no runtime config mounted at %s; plain simulator",
                where,
                spec.runtime_config_path,
            )
            return None
        fallback = "the plain simulator runs, without the runtime middleware"
        try:
            text, origin, custom = self._runtime_sources(spec)
            files = write_runtime_files(
                self.log_dir / f"{spec.namespace}.{spec.name}.runtime",
                config_text=text,
                source=origin,
                custom_prompt=custom,
            )
        except (RuntimeSetupError, OSError) as err:
            log.warning("%s: %s; %s", where, err, fallback)
            return None
        log.info(
            "%s: runtime middleware with the config of %s, system prompt %s",
            where,
            origin,
            files.system_prompt,
        )
        return files

    def _engine_files(self, proc: _Proc) -> EngineFiles:
        """The real engine's config for ``proc``'s pod; raises RuntimeSetupError or OSError."""
        spec = proc.sim
        assert self._install is not None
        text, origin, custom = self._runtime_sources(spec)
        files = prepare(
            self.log_dir / f"{spec.namespace}.{spec.name}.engine",
            install=self._install,
            config_text=text,
            source=origin,
            host=spec.ip,
            port=spec.port,
            custom_prompt=custom,
            overrides=self.real_engine_overrides,
        )
        log.info(
            "%s/%s: real engine with the config of %s (changed: %s), system prompt %s",
            spec.namespace,
            spec.name,
            origin,
            "; ".join(files.notes) or "nothing",
            files.system_prompt,
        )
        return files

    def _node_gpu(self, node: str | None) -> tuple[str, int | None]:
        if not node:
            return DEFAULT_GPU, None
        if node not in self._nodes:
            try:
                resp = self._core.read_node(node, _preload_content=False)
                labels = (json.loads(resp.data).get("metadata") or {}).get("labels") or {}
                memory = labels.get(GPU_MEMORY_LABEL)
                self._nodes[node] = (
                    str(labels.get(GPU_PRODUCT_LABEL) or DEFAULT_GPU),
                    int(memory) if memory and str(memory).isdigit() else None,
                )
            except Exception as err:
                log.warning(
                    "cannot read node %s (%s); assuming %s",
                    node,
                    getattr(err, "status", err),
                    DEFAULT_GPU,
                )
                self._nodes[node] = (DEFAULT_GPU, None)
        return self._nodes[node]

    # ----------------------------------------------------------- control loop
    def _control_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    kind, obj = self._events.get(timeout=TICK_SECONDS)
                except queue.Empty:
                    pass
                else:
                    self._handle(kind, obj=obj)
                    while True:  # apply every queued event before the tick
                        try:
                            kind, obj = self._events.get_nowait()
                        except queue.Empty:
                            break
                        self._handle(kind, obj=obj)
                self._tick()
                self._publish()
                self._turned_at = time.monotonic()
        except BaseException as err:
            self._error = err
            log.exception("supervisor control loop failed")
        finally:
            self._shutdown_all()
            self._publish()

    def _handle(self, kind: str, *, obj: Any) -> None:
        if kind == "SYNC":
            seen = {str(p["metadata"]["uid"]) for p in obj}
            for uid in [u for u in self._pods if u not in seen]:
                pod = self._pods.pop(uid)
                self._reconcile(uid, pod=pod)
            for pod in obj:
                uid = str(pod["metadata"]["uid"])
                self._pods[uid] = pod
                self._reconcile(uid, pod=pod)
            return
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        if kind == "DELETED":
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = obj
        self._reconcile(uid, pod=obj)

    def _report(self, pod: JSON, message: str, *, level: int = logging.INFO) -> None:
        """Log a pod's situation once (until it changes)."""
        key = str((pod.get("metadata") or {}).get("uid", ""))
        if self._reported.get(key) != message:
            self._reported[key] = message
            with self._snap_lock:
                self._last_word[pod_key(pod)] = message
            log.log(level, "%s: %s", pod_key(pod), message)

    def _reconcile(self, uid: str, *, pod: JSON) -> None:
        if is_router_pod(pod):
            self._reconcile_router(uid, pod=pod)
            return
        current = self._procs.get(uid)
        live = self._pods.get(uid)
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            if current is not None:
                self._terminate(current, pod=pod)
            if live is None:
                self._reported.pop(uid, None)
                self._label_retry.pop(uid, None)
            self._release_slot(uid)
            return
        self._claim_slot(uid, live)
        self._note_early_ready(uid, live)
        decision: Decision = decide(live)
        if decision.sim is None:
            level = logging.WARNING if decision.refused else logging.INFO
            self._report(live, f"no simulator: {decision.reason}", level=level)
            if current is not None:
                self._kill(current, reason=decision.reason)
            return
        spec = decision.sim
        if current is not None and current.spec.fingerprint() != spec.fingerprint():
            self._kill(current, reason="its configuration changed")
            current = None
        if current is None:
            real = self._slot is not None and self._slot.uid == uid
            proc = _Proc(
                spec=spec,
                log_path=self.log_dir / f"{spec.namespace}.{spec.name}.log",
                healthy=not real and (spec.healthy or spec.readiness_gated),
                real=real,
            )
            self._procs[uid] = proc
            what = "real engine" if real else "simulator"
            self._report(live, f"{what} wanted on {spec.ip}:{spec.port}")
            for warning in spec.warnings:
                log.warning("%s: %s", pod_key(live), warning)
            return
        current.spec = spec
        if current.real or spec.readiness_gated:
            return  # its labels are the supervisor's readiness verdict, not an input
        if current.healthy != spec.healthy:
            current.healthy = spec.healthy
            self._report(live, f"/health {'ok' if spec.healthy else 'failing (sim-unready)'}")
            self._apply_health(current)

    def _router_procs(self, uid: str) -> list[_Proc]:
        """The container processes of router pod ``uid`` (not those being stopped)."""
        return [
            p
            for p in self._procs.values()
            if isinstance(p.spec, RouterContainer) and p.spec.uid == uid
        ]

    def _reconcile_router(self, uid: str, *, pod: JSON) -> None:
        """A router pod: one process per container, never a simulator."""
        current = {p.key: p for p in self._router_procs(uid)}
        live = self._pods.get(uid)
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            for proc in current.values():
                self._terminate(proc, pod=pod)
            if live is None:
                self._reported.pop(uid, None)
                self._label_retry.pop(uid, None)
                self._pod_kubeconfigs.pop(uid, None)
            return
        decision = decide_router(live)
        wanted = {c.key: c for c in decision.containers}
        for key, proc in current.items():
            spec = wanted.get(key)
            if spec is None:
                self._kill(proc, reason=decision.reason or "its container is not running")
            elif proc.spec.fingerprint() != spec.fingerprint():
                self._kill(proc, reason="its configuration changed")
            else:
                proc.spec = spec
        if not decision.containers:
            level = logging.WARNING if decision.refused else logging.INFO
            self._report(live, f"router pod, no process: {decision.reason}", level=level)
            return
        started = []
        for key, spec in wanted.items():
            if key in self._procs:
                continue
            self._procs[key] = _Proc(
                spec=spec,
                log_path=self.log_dir / f"{spec.namespace}.{spec.name}.{spec.container}.log",
            )
            started.append(spec.container)
            for note in spec.notes:
                log.warning("%s: container %s: %s", pod_key(live), spec.container, note)
        skipped = "".join(f"; {name}: {why}" for name, why in decision.skipped)
        running = ", ".join(f"{c.container} on {c.ip}:{c.port}" for c in decision.containers)
        self._report(live, f"router pod, processes wanted: {running}{skipped}")

    # ------------------------------------------------------------- real engine
    def _claim_slot(self, uid: str, pod: JSON) -> None:
        """Give the real engine to ``pod`` if it is selected, has no process yet and the
        engine is free; label it unready at once, before kwok can show it Ready."""
        if self.real_engine is None or self._slot is not None or uid in self._procs:
            return
        meta = pod.get("metadata") or {}
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        if not self.real_engine(pod):
            return
        self._slot = _RealSlot(
            uid=uid, namespace=str(meta.get("namespace", "")), name=str(meta.get("name", ""))
        )
        gated = readiness_gated(pod)
        log.info(
            "%s: the real engine will serve this pod (phase %s); %s until its readiness probe "
            "passes",
            pod_key(pod),
            (pod.get("status") or {}).get("phase") or "unknown",
            "not Ready (E2E_SIM_READINESS=supervisor)"
            if gated
            else f"labelled {SIM_UNREADY_LABEL}=true (racing kwok's pod-ready stage: set "
            "E2E_SIM_READINESS=supervisor in the pod to be sure)",
        )
        self._sync_readiness(uid, pod)

    def _release_slot(self, uid: str) -> None:
        """Free the real engine's slot once ``uid``'s pod is gone and its engine has exited."""
        if self._slot is None or self._slot.uid != uid:
            return
        if uid in self._pods and not (self._pods[uid].get("metadata") or {}).get(
            "deletionTimestamp"
        ):
            return
        if uid in self._procs or any(p.spec.uid == uid and p.real for p in self._dying):
            return
        log.info("%s/%s: the real engine is free again", self._slot.namespace, self._slot.name)
        self._slot = None

    def _plays_readiness(self, uid: str, pod: JSON) -> bool:
        """The supervisor decides this pod's readiness: it is gated, or the real engine's."""
        return readiness_gated(pod) or (self._slot is not None and self._slot.uid == uid)

    def _probe_passes(self, uid: str, pod: JSON) -> bool:
        """The pod's readiness probe passes; a router pod's: every container's that has one
        (one without a probe: its process serves), as the kubelet decides a pod Ready."""
        if is_router_pod(pod):
            procs = self._router_procs(uid)
            return bool(procs) and all(
                p.main_alive()
                and (p.prober.ready if p.prober is not None else p.state == "serving")
                for p in procs
            )
        proc = self._procs.get(uid)
        return (
            proc is not None and proc.main_alive() and proc.prober is not None and proc.prober.ready
        )

    def _sync_readiness(self, uid: str, pod: JSON) -> None:
        """Show the readiness probe's verdict on the pod, as labels kwok's stages act on.

        A gated pod (``E2E_SIM_READINESS=supervisor``, or any router pod) gets
        ``sim-ready=true`` when the probe first passes, then ``sim-unready=true`` while it
        fails. The real engine's pod without the gate carries ``sim-unready=true`` while the
        probe has not passed.
        """
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return
        ready = self._probe_passes(uid, pod)
        labels = meta.get("labels") or {}
        wanted: dict[str, str | None]
        if readiness_gated(pod):
            was_ready = labels.get(SIM_READY_LABEL) == "true"
            wanted = {
                SIM_READY_LABEL: "true" if ready or was_ready else None,
                SIM_UNREADY_LABEL: "true" if was_ready and not ready else None,
            }
        else:
            wanted = {SIM_UNREADY_LABEL: None if ready else "true"}
        if all(labels.get(k) == v for k, v in wanted.items()):
            return
        now = time.monotonic()
        if now < self._label_retry.get(uid, 0.0):
            return
        self._label_retry[uid] = now + 1.0  # until the watch shows the change
        slot = self._slot
        if ready and slot is not None and slot.uid == uid:
            slot.engine_was_ready = True
        try:
            self._core.patch_namespaced_pod(
                str(meta.get("name", "")),
                str(meta.get("namespace", "")),
                {"metadata": {"labels": wanted}},
                _content_type="application/merge-patch+json",
            )
        except Exception as err:
            log.warning(
                "%s: cannot set its readiness labels %s (%s)",
                pod_key(pod),
                wanted,
                getattr(err, "status", err),
            )
            return
        log.info(
            "%s: readiness probe %s: labels %s",
            pod_key(pod),
            "passed" if ready else "not passed",
            ", ".join(f"{k}={v or '(removed)'}" for k, v in wanted.items()),
        )

    def _note_early_ready(self, uid: str, pod: JSON) -> None:
        """Remember (and say) when the cluster shows the pod Ready before its engine was."""
        slot = self._slot
        if slot is None or slot.uid != uid or slot.ready_before_engine or slot.engine_was_ready:
            return
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            slot.ready_before_engine = True
            log.warning(
                "%s: the pod showed Ready before its real engine was (kwok's stage came first)",
                pod_key(pod),
            )

    @staticmethod
    def _apply_health(proc: _Proc) -> None:
        """Signal a health change, only once the simulator has its handlers (it serves)."""
        if proc.real:
            return  # vLLM has no such handlers: SIGUSR1 would end it
        if proc.state == "serving" and proc.applied_healthy != proc.healthy:
            proc.signal(signal.SIGUSR2 if proc.healthy else signal.SIGUSR1)
            proc.applied_healthy = proc.healthy

    def _terminate(self, proc: _Proc, *, pod: JSON) -> None:
        """The kubelet's stop: preStop sleep, SIGTERM, SIGKILL at the end of the grace period."""
        self._procs.pop(proc.key, None)
        if not proc.alive():
            proc.end_helpers()
            return
        container = proc.spec.container if isinstance(proc.spec, RouterContainer) else None
        plan = termination(pod, container)
        now = time.monotonic()
        prestop = plan.prestop_s if self.honor_prestop and proc.state == "serving" else 0.0
        proc.term_at = now + min(prestop, plan.grace_s)
        proc.kill_at = max(now + plan.grace_s, proc.term_at + 2.0)
        proc.deleted_at, proc.prestop_s, proc.grace_s = now, prestop, plan.grace_s
        proc.state = "terminating"
        self._dying.append(proc)
        log.info(
            "%s/%s deleted: SIGTERM in %.0fs, SIGKILL in %.0fs (%s pid %s)",
            proc.spec.namespace,
            proc.spec.name,
            proc.term_at - now,
            proc.kill_at - now,
            proc.what,
            proc.pid,
        )

    def _kill(self, proc: _Proc, *, reason: str) -> None:
        self._procs.pop(proc.key, None)
        if not proc.alive():
            proc.end_helpers()
            return
        log.info(
            "%s/%s: stopping its %s (%s)", proc.spec.namespace, proc.spec.name, proc.what, reason
        )
        proc.signal(signal.SIGKILL)
        proc.state = "terminating"
        proc.term_at = proc.kill_at = time.monotonic()
        proc.termed = True
        self._dying.append(proc)

    def _address_busy(self, proc: _Proc) -> bool:
        if proc.spec.port is None:
            return False
        address = (proc.spec.ip, proc.spec.port)
        others = [*self._dying, *(p for p in self._procs.values() if p is not proc)]
        return any((o.spec.ip, o.spec.port) == address and o.alive() for o in others)

    @staticmethod
    def _kill_orphans(proc: _Proc) -> None:
        """The container's PID 1 has exited: its other processes (vLLM's engine core and
        worker) go with it, as when a container ends."""
        if proc.pgid is not None and not proc.main_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pgid, signal.SIGKILL)

    def _record_exit(self, proc: _Proc) -> None:
        exited_at = proc.exited_at if proc.exited_at is not None else time.monotonic()
        record = ProcessExit(
            namespace=proc.spec.namespace,
            pod=proc.spec.name,
            uid=proc.spec.uid,
            real_engine=proc.real,
            pid=proc.pid,
            returncode=proc.popen.returncode if proc.popen is not None else None,
            deleted_at=proc.deleted_at,
            prestop_s=proc.prestop_s,
            grace_s=proc.grace_s,
            sigterm_at=proc.sigterm_at,
            exited_at=exited_at,
            sigkilled=proc.sigkilled,
            container=proc.spec.container if isinstance(proc.spec, RouterContainer) else None,
        )
        with self._snap_lock:
            self._exits.append(record)
        timing = []
        if record.drain_seconds is not None:
            timing.append(f"{record.drain_seconds:.1f}s after SIGTERM")
        if record.grace_left_seconds is not None:
            timing.append(
                f"{record.grace_left_seconds:.1f}s before the end of its {record.grace_s:.0f}s "
                "grace period"
            )
        log.info(
            "%s/%s: %s exited (%s)%s%s",
            proc.spec.namespace,
            proc.spec.name,
            proc.what,
            record.returncode,
            ", " if timing else "",
            ", ".join(timing),
        )

    def _tick(self) -> None:
        now = time.monotonic()
        for proc in list(self._dying):
            if proc.exited_at is None and not proc.main_alive():
                proc.exited_at = now
            self._kill_orphans(proc)
            if not proc.alive():
                self._dying.remove(proc)
                self._record_exit(proc)
                proc.end_helpers()
                self._release_slot(proc.spec.uid)
                continue
            if proc.term_at is not None and now >= proc.term_at and not proc.termed:
                proc.termed = True
                proc.signal(signal.SIGTERM)
            if proc.kill_at is not None and now >= proc.kill_at:
                proc.signal(signal.SIGKILL)
        for proc in list(self._procs.values()):
            if proc.popen is not None and not proc.main_alive():
                self._kill_orphans(proc)
                if proc.prober is not None:
                    proc.prober.stop()
                delay = _back_off(proc)
                log.warning(
                    "%s/%s: %s exited with %s; restarting in %.0fs; last lines:\n%s",
                    proc.spec.namespace,
                    proc.spec.name,
                    proc.what,
                    proc.popen.returncode,
                    delay,
                    _tail(proc.log_path),
                )
                proc.popen = None
            if (
                proc.popen is None
                and now >= proc.next_start
                and not self._address_busy(proc)
                and not proc.alive()  # a real engine's group is gone too
            ):
                self._spawn(proc)
            elif proc.state == "starting" and _listening(proc):
                proc.state = "serving"
                self._apply_health(proc)
                log.info(
                    "%s/%s: %s serving on %s:%s (pid %s, %.1fs after start)",
                    proc.spec.namespace,
                    proc.spec.name,
                    proc.what,
                    proc.spec.ip,
                    proc.spec.port,
                    proc.pid,
                    now - proc.started_at,
                )
        for uid, pod in list(self._pods.items()):
            if self._plays_readiness(uid, pod):
                self._sync_readiness(uid, pod)

    def _api_key(self, spec: PodSim) -> str | None:
        key = spec.api_key
        if key is None and spec.api_key_secret is not None:
            key = self._secret_value(
                namespace=spec.namespace,
                name=spec.api_key_secret.name,
                key=spec.api_key_secret.key,
            )
        return key

    def _spawn_real(self, proc: _Proc) -> None:
        """Start ``magistral-runtime serve`` of the engine venv for the pod (and its prober)."""
        from e2e.real_engine.serve import _start_reaper, engine_environ

        spec = proc.sim
        assert self._install is not None
        proc.end_helpers()  # those of the previous run, if any (its group is gone)
        key = self._api_key(spec)
        try:
            files = self._engine_files(proc)
        except (RuntimeSetupError, OSError) as err:
            # A real pod would not start either (its volume or config is missing): retry.
            delay = _back_off(proc)
            log.warning(
                "%s/%s: cannot start the real engine: %s; retrying in %.0fs",
                spec.namespace,
                spec.name,
                err,
                delay,
            )
            return
        base = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        base["PYTHONUNBUFFERED"] = "1"
        env = engine_environ(self._install.env, api_key=key or None, base=base)
        proc.popen = self._start_process(
            proc,
            files.argv,
            cwd=files.directory,
            env=env,
            note=f"real engine; API key: {'set' if key else 'none'}; config {files.config_path}; "
            f"changed: {'; '.join(files.notes)}",
        )
        proc.pgid = proc.popen.pid
        if self.die_with_parent:
            proc.reaper = _start_reaper(proc.pgid)
        proc.engine = files
        proc.runtime = None
        proc.state = "starting"
        proc.started_at = time.monotonic()
        proc.prober = ReadinessProber(
            base_url=spec_url(spec), probe=spec.readiness, name=f"{spec.namespace}.{spec.name}"
        ).start()
        log.info(
            "%s/%s: real engine pid %d on %s:%d (%s; readiness probe %s every %gs)",
            spec.namespace,
            spec.name,
            proc.popen.pid,
            spec.ip,
            spec.port,
            "API key set" if key else "no API key",
            spec.readiness.path,
            spec.readiness.period_s,
        )

    def _start_process(
        self, proc: _Proc, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], note: str
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, its output appended to the pod's log after a
        line with the command and ``note``; SIGKILL when the supervisor's thread dies
        (``die_with_parent``)."""
        with proc.log_path.open("ab") as out:
            out.write(f"# {' '.join(argv)}  ({note})\n".encode())
            out.flush()
            return subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )

    def _pod_dir(self, spec: RouterContainer) -> Path:
        """A directory of the router pod's own: its kubeconfig; the processes' working dir."""
        path = self.log_dir / f"{spec.namespace}.{spec.name}.pod"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _pod_kubeconfig(self, spec: RouterContainer) -> Path:
        """The kubeconfig a router pod's containers get: ``router_kubeconfig``, else one with a
        token of the pod's ServiceAccount bound to the pod (TokenRequest API), which the
        kubelet would mount; the API server's address and CA are the supervisor's.

        Raises on a failed TokenRequest (the ServiceAccount is missing, say)."""
        if self.router_kubeconfig is not None:
            return self.router_kubeconfig
        known = self._pod_kubeconfigs.get(spec.uid)
        if known is not None and known.exists():
            return known
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": spec.name,
                    "uid": spec.uid,
                },
            },
        }
        resp = self._core.create_namespaced_service_account_token(
            spec.service_account, spec.namespace, request, _preload_content=False
        )
        token = str(json.loads(resp.data)["status"]["token"])
        admin = yaml.safe_load(self.kubeconfig.read_text())
        context = next(
            c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"]
        )
        cluster = dict(next(c for c in admin["clusters"] if c["name"] == context["cluster"]))
        server = dict(cluster["cluster"])
        if "certificate-authority" in server:  # relative to the kubeconfig's directory
            server["certificate-authority"] = str(
                self.kubeconfig.parent / server["certificate-authority"]
            )
        user = f"system:serviceaccount:{spec.namespace}:{spec.service_account}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster["name"], "cluster": server}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {
                        "cluster": cluster["name"],
                        "user": user,
                        "namespace": spec.namespace,
                    },
                }
            ],
            "current-context": "pod",
        }
        path = self._pod_dir(spec) / "kubeconfig"
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)
        self._pod_kubeconfigs[spec.uid] = path
        return path

    def _container_env(self, spec: RouterContainer) -> dict[str, str]:
        """The process's environment: the supervisor's (without ``KUBECONFIG`` and the API
        key), ``HOSTNAME`` = the pod's name, then the container's variables (references read
        through the API now) and ``KUBECONFIG``. Raises when the kubeconfig cannot be made."""
        env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "KUBECONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        env["HOSTNAME"] = spec.name
        env.update(spec.env)
        where = f"{spec.namespace}/{spec.name}: container {spec.container}"
        for ref in spec.env_refs:
            without = f"{where}: ${ref.name} is unset"
            value: str | None = None
            if ref.secret is not None:
                value = self._secret_value(
                    namespace=spec.namespace,
                    name=ref.secret.name,
                    key=ref.secret.key,
                    without=without,
                )
            elif ref.config_map is not None:
                value = self._configmap_value(
                    namespace=spec.namespace, ref=ref.config_map, what=f"${ref.name} of {where}"
                )
            if value is not None:
                env[ref.name] = value
        if spec.automount_token:
            env["KUBECONFIG"] = str(self._pod_kubeconfig(spec))
        return env

    def _spawn_container(self, proc: _Proc, spec: RouterContainer) -> None:
        """Start a router pod's container: its command from ``bin_dir``, its args as mapped."""
        where = f"{spec.namespace}/{spec.name}: container {spec.container}"
        command = spec.command
        exe = Path(command) if "/" in command else self.bin_dir / command
        if not (exe.is_file() and os.access(exe, os.X_OK)):
            delay = _back_off(proc)
            log.error(
                "%s: %s is not an executable in %s; retrying in %.0fs",
                where,
                command,
                self.bin_dir,
                delay,
            )
            return
        try:
            env = self._container_env(spec)
        except Exception as err:
            delay = _back_off(proc)
            log.warning(
                "%s: no kubeconfig for ServiceAccount %s (%s); retrying in %.0fs",
                where,
                spec.service_account,
                getattr(err, "status", err),
                delay,
            )
            return
        argv = [str(exe), *spec.argv[1:]]
        proc.popen = self._start_process(
            proc,
            argv,
            cwd=self._pod_dir(spec),
            env=env,
            note=f"container {spec.container}; KUBECONFIG {env.get('KUBECONFIG', 'none')}",
        )
        proc.pgid = proc.popen.pid
        proc.argv = tuple(argv)
        proc.kubeconfig = env.get("KUBECONFIG")
        proc.state = "starting"
        proc.started_at = time.monotonic()
        proc.end_helpers()  # the previous run's prober
        if spec.readiness is not None and spec.readiness_port is not None:
            proc.prober = ReadinessProber(
                base_url=f"http://{spec.ip}:{spec.readiness_port}",
                probe=spec.readiness,
                name=f"{spec.namespace}.{spec.name}.{spec.container}",
                health_path=None,
            ).start()
        log.info("%s: pid %d: %s", where, proc.popen.pid, " ".join(argv))

    def _spawn(self, proc: _Proc) -> None:
        if isinstance(proc.spec, RouterContainer):
            self._spawn_container(proc, proc.spec)
            return
        if proc.real:
            self._spawn_real(proc)
            return
        spec = proc.sim
        key = self._api_key(spec)
        gpu, memory = self._node_gpu(spec.node_name)
        runtime = self._runtime_files(proc)
        argv = [self.python, "-m", "e2e.engine.simulator", *spec.sim_args]
        if runtime is not None:
            argv += ["--middleware", MIDDLEWARE]
        argv += ["--host", spec.ip, "--port", str(spec.port), "--gpu", gpu]
        if memory:
            argv += ["--gpu-memory-mib", str(memory)]
        if spec.startup_delay_s > 0 and proc.restarts == 0:
            argv += ["--startup-delay", f"{spec.startup_delay_s:g}"]
        if not proc.healthy:
            argv += ["--start-unhealthy"]
        proc.applied_healthy = proc.healthy
        argv += self.sim_args
        argv += spec.knob_args  # a revision's own knobs win over the supervisor's defaults
        env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "KUBECONFIG")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        if runtime is not None:
            for name in CLEARED_ENV:
                env.pop(name, None)
            env.update(runtime.env)
        env.update(self.sim_env)
        if key:
            env[API_KEY_ENV] = key
        mw = f"{MIDDLEWARE}, {runtime.config_path}" if runtime else "none"
        proc.popen = self._start_process(
            proc,
            argv,
            cwd=REPO_ROOT,
            env=env,
            note=f"API key: {'set' if key else 'none'}; runtime middleware: {mw}",
        )
        proc.state = "starting"
        proc.started_at = time.monotonic()
        proc.runtime = runtime
        proc.end_helpers()  # the previous run's prober
        if spec.readiness_gated:
            proc.prober = ReadinessProber(
                base_url=spec_url(spec), probe=spec.readiness, name=f"{spec.namespace}.{spec.name}"
            ).start()
        log.info(
            "%s/%s: simulator pid %d on %s:%d (%s, %s)",
            spec.namespace,
            spec.name,
            proc.popen.pid,
            spec.ip,
            spec.port,
            "API key set" if key else "no API key",
            "runtime middleware" if runtime else "no middleware",
        )

    def _publish(self) -> None:
        infos: list[SimulatorInfo] = []
        routers: list[RouterProcessInfo] = []
        for proc in [*self._procs.values(), *self._dying]:
            prober = proc.prober
            if isinstance(proc.spec, RouterContainer):
                routers.append(_router_info(proc, proc.spec))
                continue
            spec = proc.sim
            infos.append(
                SimulatorInfo(
                    namespace=spec.namespace,
                    pod=spec.name,
                    uid=spec.uid,
                    ip=spec.ip,
                    port=spec.port,
                    pid=proc.pid if proc.alive() else None,
                    state=proc.state,
                    served_model_name=spec.served_model_name,
                    api_key=bool(spec.api_key or spec.api_key_secret),
                    healthy=proc.healthy,
                    restarts=proc.restarts,
                    log_path=str(proc.log_path),
                    runtime_middleware=proc.runtime is not None or proc.real,
                    real_engine=proc.real,
                    health_seconds=None
                    if prober is None
                    else _since(proc.started_at, prober.health_at),
                    ready_seconds=None
                    if prober is None
                    else _since(proc.started_at, prober.ready_at),
                    ready_before_engine=bool(
                        proc.real
                        and self._slot is not None
                        and self._slot.uid == spec.uid
                        and self._slot.ready_before_engine
                    ),
                )
            )
        with self._changed:
            if infos != self._snapshot or routers != self._router_snapshot:
                self._snapshot = infos
                self._router_snapshot = routers
                self._changed.notify_all()

    def _shutdown_all(self) -> None:
        everything = [*self._procs.values(), *self._dying]
        procs = [p for p in everything if p.alive()]
        self._procs.clear()
        for proc in procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_seconds
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in procs:
            proc.signal(signal.SIGKILL)
        for proc in procs:
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log.error("simulator pid %s did not exit", proc.pid)
        deadline = time.monotonic() + 10
        for proc in procs:
            while proc.alive() and time.monotonic() < deadline:  # vLLM's children
                proc.signal(signal.SIGKILL)
                time.sleep(0.05)
            if proc.alive():
                log.error("real engine process group %s did not exit", proc.pgid)
        for proc in everything:
            proc.end_helpers()
        self._dying.clear()
        self._slot = None


def _router_info(proc: _Proc, spec: RouterContainer) -> RouterProcessInfo:
    prober = proc.prober
    return RouterProcessInfo(
        namespace=spec.namespace,
        pod=spec.name,
        uid=spec.uid,
        container=spec.container,
        ip=spec.ip,
        port=spec.port,
        pid=proc.pid if proc.alive() else None,
        state=proc.state,
        restarts=proc.restarts,
        log_path=str(proc.log_path),
        argv=proc.argv,
        ready=None if spec.readiness is None else bool(prober is not None and prober.ready),
        ready_seconds=None if prober is None else _since(proc.started_at, prober.ready_at),
        kubeconfig=proc.kubeconfig,
    )


def spec_url(spec: PodSim) -> str:
    return f"http://{spec.ip}:{spec.port}"


def _since(start: float, then: float | None) -> float | None:
    return None if then is None else round(then - start, 1)


def _back_off(proc: _Proc) -> float:
    """CrashLoopBackOff: the next start of ``proc`` 1 s, 2 s, 4 s … (at most 30 s) from now."""
    proc.restarts += 1
    delay = min(BACKOFF_MAX_SECONDS, 2.0 ** (proc.restarts - 1))
    proc.next_start = time.monotonic() + delay
    proc.state = "backoff"
    return delay


def _listening(proc: _Proc) -> bool:
    """A starting process serves: its port accepts connections (the real engine: ``/health``
    answered; a container without a known port: it runs)."""
    if proc.real:
        return proc.prober is not None and proc.prober.health_at is not None
    if proc.spec.port is None:
        return True
    return _accepts(ip=proc.spec.ip, port=proc.spec.port)


def _accepts(*, ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.05):
            return True
    except OSError:
        return False


def _tail(path: Path, *, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.engine.supervisor",
        description="Run a simulated vLLM replica on the IP of every matching pod.",
    )
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--selector", default=MANAGED_BY_SELECTOR, help="pod label selector")
    parser.add_argument("--namespace", default=None, help="default: all namespaces")
    parser.add_argument("--log-dir", type=Path, default=None, help="simulator logs")
    parser.add_argument("--no-prestop", action="store_true", help="SIGTERM deleted pods at once")
    parser.add_argument(
        "--no-runtime-middleware",
        action="store_true",
        help="plain simulators, without the runtime middleware of the pods' runtime config",
    )
    parser.add_argument(
        "--real-engine",
        nargs="?",
        const="*",
        default=None,
        metavar="GLOB",
        help="serve one pod at a time whose namespace/name matches GLOB (default: any) with the "
        "real vLLM engine (e2e/real_engine; installs its venv on first use)",
    )
    parser.add_argument(
        "--real-engine-shutdown-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="the real engine's shutdown_timeout_seconds instead of the pod's",
    )
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=None,
        help="where router pods' commands (vllm-router, magistral-runtime) are found "
        "(default: the directory of this Python, the repo venv's bin)",
    )
    parser.add_argument(
        "--router-kubeconfig",
        type=Path,
        default=None,
        help="the $KUBECONFIG of router pods' containers (default: a token of the pod's "
        "ServiceAccount, as the kubelet mounts it)",
    )
    parser.add_argument(
        "sim_args", nargs=argparse.REMAINDER, help="-- then flags for every simulator"
    )
    ns = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    extra = ns.sim_args[1:] if ns.sim_args[:1] == ["--"] else ns.sim_args
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    real_engine: Callable[[JSON], bool] | None = None
    if ns.real_engine is not None:
        pattern = str(ns.real_engine)

        def real_engine(pod: JSON) -> bool:
            return fnmatch.fnmatchcase(pod_key(pod), pattern)

    overrides: dict[str, Any] = {}
    if ns.real_engine_shutdown_timeout is not None:
        overrides["shutdown_timeout_seconds"] = ns.real_engine_shutdown_timeout
    supervisor = Supervisor(
        kubeconfig=ns.kubeconfig,
        label_selector=ns.selector,
        namespace=ns.namespace,
        sim_args=extra,
        log_dir=ns.log_dir,
        honor_prestop=not ns.no_prestop,
        runtime_middleware=not ns.no_runtime_middleware,
        real_engine=real_engine,
        real_engine_overrides=overrides,
        bin_dir=ns.bin_dir,
        router_kubeconfig=ns.router_kubeconfig,
    )
    supervisor.start()
    try:
        while not done.wait(1.0):
            if supervisor.failed:
                return 1
    finally:
        supervisor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
