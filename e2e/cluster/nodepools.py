"""Simulated node pools (GPU pools and a CPU pool), modelled on Karpenter's kwok provider.

A pool layout is plain data (:class:`NodePool`); :func:`create_pools` turns it into Node
objects that our kwok manages (annotation ``kwok.x-k8s.io/node: fake``). Each node has
the labels Karpenter would put there (``karpenter.sh/capacity-type``, zone, hostname,
instance type). A GPU pool's nodes also have the labels of NVIDIA's GPU feature discovery
(``nvidia.com/gpu.product`` …), ``nvidia.com/gpu`` in capacity and allocatable, and the
``nvidia.com/gpu=present:NoSchedule`` taint; a CPU pool's nodes (``gpu=None``) have none of
these, so pods without tolerations (such as the router pods) schedule there. Every node gets
its own loopback InternalIP (127.32.0.0/16) and pod CIDR (a /24 of 127.64.0.0/12), so
kwok hands out pod IPs that never leave the machine.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from e2e.cluster.kubeapi import JSON, ApiError, KubeApi

POOL_LABEL = "magistral.dev/pool"
CAPACITY_TYPE_LABEL = "karpenter.sh/capacity-type"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_RESOURCE = "nvidia.com/gpu"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
NODE_IP_RANGE = ipaddress.ip_network("127.32.0.0/16")
POD_CIDR_RANGE = ipaddress.ip_network("127.64.0.0/12")
CAPACITY_TYPES = ("reserved", "on-demand", "spot")
GPU_TAINT: JSON = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
"""The taint of every GPU node (none on a CPU pool's nodes)."""


@dataclass(frozen=True)
class GpuModel:
    """A GPU product as NVIDIA's GPU feature discovery labels it."""

    product: str
    """``nvidia.com/gpu.product`` label value."""
    memory_mib: int
    """``nvidia.com/gpu.memory`` label value (MiB per GPU)."""
    instance_type: str
    """``node.kubernetes.io/instance-type`` of a typical 8-GPU machine."""


H100 = GpuModel(product="NVIDIA-H100-80GB-HBM3", memory_mib=81559, instance_type="p5.48xlarge")
L40S = GpuModel(product="NVIDIA-L40S", memory_mib=46068, instance_type="g6e.48xlarge")


@dataclass(frozen=True)
class NodePool:
    """A group of identical simulated nodes: GPU nodes, or CPU nodes when ``gpu`` is None."""

    name: str
    capacity_type: str
    gpu: GpuModel | None
    """The GPU of every node; None: a CPU pool (no GPU labels, capacity or taint)."""
    nodes: int
    zones: tuple[str, ...] = ("zone-a",)
    gpus_per_node: int = 8
    cpu: str = "192"
    memory: str = "2048Gi"
    pods: str = "110"
    instance_type: str | None = None
    """``node.kubernetes.io/instance-type``; default: the GPU model's (required without one)."""

    def __post_init__(self) -> None:
        if self.capacity_type not in CAPACITY_TYPES:
            raise ValueError(f"pool {self.name}: capacity_type must be one of {CAPACITY_TYPES}")
        if not self.zones:
            raise ValueError(f"pool {self.name}: needs at least one zone")
        if self.gpu is None and self.instance_type is None:
            raise ValueError(f"pool {self.name}: a CPU pool needs an instance_type")

    @property
    def node_instance_type(self) -> str:
        if self.instance_type is not None:
            return self.instance_type
        assert self.gpu is not None  # __post_init__
        return self.gpu.instance_type

    def node_name(self, index: int) -> str:
        return f"{self.name}-{index}"


DEFAULT_LAYOUT: tuple[NodePool, ...] = (
    NodePool(name="reserved-h100", capacity_type="reserved", gpu=H100, nodes=2, zones=("zone-a",)),
    NodePool(
        name="ondemand-h100",
        capacity_type="on-demand",
        gpu=H100,
        nodes=4,
        zones=("zone-a", "zone-b"),
    ),
    NodePool(name="spot-l40s", capacity_type="spot", gpu=L40S, nodes=2, zones=("zone-b",)),
    NodePool(
        name="system",
        capacity_type="on-demand",
        gpu=None,
        nodes=2,
        zones=("zone-a", "zone-b"),
        cpu="32",
        memory="128Gi",
        instance_type="m7i.8xlarge",
    ),
)
"""2 reserved H100 nodes, 4 on-demand H100 nodes, 2 spot L40S nodes (8 GPUs each), and 2
on-demand CPU nodes (pool ``system``, untainted: router pods and other CPU workloads). The CPU
pool comes last, so the GPU nodes keep the IPs and pod CIDRs they had before it existed."""

GPU_POOLS: tuple[NodePool, ...] = tuple(p for p in DEFAULT_LAYOUT if p.gpu is not None)
"""The GPU pools of :data:`DEFAULT_LAYOUT`."""
CPU_POOLS: tuple[NodePool, ...] = tuple(p for p in DEFAULT_LAYOUT if p.gpu is None)
"""The CPU pools of :data:`DEFAULT_LAYOUT` (``system``)."""


def node_manifest(pool: NodePool, index: int, *, slot: int) -> JSON:
    """The Node object for node ``index`` of ``pool``; ``slot`` picks its IP and pod CIDR."""
    name = pool.node_name(index)
    node_ip = str(NODE_IP_RANGE.network_address + 2 + slot)
    pod_cidr = f"{POD_CIDR_RANGE.network_address + 256 * slot}/24"
    resources = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": pool.pods,
        "ephemeral-storage": "1Ti",
    }
    labels = {
        "type": "kwok",
        KWOK_ANNOTATION: "fake",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "node.kubernetes.io/instance-type": pool.node_instance_type,
        "topology.kubernetes.io/zone": pool.zones[index % len(pool.zones)],
        CAPACITY_TYPE_LABEL: pool.capacity_type,
        POOL_LABEL: pool.name,
    }
    taints: list[JSON] = []
    if pool.gpu is not None:
        resources[GPU_RESOURCE] = str(pool.gpus_per_node)
        labels |= {
            GPU_PRODUCT_LABEL: pool.gpu.product,
            "nvidia.com/gpu.count": str(pool.gpus_per_node),
            "nvidia.com/gpu.memory": str(pool.gpu.memory_mib),
            "nvidia.com/gpu.present": "true",
        }
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": labels,
        },
        "spec": {
            "providerID": f"kwok://{name}",
            "podCIDR": pod_cidr,
            "podCIDRs": [pod_cidr],
            "taints": taints,
        },
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "addresses": [
                {"type": "InternalIP", "address": node_ip},
                {"type": "Hostname", "address": name},
            ],
        },
    }


