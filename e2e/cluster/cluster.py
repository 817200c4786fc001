"""A real Kubernetes control plane on this machine, without containers.

``LocalCluster`` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
as child processes bound to 127.0.0.1 on random free ports, with a throw-away PKI and all
state in one directory. Nodes are simulated by kwok (see ``nodepools.py``); pods scheduled
to them are driven through their lifecycle by kwok stages (see ``stages.py``) and get pod
IPs from the loopback range 127.64.0.0/12, service ClusterIPs from 127.96.0.0/16, so no
address the cluster hands out ever leaves this machine.

    with LocalCluster() as cluster:
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "ns"])

``stop()`` stops every process group and verifies that none of them survives.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from e2e.cluster.binaries import ensure_binaries
from e2e.cluster.components import (
    NODE_HEARTBEAT_SECONDS,
    PORT_NAMES,
    Layout,
    apiserver_args,
    controller_manager_args,
    etcd_args,
    kwok_args,
    make_pki,
    node_lease_seconds,
    scheduler_args,
    write_audit_policy,
    write_component_kubeconfigs,
)
from e2e.cluster.kubeapi import ApiError, KubeApi
from e2e.cluster.kubeconfig import write_kubeconfig
from e2e.cluster.processes import ComponentError, ManagedProcess, free_ports, pid_alive, stop_group
from e2e.cluster.stages import write_kwok_config
from e2e.cluster.versions import CLUSTER_COMPONENTS, ETCD, KUBERNETES, KWOK

STATE_FILE = "state.json"

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ProcessInfo:
    name: str
    pid: int
    argv0: str
    log: str


@dataclass
class ClusterState:
    """What ``state.json`` records, so another process can find and stop the cluster."""

    state_dir: str
    server: str
    kubeconfig: str
    ca_file: str
    admin_cert: str
    admin_key: str
    ports: dict[str, int]
    processes: list[ProcessInfo] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    owns_state_dir: bool = False

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState:
        raw: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
        raw["processes"] = [ProcessInfo(**p) for p in raw.get("processes", [])]
        return cls(**raw)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _https_ok(url: str, *, ca_file: Path, timeout: float = 3.0) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:
        return bool(resp.status == 200)


def _http_ok(url: str, *, timeout: float = 3.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bool(resp.status == 200)


class LocalCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok on 127.0.0.1."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        binaries: dict[str, Path] | None = None,
        keep_state: bool | None = None,
        log: Log = _log,
        verbosity: int = 0,
        die_with_parent: bool = False,
        audit_reads_of: Sequence[str] = (),
        node_heartbeat_seconds: float = NODE_HEARTBEAT_SECONDS,
    ) -> None:
        """``state_dir``: where PKI, etcd data, logs and kubeconfigs go (default: a new temp
        directory, removed on stop). ``die_with_parent``: components get SIGKILL if the
        starting thread dies (use it in tests; ``up`` leaves the cluster running instead).
        ``audit_reads_of``: user names whose reads (get, list, watch) the audit log records
        too, at Metadata level (default: none, only writes; components.audit_policy).
        ``node_heartbeat_seconds``: how often each simulated node renews its Lease (default
        the kubelet's 10 s; the scale bench slows it, docs/scale.md), with the node
        controller's grace period to match (components.node_monitor_args).
        """
        node_lease_seconds(node_heartbeat_seconds)  # refuse a bad value before any start
        self._owns_state_dir = state_dir is None
        self.state_dir = (
            Path(tempfile.mkdtemp(prefix="magistral-e2e-"))
            if state_dir is None
            else state_dir.resolve()
        )
        self.keep_state = (not self._owns_state_dir) if keep_state is None else keep_state
        self._binaries = binaries
        self._log = log
        self._verbosity = verbosity
        self._die_with_parent = die_with_parent
        self._audit_reads_of = tuple(audit_reads_of)
        self._node_heartbeat_seconds = node_heartbeat_seconds
        self._processes: list[ManagedProcess] = []
        self._stopped_argv: list[str] = []
        self.state: ClusterState | None = None

    # ----------------------------------------------------------------- accessors
    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user in group system:masters)."""
        return self.state_dir / "kubeconfigs" / "admin.kubeconfig"  # see components.IDENTITIES

    @property
    def server(self) -> str:
        return self._require_state().server

    @property
    def audit_log(self) -> Path:
        """JSON lines, one per write request, and per read of ``audit_reads_of``
        (see components.audit_policy)."""
        return self.logs_dir / "audit.log"

    def _require_state(self) -> ClusterState:
        if self.state is None:
            raise RuntimeError("the cluster is not started (call start() or LocalCluster.attach())")
        return self.state

    def api(self) -> KubeApi:
        """A REST client authenticated as the cluster admin."""
        state = self._require_state()
        return KubeApi(
            state.server,
            ca_file=Path(state.ca_file),
            cert_file=Path(state.admin_cert),
            key_file=Path(state.admin_key),
        )

    @classmethod
    def attach(cls, state_dir: Path, *, log: Log = _log) -> LocalCluster:
        """A handle on a cluster started by another process (``python -m e2e.cluster up``)."""
        cluster = cls(state_dir, keep_state=True, log=log)
        cluster.state = ClusterState.load(cluster.state_dir)
        cluster._owns_state_dir = cluster.state.owns_state_dir
        return cluster

    def running_processes(self) -> list[ProcessInfo]:
        """Recorded component processes that are still alive (and still ours)."""
        state = self._require_state()
        return [p for p in state.processes if self._is_ours(p)]

    @staticmethod
    def _is_ours(info: ProcessInfo) -> bool:
        argv = _cmdline(info.pid)
        return bool(argv) and argv[0] == info.argv0 and pid_alive(info.pid)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, timeout: float = 120.0) -> LocalCluster:
        """Start every component and wait until each is ready. Raises ComponentError."""
        existing = self.state_dir / STATE_FILE
        if existing.exists():
            previous = LocalCluster.attach(self.state_dir, log=self._log)
            if previous.running_processes():
                raise ComponentError(
                    f"a cluster is already running from {self.state_dir}; stop it first "
                    f"(python -m e2e.cluster down --state-dir {self.state_dir})"
                )
            for sub in ("pki", "etcd", "kubeconfigs", "logs", "kwok"):
                shutil.rmtree(self.state_dir / sub, ignore_errors=True)
            existing.unlink()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self._start(timeout=timeout, t0=t0)
        except BaseException:
            self._log(f"cluster start failed; logs are in {self.logs_dir}")
            keep = self.keep_state
            self.keep_state = True  # keep the logs for the error report
            try:
                self.stop()
            finally:
                self.keep_state = keep
            raise
        state = self._require_state()
        state.timings["total"] = round(time.monotonic() - t0, 2)
        state.save()
        self._log(
            f"cluster ready in {state.timings['total']:.1f}s: {state.server} "
            f"(kubeconfig {self.kubeconfig})"
        )
        return self

    def _start(self, *, timeout: float, t0: float) -> None:
        bins = self._binaries or ensure_binaries(CLUSTER_COMPONENTS, log=self._log)
        t_bins = time.monotonic()
        for sub in ("kubeconfigs", "logs", "kwok"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        layout = Layout(
            state_dir=self.state_dir,
            ports=dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True)),
            verbosity=self._verbosity,
        )
        ports = layout.ports
        pki = make_pki(layout.pki_dir)
        kubeconfigs = write_component_kubeconfigs(layout, pki)
        write_audit_policy(layout, read_users=self._audit_reads_of)
        state = self.state = ClusterState(
            state_dir=str(self.state_dir),
            server=layout.server,
            kubeconfig=str(kubeconfigs["admin"]),
            ca_file=str(pki["ca"].cert),
            admin_cert=str(pki["admin"].cert),
            admin_key=str(pki["admin"].key),
            ports=ports,
            versions={"kubernetes": KUBERNETES.version, "etcd": ETCD.version, "kwok": KWOK.version},
            owns_state_dir=self._owns_state_dir,
        )
        state.timings["binaries"] = round(t_bins - t0, 2)
        ca = pki["ca"].cert

        etcd = self._spawn("etcd", [str(bins["etcd"]), *etcd_args(layout)])
        etcd.wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
            timeout=timeout,
            what="healthy (GET /health)",
        )
        self._mark("etcd", t0)

        apiserver = self._spawn(
            "kube-apiserver", [str(bins["kube-apiserver"]), *apiserver_args(layout, pki)]
        )
        admin = self.api()
        apiserver.wait_until(
            lambda: admin.get_text("/readyz").strip() == "ok",
            timeout=timeout,
            what="ready (GET /readyz)",
            interval=0.25,
        )
        self._mark("kube-apiserver", t0)
        self._bootstrap_rbac(admin)

        kcm = self._spawn(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                *controller_manager_args(
                    layout,
                    pki,
                    kubeconfigs["controller-manager"],
                    node_heartbeat_seconds=self._node_heartbeat_seconds,
                ),
            ],
        )
        kcm.wait_until(
            lambda: _https_ok(
                f"https://127.0.0.1:{ports['controller-manager']}/healthz", ca_file=ca
            ),
            timeout=timeout,
            what="healthy (GET /healthz)",
        )
        scheduler = self._spawn(
            "kube-scheduler",
            [str(bins["kube-scheduler"]), *scheduler_args(layout, pki, kubeconfigs["scheduler"])],
        )
        kwok_config = write_kwok_config(self.state_dir / "kwok" / "stages.yaml")
        kwok = self._spawn(
            "kwok",
            [
                str(bins["kwok"]),
                *kwok_args(
                    layout,
                    kubeconfigs["kwok"],
                    kwok_config,
                    node_heartbeat_seconds=self._node_heartbeat_seconds,
                ),
            ],
        )
        scheduler.wait_until(
            lambda: _https_ok(f"https://127.0.0.1:{ports['scheduler']}/readyz", ca_file=ca),
            timeout=timeout,
            what="ready (GET /readyz)",
        )
        self._mark("kube-scheduler", t0)
        kwok.wait_until(
            lambda: _http_ok(f"http://127.0.0.1:{ports['kwok']}/healthz"),
            timeout=timeout,
            what="healthy (GET /healthz)",
        )
        self._mark("kwok", t0)
        # The controller-manager is useful once its service-account controller works:
        # pods cannot be created in a namespace before its "default" ServiceAccount exists.
        kcm.wait_until(
            lambda: bool(admin.get("/api/v1/namespaces/default/serviceaccounts/default")),
            timeout=timeout,
            what="creating ServiceAccounts (default/default)",
            interval=0.25,
        )
        self._mark("kube-controller-manager", t0)
        state.save()

    def _mark(self, name: str, t0: float) -> None:
        state = self._require_state()
        state.timings[name] = round(time.monotonic() - t0, 2)
        self._log(f"  {name} ready after {state.timings[name]:.1f}s")

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        state = self._require_state()
        proc = ManagedProcess(
            name, argv, log_path=self.logs_dir / f"{name}.log", cwd=self.state_dir
        )
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        proc.start(env=env, die_with_parent=self._die_with_parent)
        self._processes.append(proc)
        assert proc.pid is not None
        state.processes.append(
            ProcessInfo(name=name, pid=proc.pid, argv0=argv[0], log=str(proc.log_path))
        )
        state.save()
        return proc

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop every component (reverse start order) and verify no process is left."""
        errors: list[str] = []
        if self.state is not None:
            for info in reversed(self.state.processes):
                if not self._is_ours(info):
                    continue
                try:
                    stop_group(info.pid, name=info.name, grace=grace)
                except ComponentError as err:
                    errors.append(str(err))
        for proc in self._processes:
            try:
                proc.stop(grace=1.0)  # reaps our own children
            except ComponentError as err:
                errors.append(str(err))
        self._processes.clear()
        errors += self._kill_strays()
        if self.state is not None and self.state.processes:
            survivors = self.running_processes()
            if survivors:
                errors.append(f"still running after stop: {[(p.name, p.pid) for p in survivors]}")
        if errors:
            raise ComponentError("stopping the cluster left problems:\n" + "\n".join(errors))
        if not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        elif (self.state_dir / STATE_FILE).exists() and self.state is not None:
            self.state.processes = []
            self.state.save()

    def stop_apiserver(self, *, grace: float = 10.0) -> None:
        """Stop kube-apiserver alone (SIGTERM, then SIGKILL); the other components stay up.

        ``start_apiserver()`` starts it again with the same flags (and so the same port,
        certificates and etcd): a control-plane restart as clients see it.
        """
        state = self._require_state()
        info = next(
            (p for p in state.processes if p.name == "kube-apiserver" and self._is_ours(p)), None
        )
        if info is None:
            raise ComponentError("kube-apiserver is not running")
        self._stopped_argv = _cmdline(info.pid)
        stop_group(info.pid, name=info.name, grace=grace)
        state.processes.remove(info)
        self._processes = [p for p in self._processes if p.pid != info.pid]
        state.save()

    def start_apiserver(self, *, timeout: float = 60.0) -> float:
        """Start kube-apiserver again after ``stop_apiserver()``; wait for /readyz. Returns
        the seconds it took to be ready."""
        argv = self._stopped_argv
        if not argv:
            raise ComponentError("kube-apiserver was not stopped by stop_apiserver()")
        started = time.monotonic()
        apiserver = self._spawn("kube-apiserver", argv)
        admin = self.api()

        def ready() -> bool:
            try:
                return admin.get_text("/readyz").strip() == "ok"
            except (OSError, ApiError):
                return False

        apiserver.wait_until(ready, timeout=timeout, what="ready (GET /readyz)", interval=0.25)
        self._stopped_argv = []
        return time.monotonic() - started

    def _kill_strays(self) -> list[str]:
        """SIGKILL any process running one of our component binaries with our state directory.

        Only processes that are ours by construction are touched: their executable is one
        we started and their command line names this cluster's (unique) state directory.
        """
        if self.state is None:
            return []
        binaries = {p.argv0 for p in self.state.processes}
        marker = str(self.state_dir)
        errors: list[str] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            argv = _cmdline(pid)
            if not argv or argv[0] not in binaries or not any(marker in a for a in argv[1:]):
                continue
            if not pid_alive(pid):
                continue
            try:
                os.kill(pid, 9)
                self._log(f"warning: killed stray process {pid} ({argv[0]})")
            except OSError as err:
                errors.append(f"cannot kill stray process {pid} ({argv[0]}): {err}")
        return errors

    # ------------------------------------------------------------ configuration
    def _bootstrap_rbac(self, admin: KubeApi) -> None:
        """kwok acts as every kubelet: its identity gets cluster-admin (kwokctl uses admin)."""
        admin.ensure(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "magistral-e2e:kwok-controller"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": "system:kwok-controller",
                    }
                ],
            },
        )

    # ------------------------------------------------------------------ helpers
    def kubeconfig_for_service_account(
        self,
        namespace: str,
        name: str,
        *,
        expiration_seconds: int = 86400,
        create: bool = True,
    ) -> Path:
        """Mint a token for ServiceAccount ``namespace/name``; write a kubeconfig that uses it.

        The token comes from the TokenRequest API and expires after ``expiration_seconds``.

        With ``create`` the namespace and ServiceAccount are created if missing.
        """
        state = self._require_state()
        admin = self.api()
        if create:
            admin.ensure(
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            )
            admin.ensure(
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            )
        try:
            response = admin.create(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"expirationSeconds": expiration_seconds},
                },
            )
        except ApiError as err:
            raise RuntimeError(
                f"cannot mint a token for ServiceAccount {namespace}/{name}: {err}"
            ) from err
        token = str(response["status"]["token"])
        return write_kubeconfig(
            self.state_dir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig",
            server=state.server,
            ca_file=Path(state.ca_file),
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )
