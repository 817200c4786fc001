"""Runs one simulated vLLM replica per pod: ``python -m e2e.engine.supervisor --kubeconfig K``.

It watches the pods matching a label selector (default: the operator's
``app.kubernetes.io/managed-by=magistral-operator``) and, for each pod kwok runs with a loopback
IP, starts ``python -m e2e.engine.simulator`` on ``podIP:<container port "http">`` with the
flags of the pod's ``vllm serve`` line (annotation ``magistral.dev/vllm-args``), the GPU of its
node and its API key (a literal ``VLLM_API_KEY`` or, read through the API, the Secret it refers
to). It plays the kubelet's part in the pod's lifecycle: a deleted pod's simulator gets the
preStop sleep, then SIGTERM (and drains for the ``--shutdown-timeout`` of its vLLM line), then
SIGKILL when the grace period ends; a pod that loses its IP or whose container stops running
loses its simulator at once; a simulator that dies while its pod runs is restarted with
back-off. Pod IPs outside 127.0.0.0/8 are refused.

A pod that mounts a runtime config from a ConfigMap (as the operator's pods do) gets the
project's runtime middleware, as ``magistral-runtime serve`` starts vLLM: the supervisor reads
the ConfigMap (and a custom system prompt's), writes them into a directory of the pod's own with
a simulated model cache (``runtime_files.py``), and starts the simulator with ``--middleware
magistral_runtime.middleware.MagistralMiddleware`` and ``$MAGISTRAL_RUNTIME_CONFIG``. Anything
missing is logged and the plain simulator runs; ``runtime_middleware=False`` turns it off.

From Python (for example a pytest fixture)::

    with Supervisor(kubeconfig=cluster.kubeconfig, sim_args=["--itl-ms", "2"]) as sup:
        sims = sup.wait_for(lambda s: len(serving(s)) == 3, timeout=60)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
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
from typing import Any

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
    pod_key,
    termination,
)
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

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def serving(sims: Sequence[SimulatorInfo]) -> list[SimulatorInfo]:
    """The simulators whose port accepts connections (pods not being deleted)."""
    return [s for s in sims if s.state == "serving"]


@dataclass(eq=False)
class _Proc:
    spec: PodSim
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

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, sig)


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
    ) -> None:
        """``sim_args`` are appended to every simulator's flags (they win), e.g.
        ``["--itl-ms", "2"]`` for fast tests; ``sim_env`` is added to their environment.
        ``honor_prestop``: wait a deleted pod's preStop sleep before SIGTERM, as the kubelet
        does. ``stop_grace_seconds``: on ``stop()``, how long simulators may drain before
        SIGKILL. ``runtime_middleware``: run the project's runtime middleware in the simulators
        of pods that mount a runtime config (it needs ConfigMap reads); not when ``sim_args``
        name a ``--middleware`` of their own.
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

    def wait_for(
        self, predicate: Callable[[list[SimulatorInfo]], bool], *, timeout: float = 60.0
    ) -> list[SimulatorInfo]:
        """Block until ``predicate(simulators())`` holds; TimeoutError with the last state."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._snapshot)):
                if self._error is not None:
                    raise RuntimeError("the supervisor failed") from self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"timed out after {timeout:g}s; simulators: {self._snapshot}"
                    )
                self._changed.wait(min(left, 0.5))
            return list(self._snapshot)

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

    def _secret_value(self, *, namespace: str, name: str, key: str) -> str | None:
        try:
            resp = self._core.read_namespaced_secret(name, namespace, _preload_content=False)
            data = (json.loads(resp.data).get("data") or {}).get(key)
        except Exception as err:
            log.warning(
                "cannot read Secret %s/%s (%s); the simulator runs without an API key",
                namespace,
                name,
                getattr(err, "status", err),
            )
            return None
        if data is None:
            log.warning(
                "Secret %s/%s has no key %r; running without an API key", namespace, name, key
            )
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

    def _runtime_files(self, proc: _Proc) -> RuntimeFiles | None:
        """The runtime middleware's files for ``proc`` (None: the plain simulator runs)."""
        spec = proc.spec
        if not self.runtime_middleware or "--middleware" in self.sim_args:
            return None
        where = f"{spec.namespace}/{spec.name}"
        source = spec.runtime_config_source
        if source is None:
            log.info(
                "%s: no runtime config mounted at %s; plain simulator",
                where,
                spec.runtime_config_path,
            )
            return None
        fallback = "the plain simulator runs, without the runtime middleware"
        text = self._configmap_value(namespace=spec.namespace, ref=source, what="runtime config")
        if text is None:
            log.warning("%s: runtime config unavailable; %s", where, fallback)
            return None
        origin = f"ConfigMap {spec.namespace}/{source.name} key {source.key}"
        custom: str | None = None
        try:
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
            log.log(level, "%s: %s", pod_key(pod), message)

    def _reconcile(self, uid: str, *, pod: JSON) -> None:
        current = self._procs.get(uid)
        live = self._pods.get(uid)
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            if current is not None:
                self._terminate(current, pod=pod)
            if live is None:
                self._reported.pop(uid, None)
            return
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
            proc = _Proc(
                spec=spec,
                log_path=self.log_dir / f"{spec.namespace}.{spec.name}.log",
                healthy=spec.healthy,
            )
            self._procs[uid] = proc
            self._report(live, f"simulator wanted on {spec.ip}:{spec.port}")
            return
        current.spec = spec
        if current.healthy != spec.healthy:
            current.healthy = spec.healthy
            self._report(live, f"/health {'ok' if spec.healthy else 'failing (sim-unready)'}")
            self._apply_health(current)

    @staticmethod
    def _apply_health(proc: _Proc) -> None:
        """Signal a health change, only once the simulator has its handlers (it serves)."""
        if proc.state == "serving" and proc.applied_healthy != proc.healthy:
            proc.signal(signal.SIGUSR2 if proc.healthy else signal.SIGUSR1)
            proc.applied_healthy = proc.healthy

    def _terminate(self, proc: _Proc, *, pod: JSON) -> None:
        """The kubelet's stop: preStop sleep, SIGTERM, SIGKILL at the end of the grace period."""
        self._procs.pop(proc.spec.uid, None)
        if not proc.alive():
            return
        plan = termination(pod)
        now = time.monotonic()
        prestop = plan.prestop_s if self.honor_prestop and proc.state == "serving" else 0.0
        proc.term_at = now + min(prestop, plan.grace_s)
        proc.kill_at = max(now + plan.grace_s, proc.term_at + 2.0)
        proc.state = "terminating"
        self._dying.append(proc)
        log.info(
            "%s/%s deleted: SIGTERM in %.0fs, SIGKILL in %.0fs (pid %s)",
            proc.spec.namespace,
            proc.spec.name,
            proc.term_at - now,
            proc.kill_at - now,
            proc.pid,
        )

    def _kill(self, proc: _Proc, *, reason: str) -> None:
        self._procs.pop(proc.spec.uid, None)
        if not proc.alive():
            return
        log.info("%s/%s: stopping its simulator (%s)", proc.spec.namespace, proc.spec.name, reason)
        proc.signal(signal.SIGKILL)
        proc.state = "terminating"
        proc.term_at = proc.kill_at = time.monotonic()
        proc.termed = True
        self._dying.append(proc)

    def _address_busy(self, proc: _Proc) -> bool:
        address = (proc.spec.ip, proc.spec.port)
        others = [*self._dying, *(p for p in self._procs.values() if p is not proc)]
        return any((o.spec.ip, o.spec.port) == address and o.alive() for o in others)

    def _tick(self) -> None:
        now = time.monotonic()
        for proc in list(self._dying):
            if not proc.alive():
                self._dying.remove(proc)
                code = proc.popen.returncode if proc.popen is not None else None
                log.info("%s/%s: simulator exited (%s)", proc.spec.namespace, proc.spec.name, code)
                continue
            if proc.term_at is not None and now >= proc.term_at and not proc.termed:
                proc.termed = True
                proc.signal(signal.SIGTERM)
            if proc.kill_at is not None and now >= proc.kill_at:
                proc.signal(signal.SIGKILL)
        for proc in list(self._procs.values()):
            if proc.popen is not None and not proc.alive():
                proc.restarts += 1
                delay = min(BACKOFF_MAX_SECONDS, 2.0 ** (proc.restarts - 1))
                proc.next_start = now + delay
                proc.state = "backoff"
                log.warning(
                    "%s/%s: simulator exited with %s; restarting in %.0fs; last lines:\n%s",
                    proc.spec.namespace,
                    proc.spec.name,
                    proc.popen.returncode,
                    delay,
                    _tail(proc.log_path),
                )
                proc.popen = None
            if proc.popen is None and now >= proc.next_start and not self._address_busy(proc):
                self._spawn(proc)
            elif proc.state == "starting" and _accepts(ip=proc.spec.ip, port=proc.spec.port):
                proc.state = "serving"
                self._apply_health(proc)
                log.info(
                    "%s/%s: serving on %s:%d (pid %s, %.1fs after start)",
                    proc.spec.namespace,
                    proc.spec.name,
                    proc.spec.ip,
                    proc.spec.port,
                    proc.pid,
                    now - proc.started_at,
                )

    def _spawn(self, proc: _Proc) -> None:
        spec = proc.spec
        key = spec.api_key
        if key is None and spec.api_key_secret is not None:
            key = self._secret_value(
                namespace=spec.namespace,
                name=spec.api_key_secret.name,
                key=spec.api_key_secret.key,
            )
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
        with proc.log_path.open("ab") as out:
            mw = f"{MIDDLEWARE}, {runtime.config_path}" if runtime else "none"
            out.write(
                f"# {' '.join(argv)}  (API key: {'set' if key else 'none'}; runtime middleware: "
                f"{mw})\n".encode()
            )
            out.flush()
            proc.popen = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            )
        proc.state = "starting"
        proc.started_at = time.monotonic()
        proc.runtime = runtime
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
        for proc in [*self._procs.values(), *self._dying]:
            spec = proc.spec
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
                    runtime_middleware=proc.runtime is not None,
                )
            )
        with self._changed:
            if infos != self._snapshot:
                self._snapshot = infos
                self._changed.notify_all()

    def _shutdown_all(self) -> None:
        procs = [p for p in [*self._procs.values(), *self._dying] if p.alive()]
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
        self._dying.clear()


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
    supervisor = Supervisor(
        kubeconfig=ns.kubeconfig,
        label_selector=ns.selector,
        namespace=ns.namespace,
        sim_args=extra,
        log_dir=ns.log_dir,
        honor_prestop=not ns.no_prestop,
        runtime_middleware=not ns.no_runtime_middleware,
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