def _used_slots(api: KubeApi) -> set[int]:
    slots: set[int] = set()
    for node in api.get("/api/v1/nodes").get("items", []):
        cidr = node.get("spec", {}).get("podCIDR")
        if not cidr:
            continue
        net = ipaddress.ip_network(cidr, strict=False)
        if net.subnet_of(POD_CIDR_RANGE):  # type: ignore[arg-type]
            slots.add((int(net.network_address) - int(POD_CIDR_RANGE.network_address)) // 256)
    return slots


def _free_slots(api: KubeApi, count: int, *, first: int = 0) -> list[int]:
    used = _used_slots(api)
    out: list[int] = []
    slot = first
    while len(out) < count:
        if slot not in used:
            out.append(slot)
        slot += 1
    return out


def _existing_indexes(api: KubeApi, pool: NodePool) -> set[int]:
    nodes = api.get("/api/v1/nodes", labelSelector=f"{POOL_LABEL}={pool.name}").get("items", [])
    prefix = f"{pool.name}-"
    out: set[int] = set()
    for node in nodes:
        suffix = node["metadata"]["name"].removeprefix(prefix)
        if suffix.isdigit():
            out.add(int(suffix))
    return out


def add_nodes(api: KubeApi, pool: NodePool, count: int, *, first_slot: int = 0) -> list[str]:
    """Add ``count`` nodes to ``pool`` (next free indexes, and free slots from ``first_slot``);
    return their names."""
    taken = _existing_indexes(api, pool)
    indexes: list[int] = []
    i = 0
    while len(indexes) < count:
        if i not in taken:
            indexes.append(i)
        i += 1
    names: list[str] = []
    for index, slot in zip(indexes, _free_slots(api, count, first=first_slot), strict=True):
        manifest = node_manifest(pool, index, slot=slot)
        api.create("/api/v1/nodes", manifest)
        names.append(manifest["metadata"]["name"])
    return names


def create_pools(
    api: KubeApi,
    layout: Sequence[NodePool] = DEFAULT_LAYOUT,
    *,
    wait: bool = True,
    timeout: float = 60.0,
    first_slot: int = 0,
) -> list[str]:
    """Create every pool of ``layout`` (idempotent: only missing nodes are added).

    ``first_slot`` shifts the nodes' IPs and pod CIDRs: two clusters on one machine whose pods
    are served by processes (the pod supervisor) must not hand out the same pod IPs, or one
    cluster's clients reach the other's pods (slot 3000: pod CIDR 127.75.184.0/24 onwards)."""
    names: list[str] = []
    for pool in layout:
        missing = pool.nodes - len(_existing_indexes(api, pool))
        if missing > 0:
            names += add_nodes(api, pool, missing, first_slot=first_slot)
    if wait:
        wait_ready(api, [n for pool in layout for n in pool_nodes(api, pool.name)], timeout=timeout)
    return names


def pool_nodes(api: KubeApi, pool_name: str) -> list[str]:
    items = api.get("/api/v1/nodes", labelSelector=f"{POOL_LABEL}={pool_name}").get("items", [])
    return sorted(n["metadata"]["name"] for n in items)


def is_ready(node: JSON) -> bool:
    for cond in node.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def wait_ready(api: KubeApi, names: Iterable[str], *, timeout: float = 60.0) -> None:
    """Wait until kwok reports every named node Ready."""
    pending = set(names)
    deadline = time.monotonic() + timeout
    while pending:
        for name in sorted(pending):
            try:
                if is_ready(api.get(f"/api/v1/nodes/{name}")):
                    pending.discard(name)
            except ApiError:
                pass
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"nodes not Ready after {timeout:.0f}s: {sorted(pending)} "
                "(is kwok running? see its log)"
            )
        time.sleep(0.2)


