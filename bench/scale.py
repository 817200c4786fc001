"""How the operator scales: N endpoints on M simulated GPU nodes (docs/scale.md, issue 12).

For each N, a fresh local control plane (e2e/cluster) with M kwok GPU nodes (half in the
reserved H100 pool, half on-demand, 8 GPUs each, as examples/operator-config.yaml describes
them) and enough CPU nodes for the router pods. The operator runs as a local process under
the chart's ServiceAccount, from PYTHONPATH, with the production defaults (30 s resync, 5 s
recheck, kopf's 8 workers (MAGISTRAL_SPEC_WORKERS), no leader election: the chart's
`replicas: 1`). The API server's audit log records the operator's reads as well as every
write (`audit_reads_of`).

    PYTHONPATH=operator:runtime:. .venv/bin/python bench/scale.py --endpoints 10,100 \
        [--nodes 1000] [--window 120] [--json out.json]

The bench plays the pod supervisor's part for the router pods only: it labels each Running
router pod `magistral.dev/sim-ready=true` (kwok keeps them not Ready until then), so an
endpoint can turn Ready. It runs no pod supervisor (no processes, no pod IPs of its own). Nothing
answers on the engine pods' IPs, so every demand read finds nothing (connection refused).

Reported, per N (clocks are the bench's, monotonic; the watches are held open by the bench):

* converged: from the first create until every endpoint is converged, checked every
  max(1, N/250) seconds on the bench's watch of the endpoints (a list of all N each time was
  work for the API server being measured, up to 2026-12-02):
  status.observedGeneration == metadata.generation, the Ready condition True, status
  readyReplicas == replicas >= 1, and each of its engine Deployments (watch) with readyReplicas
  == spec.replicas and their spec.replicas summing to status.replicas;
* CR->Deployment: from `create` returning to the first watch event of the endpoint's engine
  Deployment; "burst" while the N are created back to back, "at size" for --probes extra
  endpoints created one at a time once the N are steady;
* spec change: --changes samples; one endpoint's spec.runtime.maxModelLen is patched (a new
  revision), and the time from the patch returning to the first watch event of an engine
  Deployment of that endpoint whose pod template carries a revision label not seen before
  (the canary Deployment when the endpoint's rollout is Healthy, else the pool's);
* operator RSS and CPU from /proc/<pid>: peak over the run, mean over the steady window;
* API requests by the operator's ServiceAccount (audit log, every verb), per second over the
  steady window (--settle after convergence, then --window seconds), and per endpoint per
  30 s resync period.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # e2e/ (the operator comes from the installed package or PYTHONPATH)

from e2e.cluster.cluster import LocalCluster  # noqa: E402
from e2e.cluster.components import NODE_HEARTBEAT_SECONDS  # noqa: E402
from e2e.cluster.nodepools import H100, POD_CIDR_RANGE, NodePool, is_ready, node_manifest  # noqa: E402
from e2e.cluster.stages import COMPONENT_LABEL  # noqa: E402
from e2e.install import OPERATOR_NAMESPACE, SERVICE_ACCOUNT, install_crds, install_operator_rbac  # noqa: E402
from e2e.operator_process import (  # noqa: E402
    DEFAULT_CONFIG,
    OperatorProcess,
    endpoint_passes,
    free_port,
)
from e2e.router_readiness import RouterReadiness  # noqa: E402

EXAMPLE = ROOT / "examples" / "magistral-small.yaml"
GROUP, VERSION, PLURAL = "magistral.dev", "v1alpha1", "magistralendpoints"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
NAMESPACE = "scale"
ENDPOINT_LABEL = "magistral.dev/endpoint"
REVISION_LABEL = "magistral.dev/revision"
MANAGED = "app.kubernetes.io/managed-by=magistral-operator"
RESYNC_SECONDS = 30.0  # the operator's default (handlers/operator.py); the bench keeps it
SCRAPE_SECONDS = 10.0  # the demand collector's default (kube/collector.py); the bench keeps it
ROUTER_PODS_PER_NODE = 56  # a CPU node: 32 cpu / 500m = 64 router pods, 110 pods; some slack
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

GOALS = {
    "converge_s": ("< 300 s", 300.0),
    "rss_peak_mib": ("< 300 MiB", 300.0),
    "cr_to_deployment_at_size_p50_s": ("< 1 s", 1.0),
    "spec_change_p50_s": ("< 2 s", 2.0),
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- the cluster
def layout(
    nodes: int, endpoints: int, *, gpus_per_node: int, cpu_nodes: int | None
) -> list[NodePool]:
    """M GPU nodes (reserved and on-demand H100, the pools of the example endpoint) and CPU nodes
    for two router pods per endpoint."""
    cpu = (
        cpu_nodes
        if cpu_nodes is not None
        else max(2, math.ceil(2 * endpoints / ROUTER_PODS_PER_NODE))
    )
    reserved = nodes // 2
    return [
        NodePool(
            name="reserved-h100",
            capacity_type="reserved",
            gpu=H100,
            nodes=reserved,
            zones=("zone-a", "zone-b"),
            gpus_per_node=gpus_per_node,
        ),
        NodePool(
            name="ondemand-h100",
            capacity_type="on-demand",
            gpu=H100,
            nodes=nodes - reserved,
            zones=("zone-a", "zone-b"),
            gpus_per_node=gpus_per_node,
        ),
        NodePool(
            name="system",
            capacity_type="on-demand",
            gpu=None,
            nodes=cpu,
            zones=("zone-a", "zone-b"),
            cpu="32",
            memory="128Gi",
            instance_type="m7i.8xlarge",
        ),
    ]


def create_nodes(api: client.ApiClient, pools: list[NodePool], *, first_slot: int) -> int:
    """Create every node of `pools`, with IP and pod-CIDR slots from `first_slot` on.

    Not nodepools.create_pools: that takes the lowest free slots of this cluster, the slots
    every other local cluster on the machine uses too, and kwok hands out pod IPs from them.
    The operator reads each Ready pod's metrics on its IP, so a pod of this cluster on an IP
    where another cluster's pod supervisor runs a simulator would be read (and answer)."""
    total = sum(pool.nodes for pool in pools)
    if first_slot + total > POD_CIDR_RANGE.num_addresses // 256:
        raise ValueError(f"slots {first_slot}..{first_slot + total - 1}: {POD_CIDR_RANGE} has 4096")
    core = client.CoreV1Api(api)
    manifests = []
    slot = first_slot
    for pool in pools:
        for index in range(pool.nodes):
            manifests.append(node_manifest(pool, index, slot=slot))
            slot += 1
    with ThreadPoolExecutor(max_workers=8) as workers:  # one create each: 8 at a time
        list(workers.map(core.create_node, manifests))
    return total


def wait_nodes_ready(api: client.ApiClient, count: int, timeout: float) -> float:
    core = client.CoreV1Api(api)
    t0 = time.monotonic()
    while True:
        nodes = core.list_node(_preload_content=False)
        items = json.loads(nodes.data)["items"]
        ready = sum(1 for n in items if is_ready(n))
        if ready >= count:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{ready}/{count} nodes Ready after {timeout:.0f}s")
        time.sleep(1.0)


# --------------------------------------------------------------------------- watching
@dataclass
class DeploymentSeen:
    first: float
    labels: dict[str, str]
    revisions: set[str]
    replicas: int
    ready: int


class _Watch:
    """A list-then-watch of one kind, held open by the bench in a thread; `_record` sees every
    object listed, added or modified (re-listed after a 410 Gone)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.reconnects = 0

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()

    def _list(self, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _record(self, obj: Any, now: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        resource_version = ""
        while not self.stop_event.is_set():
            try:
                if not resource_version:
                    body = json.loads(self._list(_preload_content=False).data)
                    now = time.monotonic()
                    for obj in body["items"]:
                        self._record(obj, now)
                    resource_version = body["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    self._list,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=3600,
                    _preload_content=False,
                )
                for event in stream:
                    raw = event["raw_object"]
                    resource_version = raw["metadata"].get("resourceVersion", resource_version)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(raw, time.monotonic())
                    if self.stop_event.is_set():
                        return
            except ApiException as err:
                if err.status == 410:
                    resource_version = ""
                self.reconnects += 1
                time.sleep(0.2)
            except Exception:  # the connection went: watch again from where it was
                self.reconnects += 1
                time.sleep(0.2)


class EndpointWatch(_Watch):
    """The endpoints as last seen: the bench watches them rather than list all N every poll
    (a list of 500 endpoints every 2 s is work for the API server being measured)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__()
        self.objects = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.latest: dict[str, dict[str, Any]] = {}

    def _list(self, **kwargs: Any) -> Any:
        return self.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, **kwargs
        )

    def _record(self, obj: Any, now: float) -> None:
        with self.changed:
            self.latest[obj["metadata"]["name"]] = obj
            self.changed.notify_all()

    def items(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.latest.values())


class DeploymentWatch(_Watch):
    """A watch on the operator's Deployments in the namespace, held open by the bench; records
    when each Deployment and each pod-template revision was first seen."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        super().__init__()
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.seen: dict[str, DeploymentSeen] = {}
        self.revision_seen: dict[tuple[str, str], float] = {}  # (endpoint, revision) -> time

    def _list(self, **kwargs: Any) -> Any:
        return self.apps.list_namespaced_deployment(
            self.namespace, label_selector=MANAGED, **kwargs
        )

    def _record(self, obj: Any, now: float) -> None:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        endpoint = labels.get(ENDPOINT_LABEL, "")
        template_labels = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        revision = (template_labels.get("labels") or {}).get(REVISION_LABEL, "")
        with self.changed:
            entry = self.seen.get(meta["name"])
            if entry is None:
                entry = self.seen[meta["name"]] = DeploymentSeen(now, labels, set(), 0, 0)
            entry.labels = labels
            entry.replicas = int((obj.get("spec") or {}).get("replicas") or 0)
            entry.ready = int((obj.get("status") or {}).get("readyReplicas") or 0)
            if revision and labels.get(COMPONENT_LABEL) == "inference":
                entry.revisions.add(revision)
                self.revision_seen.setdefault((endpoint, revision), now)
            self.changed.notify_all()

    def engine_deployments(self, endpoint: str) -> list[DeploymentSeen]:
        with self.lock:
            return [
                d
                for d in self.seen.values()
                if d.labels.get(ENDPOINT_LABEL) == endpoint
                and d.labels.get(COMPONENT_LABEL) == "inference"
            ]

    def wait_engine(self, endpoint: str, timeout: float) -> float | None:
        """The time its first engine Deployment was seen (waiting up to `timeout`)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                firsts = [
                    d.first
                    for d in self.seen.values()
                    if d.labels.get(ENDPOINT_LABEL) == endpoint
                    and d.labels.get(COMPONENT_LABEL) == "inference"
                ]
                if firsts:
                    return min(firsts)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def revisions(self, endpoint: str) -> set[str]:
        with self.lock:
            return {rev for (ep, rev) in self.revision_seen if ep == endpoint}

    def wait_new_revision(
        self, endpoint: str, known: set[str], timeout: float
    ) -> tuple[float, str] | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                new = [
                    (t, rev)
                    for (ep, rev), t in self.revision_seen.items()
                    if ep == endpoint and rev not in known
                ]
                if new:
                    return min(new)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


class ProcSampler:
    """RSS and CPU of one process, from /proc/<pid>, every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time, rss MiB, cpu seconds)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcSampler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def sample(self) -> tuple[float, float, float] | None:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            statm = Path(f"/proc/{self.pid}/statm").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        rss = int(statm.split()[1]) * PAGE / 2**20
        return (time.monotonic(), rss, cpu)

    def _run(self) -> None:
        while True:
            found = self.sample()
            if found:
                self.samples.append(found)
            if self.stop_event.wait(self.interval):
                return

    def between(self, t0: float, t1: float) -> dict[str, float | None]:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return {"rss_mean_mib": None, "rss_max_mib": None, "cpu_percent": None}
        cpu = (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0]) * 100
        return {
            "rss_mean_mib": statistics.fmean(s[1] for s in inside),
            "rss_max_mib": max(s[1] for s in inside),
            "cpu_percent": cpu,
        }

    def peak_cpu_percent(self, t0: float, t1: float, span: float = 10.0) -> float | None:
        """The highest CPU use over any `span` seconds between t0 and t1."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        best: float | None = None
        j = 0
        for i in range(len(inside)):
            while inside[i][0] - inside[j][0] > span:
                j += 1
            if inside[i][0] - inside[j][0] >= span / 2:
                use = (inside[i][2] - inside[j][2]) / (inside[i][0] - inside[j][0]) * 100
                best = use if best is None else max(best, use)
        return best