def cordon(api: KubeApi, name: str, *, unschedulable: bool = True) -> None:
    """Mark a node (un)schedulable, like ``kubectl cordon`` / ``uncordon``."""
    api.patch(f"/api/v1/nodes/{name}", {"spec": {"unschedulable": unschedulable}})


def uncordon(api: KubeApi, name: str) -> None:
    cordon(api, name, unschedulable=False)


def _pods_on(api: KubeApi, name: str) -> list[JSON]:
    items: list[JSON] = api.get("/api/v1/pods", fieldSelector=f"spec.nodeName={name}").get(
        "items", []
    )
    return items


def _evictable(pod: JSON) -> bool:
    meta = pod["metadata"]
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return False
    owners = meta.get("ownerReferences") or []
    return not any(o.get("kind") == "DaemonSet" for o in owners)


def drain(api: KubeApi, name: str, *, timeout: float = 120.0) -> None:
    """Cordon, then evict every pod (Eviction API: PodDisruptionBudgets are honoured) and wait.

    Raises TimeoutError naming the pods left if eviction stays blocked (e.g. by a PDB).
    """
    cordon(api, name)
    deadline = time.monotonic() + timeout
    while True:
        pods = [p for p in _pods_on(api, name) if _evictable(p)]
        if not pods:
            return
        blocked: list[str] = []
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                blocked.append(f"{meta['namespace']}/{meta['name']} (terminating)")
                continue
            try:
                api.create(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction",
                    {
                        "apiVersion": "policy/v1",
                        "kind": "Eviction",
                        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    },
                )
            except ApiError as err:
                if err.status == 404:
                    continue
                if err.status != 429:
                    raise
                blocked.append(f"{meta['namespace']}/{meta['name']} ({err})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"draining {name}: pods not evicted after {timeout:.0f}s: {blocked}")
        time.sleep(0.5)


def delete_node(
    api: KubeApi, name: str, *, drain_first: bool = True, timeout: float = 120.0
) -> None:
    """Delete a node, draining it first (set ``drain_first=False`` to simulate a sudden loss)."""
    if drain_first:
        drain(api, name, timeout=timeout)
    api.delete(f"/api/v1/nodes/{name}")


def delete_pool(api: KubeApi, pool_name: str, *, drain_first: bool = True) -> None:
    for name in pool_nodes(api, pool_name):
        delete_node(api, name, drain_first=drain_first)