# --------------------------------------------------------------------------- the audit log
def audit_events(logs_dir: Path, needle: str, t0: datetime, t1: datetime) -> Iterator[Any]:
    """Audit events received in [t0, t1) whose line contains `needle`, each request once.

    Every audit*.log file (the API server rotates at 200 MB); a request is counted once (by
    its auditID: a watch has a ResponseStarted and a ResponseComplete event)."""
    seen: set[str] = set()
    for path in sorted(logs_dir.glob("audit*.log")):
        with path.open(errors="replace") as handle:
            for line in handle:
                if needle not in line:
                    continue
                event = json.loads(line)
                audit_id = event.get("auditID", "")
                if audit_id in seen:
                    continue
                received = datetime.fromisoformat(event["requestReceivedTimestamp"])
                if not t0 <= received < t1:
                    continue
                seen.add(audit_id)
                yield event


def resource_of(event: Any) -> str:
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", event.get("requestURI", "?")))
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    return resource


def audit_requests(
    logs_dir: Path, user: str, t0: datetime, t1: datetime
) -> tuple[Counter[str], Counter[str]]:
    """Requests by `user` received in [t0, t1): counts by verb, and by "verb resource[/sub]"."""
    by_verb: Counter[str] = Counter()
    by_resource: Counter[str] = Counter()
    for event in audit_events(logs_dir, json.dumps(user), t0, t1):
        if event.get("user", {}).get("username") != user:
            continue
        by_verb[event["verb"]] += 1
        by_resource[f"{event['verb']} {resource_of(event)}"] += 1
    return by_verb, by_resource


NODE_CONTROLLER = "system:serviceaccount:kube-system:node-controller"
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def harness_writes(logs_dir: Path, t0: datetime, t1: datetime) -> dict[str, int]:
    """Writes received in [t0, t1): all of them, the node Lease renewals (the simulated
    kubelets' heartbeats), and the node controller's writes to Nodes (a node whose Lease was
    not renewed in time is marked NotReady and tainted, then Ready again)."""
    out = {"writes": 0, "node_lease_renewals": 0, "node_controller_node_writes": 0}
    for event in audit_events(logs_dir, '"verb":"', t0, t1):
        if event.get("verb") not in WRITES:
            continue
        out["writes"] += 1
        ref = event.get("objectRef") or {}
        if ref.get("resource") == "leases" and ref.get("namespace") == "kube-node-lease":
            out["node_lease_renewals"] += event["verb"] == "update"
        elif ref.get("resource") == "nodes":
            node_controller = event.get("user", {}).get("username") == NODE_CONTROLLER
            out["node_controller_node_writes"] += node_controller
    return out


def namespace_writes(logs_dir: Path, namespace: str, t0: datetime, t1: datetime) -> Counter[str]:
    """Writes into `namespace` in [t0, t1) by anybody, by "user verb resource[/sub]": what
    triggers the operator's event-driven passes (its watches see these changes)."""
    out: Counter[str] = Counter()
    for event in audit_events(logs_dir, f'"namespace":{json.dumps(namespace)}', t0, t1):
        if event["verb"] in ("get", "list", "watch"):
            continue
        user = event.get("user", {}).get("username", "?")
        out[f"{user} {event['verb']} {resource_of(event)}"] += 1
    return out


def operator_trace(logs_dir: Path, t0: datetime, t1: datetime, *, endpoint: str) -> list[str]:
    """The operator's requests in [t0, t1) that name `endpoint` or its children, in order of
    arrival, each as "+seconds verb resource/name (latency)": where a pass spends its time."""
    events = sorted(
        audit_events(logs_dir, json.dumps(OPERATOR_USER), t0, t1),
        key=lambda e: str(e["requestReceivedTimestamp"]),
    )
    out: list[str] = []
    for event in events:
        ref = event.get("objectRef") or {}
        name = str(ref.get("name", ""))
        uri = str(event.get("requestURI", ""))
        if not (name.startswith(endpoint) or endpoint in uri):
            continue
        received = datetime.fromisoformat(event["requestReceivedTimestamp"])
        done = event.get("stageTimestamp")
        took = (datetime.fromisoformat(done) - received).total_seconds() if done else 0.0
        out.append(
            f"+{(received - t0).total_seconds():.3f}s {event['verb']} {resource_of(event)}"
            f"/{name} ({took * 1000:.0f} ms)"
        )
    return out


# --------------------------------------------------------------------------- endpoints
def endpoint_manifest(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    return body


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


def converged(obj: dict[str, Any], deployments: list[DeploymentSeen], *, need_ready: bool) -> bool:
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    replicas = int(status.get("replicas") or 0)
    if replicas < 1 or int(status.get("readyReplicas") or 0) != replicas:
        return False
    if need_ready and condition(obj, "Ready") != "True":
        return False
    if not deployments or sum(d.replicas for d in deployments) != replicas:
        return False
    return all(d.ready == d.replicas for d in deployments)


@dataclass
class Result:
    endpoints: int
    nodes: int
    cpu_nodes: int
    gpus_per_node: int
    window_s: float
    numbers: dict[str, Any] = field(default_factory=dict)


def run_one(args: argparse.Namespace, n: int) -> Result:
    pools = layout(args.nodes, n, gpus_per_node=args.gpus_per_node, cpu_nodes=args.cpu_nodes)
    result = Result(
        endpoints=n,
        nodes=args.nodes,
        cpu_nodes=pools[-1].nodes,
        gpus_per_node=args.gpus_per_node,
        window_s=args.window,
    )
    out = result.numbers
    state_dir = (args.state_dir / f"n{n}") if args.state_dir else None
    cluster = LocalCluster(
        state_dir,
        die_with_parent=True,
        audit_reads_of=[OPERATOR_USER],
        node_heartbeat_seconds=args.node_heartbeat_seconds,
    )
    with cluster, contextlib.ExitStack() as stack:
        t = time.monotonic()
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        total_nodes = create_nodes(api, pools, first_slot=args.first_slot)
        wait_nodes_ready(api, total_nodes, timeout=600)
        out["nodes_ready_s"] = time.monotonic() - t
        log(f"N={n}: {total_nodes} nodes Ready in {out['nodes_ready_s']:.1f}s")
        install_crds(cluster.kubeconfig)
        install_operator_rbac(cluster.kubeconfig)
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        core.create_namespaced_secret(
            NAMESPACE,
            {"metadata": {"name": "magistral-small-api-key"}, "stringData": {"api-key": "k"}},
        )
        log_dir = state_dir or Path(tempfile.mkdtemp(prefix="scale-operator-"))
        metrics_port = free_port()  # its passes counter (magistral_operator_endpoint_passes_total)
        operator = OperatorProcess(
            kubeconfig=cluster.kubeconfig_for_service_account(OPERATOR_NAMESPACE, SERVICE_ACCOUNT),
            log_file=log_dir / "operator.log",
            config=DEFAULT_CONFIG,
            resync_seconds=RESYNC_SECONDS,
            scrape_seconds=SCRAPE_SECONDS,
            extra_args=("--metrics-port", str(metrics_port)),
        )
        operator.start()
        stack.callback(operator.stop)
        assert operator.process is not None
        out["operator_log"] = str(operator.log_file)
        sampler = stack.enter_context(ProcSampler(operator.process.pid))
        deps = stack.enter_context(DeploymentWatch(api, NAMESPACE))
        endpoints = stack.enter_context(EndpointWatch(api, NAMESPACE))
        if not args.no_router_ready:
            stack.enter_context(RouterReadiness(api, NAMESPACE))
        objects = client.CustomObjectsApi(api)
        time.sleep(2.0)  # the watch is listed

        # -- create N back to back --------------------------------------------------------
        names = [f"ep-{i:04d}" for i in range(n)]
        created: dict[str, float] = {}
        t_start = time.monotonic()
        wall_start = datetime.now(UTC)
        for name in names:
            objects.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, endpoint_manifest(name)
            )
            created[name] = time.monotonic()
        out["create_all_s"] = time.monotonic() - t_start
        log(f"N={n}: created in {out['create_all_s']:.1f}s; waiting for convergence")

        # -- convergence --------------------------------------------------------------------
        t_converged: float | None = None
        t_all_deployments: float | None = None
        last_report = 0.0
        done = 0
        poll = max(1.0, n / 250)  # checking N endpoints costs the bench's CPU too (2 cores)
        out["convergence_poll_s"] = poll
        while time.monotonic() - t_start < args.converge_timeout:
            items = endpoints.items()
            done = sum(
                1
                for obj in items
                if converged(
                    obj,
                    deps.engine_deployments(obj["metadata"]["name"]),
                    need_ready=not args.no_router_ready,
                )
            )
            if t_all_deployments is None and all(deps.engine_deployments(x) for x in names):
                t_all_deployments = time.monotonic()
            if done == n:
                t_converged = time.monotonic()
                break
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                log(f"N={n}: {done}/{n} converged after {last_report - t_start:.0f}s")
            time.sleep(poll)
        out["converged"] = done
        out["converge_s"] = (t_converged - t_start) if t_converged else None
        out["all_deployments_s"] = (t_all_deployments - t_start) if t_all_deployments else None
        burst = [
            first - created[name]
            for name in names
            if (first := deps.wait_engine(name, 0)) is not None
        ]
        out["cr_to_deployment_burst_p50_s"] = percentile(burst, 50)
        out["cr_to_deployment_burst_p99_s"] = percentile(burst, 99)
        out["cr_to_deployment_burst_max_s"] = max(burst) if burst else None
        t_conv_end = time.monotonic()
        wall_conv_end = datetime.now(UTC)
        conv_verbs, _ = audit_requests(cluster.logs_dir, OPERATOR_USER, wall_start, wall_conv_end)
        out["convergence_requests"] = dict(conv_verbs)
        harness = harness_writes(cluster.logs_dir, wall_start, wall_conv_end)
        out["convergence_writes_per_s"] = harness["writes"] / max(1e-9, t_conv_end - t_start)
        out["node_lease_renewals"] = harness["node_lease_renewals"]
        out["node_controller_node_writes"] = harness["node_controller_node_writes"]
        log(
            f"N={n}: converged {done}/{n} in "
            f"{out['converge_s'] if out['converge_s'] is not None else 'timeout'}"
        )

        # -- steady state ---------------------------------------------------------------------
        log(f"N={n}: settling {args.settle:.0f}s, then a {args.window:.0f}s steady window")
        time.sleep(args.settle)
        t_w0, wall_w0 = time.monotonic(), datetime.now(UTC)
        passes_w0 = endpoint_passes(metrics_port)
        time.sleep(args.window)
        t_w1, wall_w1 = time.monotonic(), datetime.now(UTC)
        passes_w1 = endpoint_passes(metrics_port)
        steady = sampler.between(t_w0, t_w1)
        out["rss_steady_mib"] = steady["rss_mean_mib"]
        out["cpu_steady_percent"] = steady["cpu_percent"]
        out["cpu_steady_peak10s_percent"] = sampler.peak_cpu_percent(t_w0, t_w1)
        verbs, resources = audit_requests(cluster.logs_dir, OPERATOR_USER, wall_w0, wall_w1)
        span = (wall_w1 - wall_w0).total_seconds()
        out["steady_rps_by_verb"] = {v: c / span for v, c in sorted(verbs.items())}
        out["steady_rps"] = sum(verbs.values()) / span
        out["steady_requests_per_endpoint_per_resync"] = (
            sum(verbs.values()) / span * RESYNC_SECONDS / n
        )
        out["steady_requests_by_resource"] = dict(resources.most_common())
        out["steady_passes_per_endpoint_per_resync"] = (
            (passes_w1 - passes_w0) / span * RESYNC_SECONDS / n
            if passes_w0 is not None and passes_w1 is not None
            else None
        )
        out["steady_namespace_writes"] = dict(
            namespace_writes(cluster.logs_dir, NAMESPACE, wall_w0, wall_w1).most_common()
        )
        log(f"N={n}: steady {out['steady_rps']:.1f} req/s ({dict(verbs)})")

        # -- CR -> Deployment at size: one extra endpoint at a time -------------------------------
        wall_p0 = datetime.now(UTC)
        passes_p0 = endpoint_passes(metrics_port)
        at_size: list[float] = []
        for i in range(args.probes):
            name = f"probe-{i:03d}"
            objects.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, endpoint_manifest(name)
            )
            t_created = time.monotonic()
            first = deps.wait_engine(name, 60)
            if first is not None:
                at_size.append(first - t_created)
            time.sleep(args.probe_gap)
        out["cr_to_deployment_at_size_p50_s"] = percentile(at_size, 50)
        out["cr_to_deployment_at_size_p99_s"] = percentile(at_size, 99)
        out["cr_to_deployment_at_size_samples"] = at_size
        _, probe_resources = audit_requests(
            cluster.logs_dir, OPERATOR_USER, wall_p0, datetime.now(UTC)
        )
        passes_p1 = endpoint_passes(metrics_port)
        out["probe_phase_passes"] = (
            passes_p1 - passes_p0 if passes_p0 is not None and passes_p1 is not None else None
        )
        out["probe_phase_requests"] = sum(probe_resources.values())
        log(f"N={n}: CR->Deployment at size {[round(x, 2) for x in at_size]}")

        # -- single spec change -------------------------------------------------------------------
        changes: list[float] = []
        which: list[str] = []
        traces: list[list[str]] = []
        for i in range(args.changes):
            name = names[(i * max(1, n // max(1, args.changes))) % n]
            known = deps.revisions(name)
            objects.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                NAMESPACE,
                PLURAL,
                name,
                {"spec": {"runtime": {"maxModelLen": 32768 - 1024 * i}}},
            )
            t_patched, wall_patched = time.monotonic(), datetime.now(UTC)
            found = deps.wait_new_revision(name, known, 60)
            if found is not None:
                changes.append(found[0] - t_patched)
                with deps.lock:
                    which += [
                        d
                        for d, seen in deps.seen.items()
                        if seen.labels.get(ENDPOINT_LABEL) == name and found[1] in seen.revisions
                    ]
            time.sleep(args.probe_gap)
            traces.append(
                operator_trace(cluster.logs_dir, wall_patched, datetime.now(UTC), endpoint=name)
            )
        out["spec_change_p50_s"] = percentile(changes, 50)
        out["spec_change_max_s"] = max(changes) if changes else None
        out["spec_change_samples"] = changes
        out["spec_change_deployments"] = sorted(set(which))
        out["spec_change_traces"] = traces
        log(f"N={n}: spec change {[round(x, 2) for x in changes]} ({sorted(set(which))})")

        t_end = time.monotonic()
        rss = [s[1] for s in sampler.samples]
        out["rss_peak_mib"] = max(rss) if rss else None
        out["cpu_peak10s_percent"] = sampler.peak_cpu_percent(t_start, t_end)
        out["cpu_convergence_percent"] = sampler.between(t_start, t_conv_end)["cpu_percent"]
        out["watch_reconnects"] = deps.reconnects
        if operator.process.poll() is not None:
            out["operator_exit"] = operator.process.returncode
    return result


# --------------------------------------------------------------------------- the report
def fmt(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def table(results: list[Result]) -> str:
    rows: list[tuple[str, str, list[str]]] = []

    def row(label: str, goal: str, values: list[str]) -> None:
        rows.append((label, goal, values))

    rs = [r.numbers for r in results]
    row(
        "converged endpoints",
        "all",
        [f"{x['converged']}/{r.endpoints}" for x, r in zip(rs, results, strict=True)],
    )
    row(
        "convergence (first create → all converged)",
        GOALS["converge_s"][0],
        [fmt(x["converge_s"], " s", 1) for x in rs],
    )
    row("  all engine Deployments created", "", [fmt(x["all_deployments_s"], " s", 1) for x in rs])
    row(
        "  writes/s (everyone), node Lease renewals, node-controller node writes",
        "",
        [
            f"{fmt(x.get('convergence_writes_per_s'), '', 0)}, "
            f"{x.get('node_lease_renewals', '-')}, {x.get('node_controller_node_writes', '-')}"
            for x in rs
        ],
    )
    row(
        "CR→Deployment, burst, p50 / p99",
        "",
        [
            f"{fmt(x['cr_to_deployment_burst_p50_s'])} / {fmt(x['cr_to_deployment_burst_p99_s'])} s"
            for x in rs
        ],
    )
    row(
        "CR→Deployment, at size, p50 / p99",
        f"p50 {GOALS['cr_to_deployment_at_size_p50_s'][0]}",
        [
            f"{fmt(x['cr_to_deployment_at_size_p50_s'])} / "
            f"{fmt(x['cr_to_deployment_at_size_p99_s'])} s"
            for x in rs
        ],
    )
    row(
        "spec change → new template, p50 / max",
        GOALS["spec_change_p50_s"][0],
        [f"{fmt(x['spec_change_p50_s'])} / {fmt(x['spec_change_max_s'])} s" for x in rs],
    )
    row(
        "operator RSS, steady mean / peak",
        GOALS["rss_peak_mib"][0],
        [f"{fmt(x['rss_steady_mib'], '', 0)} / {fmt(x['rss_peak_mib'], ' MiB', 0)}" for x in rs],
    )
    row(
        "operator CPU, steady mean / peak 10 s",
        "",
        [
            f"{fmt(x['cpu_steady_percent'], '', 0)} / {fmt(x['cpu_peak10s_percent'], ' %', 0)}"
            for x in rs
        ],
    )
    row(
        "operator CPU during convergence",
        "",
        [fmt(x["cpu_convergence_percent"], " %", 0) for x in rs],
    )
    row("API requests/s at steady state", "bounded", [fmt(x["steady_rps"], "", 1) for x in rs])
    verbs = sorted({v for x in rs for v in x["steady_rps_by_verb"]})
    for verb in verbs:
        row(f"  {verb}/s", "", [fmt(x["steady_rps_by_verb"].get(verb, 0.0), "", 2) for x in rs])
    row(
        "  passes per endpoint per 30 s resync",
        "",
        [fmt(x.get("steady_passes_per_endpoint_per_resync"), "", 1) for x in rs],
    )
    row(
        "probes: passes / requests for the extra endpoints",
        "",
        [
            f"{fmt(x.get('probe_phase_passes'), '', 0)} / {x.get('probe_phase_requests')}"
            for x in rs
        ],
    )
    row(
        "requests per endpoint per 30 s resync",
        "stated",
        [fmt(x["steady_requests_per_endpoint_per_resync"], "", 1) for x in rs],
    )
    header = ["", "goal", *[f"N={r.endpoints}" for r in results]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, goal, values in rows:
        lines.append("| " + " | ".join([label, goal, *values]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", default="10,100,500", help="comma-separated N values")
    parser.add_argument("--nodes", type=int, default=1000, help="GPU nodes (M)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument(
        "--cpu-nodes", type=int, default=None, help="default: 2 router pods/endpoint"
    )
    parser.add_argument(
        "--first-slot",
        type=int,
        default=2048,
        help="first node IP / pod-CIDR slot (127.64.0.0/12 has 4096 /24s; the default keeps "
        "this cluster's pod IPs (127.72.0.0 and up) away from other local clusters' low slots)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=150.0,
        help="seconds after convergence before the window (past the rollout's healthySeconds, "
        "120 s by default, whose Healthy transition writes status once)",
    )
    parser.add_argument("--window", type=float, default=120.0, help="steady window, seconds")
    parser.add_argument("--probes", type=int, default=10, help="extra endpoints, at size")
    parser.add_argument("--changes", type=int, default=5, help="spec-change samples")
    parser.add_argument("--probe-gap", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--converge-timeout", type=float, default=900.0)
    parser.add_argument(
        "--no-router-ready",
        action="store_true",
        help="do not label router pods ready (convergence then ignores the Ready condition)",
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="keep state here (n<N>/)")
    parser.add_argument(
        "--wait-for-absent",
        type=Path,
        default=None,
        metavar="FILE",
        help="before each N, wait while FILE exists (e.g. a lock held by a CI run)",
    )
    parser.add_argument(
        "--node-heartbeat-seconds",
        type=float,
        default=NODE_HEARTBEAT_SECONDS,
        help="how often each simulated node renews its Lease (default the kubelet's 10 s; "
        "docs/scale.md says why the recorded runs use 60)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.endpoints.split(",") if x.strip()]
    results: list[Result] = []
    for n in sizes:
        while args.wait_for_absent and args.wait_for_absent.exists():
            log(f"{args.wait_for_absent} exists (other heavy work): waiting")
            time.sleep(30)
        results.append(run_one(args, n))
        print(table(results), flush=True)
        if args.json:
            args.json.write_text(
                json.dumps([r.__dict__ for r in results], indent=2, default=str) + "\n"
            )
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores; nodes: {args.nodes} GPU, "
        f"node heartbeat {args.node_heartbeat_seconds:g} s"
    )
    print(table(results))
    for r in results:
        print(f"\nN={r.endpoints} steady requests by verb and resource (window {r.window_s:.0f}s):")
        for key, count in r.numbers["steady_requests_by_resource"].items():
            print(f"  {key}: {count}")
        for i, trace in enumerate(r.numbers["spec_change_traces"][:2]):
            print(f"N={r.endpoints} spec change {i}: the operator's requests for that endpoint:")
            for line in trace[:60]:
                print(f"  {line}")
        print(f"N={r.endpoints} writes into the namespace in that window (any user):")
        for key, count in r.numbers["steady_namespace_writes"].items():
            print(f"  {key}: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
