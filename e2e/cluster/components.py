"""What each control-plane component is given: identities, certificates and flags.

Pure configuration for ``cluster.py``: it writes files (PKI, kubeconfigs) into the state
directory and returns command-line flags; it starts nothing. The flag sets follow
envtest's and kwokctl's, tightened for a loopback-only, multi-identity control plane.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from e2e.cluster.kubeconfig import write_kubeconfig
from e2e.cluster.pki import CertificateAuthority, CertPair, service_account_keys

SERVICE_CIDR = "127.96.0.0/16"
"""Service ClusterIPs (loopback: nothing routes them, and nothing may leave the host)."""
POD_CIDR = "127.64.0.0/12"
"""kwok's default pod CIDR; nodes from nodepools.py carry their own /24 inside it."""
DEFAULT_NODE_IP = "127.32.0.1"
"""InternalIP kwok reports for a managed node that has none of its own."""
KWOK_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"
"""Annotation that marks a Node as simulated by our kwok."""
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
PORT_NAMES = ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")

IDENTITIES: dict[str, str] = {
    "admin": "magistral-e2e-admin",
    "controller-manager": "system:kube-controller-manager",
    "scheduler": "system:kube-scheduler",
    "kwok": "system:kwok-controller",
}
"""Client certificate name -> user name (CN). The admin is also in group system:masters."""


@dataclass(frozen=True)
class Layout:
    """Where one cluster keeps its state, and the ports it listens on (all 127.0.0.1)."""

    state_dir: Path
    ports: dict[str, int]
    verbosity: int = 0

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig_dir(self) -> Path:
        return self.state_dir / "kubeconfigs"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"


def make_pki(pki_dir: Path) -> dict[str, CertPair]:
    """CA, serving and client certificates for every component, front proxy, SA keys."""
    ca = CertificateAuthority(pki_dir)
    pairs: dict[str, CertPair] = {"ca": ca.pair}
    kubernetes_service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    pairs["apiserver"] = ca.issue(
        "apiserver",
        common_name="kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=("127.0.0.1", kubernetes_service_ip),
    )
    pairs["admin"] = ca.issue(
        "admin",
        common_name=IDENTITIES["admin"],
        organizations=("system:masters",),
        client=True,
    )
    for name in ("controller-manager", "scheduler"):
        # Client identity towards the apiserver, and serving cert for its own /healthz.
        pairs[name] = ca.issue(
            name,
            common_name=IDENTITIES[name],
            client=True,
            server=True,
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1",),
        )
    pairs["kwok"] = ca.issue("kwok", common_name=IDENTITIES["kwok"], client=True)
    # Front proxy: lets the apiserver proxy to aggregated APIs (e.g. a metrics adapter)
    # and lets delegating components trust its request headers.
    front_proxy = CertificateAuthority(pki_dir / "front-proxy", common_name="front-proxy-ca")
    pairs["front-proxy-ca"] = front_proxy.pair
    pairs["front-proxy-client"] = front_proxy.issue(
        "front-proxy-client", common_name="front-proxy-client", client=True
    )
    pairs["sa"] = service_account_keys(pki_dir)
    return pairs


def write_component_kubeconfigs(layout: Layout, pki: dict[str, CertPair]) -> dict[str, Path]:
    """One kubeconfig per client identity, named ``<identity>.kubeconfig``."""
    return {
        name: write_kubeconfig(
            layout.kubeconfig_dir / f"{name}.kubeconfig",
            server=layout.server,
            ca_file=pki["ca"].cert,
            user=user,
            cert_file=pki[name].cert,
            key_file=pki[name].key,
        )
        for name, user in IDENTITIES.items()
    }


def etcd_args(layout: Layout) -> list[str]:
    client = f"http://127.0.0.1:{layout.ports['etcd']}"
    peer = f"http://127.0.0.1:{layout.ports['etcd-peer']}"
    return [
        "--name=magistral-e2e",
        f"--data-dir={layout.state_dir / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=magistral-e2e={peer}",
        "--initial-cluster-state=new",
        "--auto-compaction-retention=1",
        "--quota-backend-bytes=4294967296",
        "--unsafe-no-fsync=true",  # throw-away data: skip fsync, much faster on shared disks
        "--log-level=warn",
    ]


AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  # Every write, with who made it: tests count the operator's writes from this log.
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
"""
"""The default policy: metadata of every write request, nothing else."""

READ_VERBS = ("get", "list", "watch")


def audit_policy(read_users: Sequence[str] = ()) -> str:
    """The audit policy: metadata of every write; of reads (get, list, watch) too, but only
    those of ``read_users`` (user names, e.g. ``system:serviceaccount:<ns>:<name>``).

    Without ``read_users`` this is :data:`AUDIT_POLICY`. The rules are matched in order: a
    write is logged by the first rule, a listed user's read by the second, anything else not.
    """
    if not read_users:
        return AUDIT_POLICY
    users = ", ".join(json.dumps(user) for user in read_users)
    reads = (
        "  # Reads by the listed users only (bench/scale.py counts the operator's requests).\n"
        "  - level: Metadata\n"
        f"    users: [{users}]\n"
        f"    verbs: [{', '.join(READ_VERBS)}]\n"
    )
    marker = "  - level: None\n"
    return AUDIT_POLICY.replace(marker, reads + marker)


def audit_policy_path(layout: Layout) -> Path:
    return layout.state_dir / "audit-policy.yaml"


def audit_log_path(layout: Layout) -> Path:
    return layout.state_dir / "logs" / "audit.log"


def write_audit_policy(layout: Layout, *, read_users: Sequence[str] = ()) -> Path:
    """The audit policy file (:func:`audit_policy`): every write; reads of ``read_users``."""
    path = audit_policy_path(layout)
    path.write_text(audit_policy(read_users))
    return path


def apiserver_args(layout: Layout, pki: dict[str, CertPair]) -> list[str]:
    return [
        f"--audit-policy-file={audit_policy_path(layout)}",
        f"--audit-log-path={audit_log_path(layout)}",
        "--audit-log-format=json",
        "--audit-log-maxsize=200",
        f"--etcd-servers=http://127.0.0.1:{layout.ports['etcd']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={layout.ports['apiserver']}",
        f"--cert-dir={layout.pki_dir}",
        f"--tls-cert-file={pki['apiserver'].cert}",
        f"--tls-private-key-file={pki['apiserver'].key}",
        f"--client-ca-file={pki['ca'].cert}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki['sa'].cert}",
        f"--service-account-signing-key-file={pki['sa'].key}",
        f"--requestheader-client-ca-file={pki['front-proxy-ca'].cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki['front-proxy-client'].cert}",
        f"--proxy-client-key-file={pki['front-proxy-client'].key}",
        "--authorization-mode=Node,RBAC",
        "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        "--profiling=false",
        f"--v={layout.verbosity}",
    ]


def _delegating_component_args(
    layout: Layout, name: str, pair: CertPair, kubeconfig: Path
) -> list[str]:
    """Flags shared by controller-manager and scheduler (own identity, own /healthz TLS)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports[name]}",
        f"--tls-cert-file={pair.cert}",
        f"--tls-private-key-file={pair.key}",
        "--leader-elect=false",
        "--profiling=false",
        "--kube-api-qps=100",
        "--kube-api-burst=200",
        f"--v={layout.verbosity}",
    ]


# Controllers that can only fail here: kwok hands out loopback pod IPs (POD_CIDR), which
# Endpoints and EndpointSlices refuse ("may not be in the loopback range"), so these retried
# every Service's write without end (about 18,000 refused writes and 12,000 Warning Events
# while 500 endpoints converged, 36 writes/s at rest; docs/scale.md). Nothing in the product
# or the tests reads Endpoints or EndpointSlices: the routers list pods (docs/router-facts.md).
# kube-controller-manager refuses an unknown name, so a rename upstream fails `up` loudly.
DISABLED_CONTROLLERS = (
    "endpoints-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
)


NODE_HEARTBEAT_SECONDS = 10.0
"""How often a simulated node renews its Lease by default: the kubelet's 10 s (a 40 s lease,
renewed every quarter of it, as kwok and the kubelet do)."""


def node_lease_seconds(heartbeat: float) -> int:
    """The node Lease duration whose renewals come every `heartbeat` seconds (kwok renews a
    node's Lease every quarter of its duration, like the kubelet)."""
    if not heartbeat >= 1:
        raise ValueError(f"node heartbeat: at least 1 s, got {heartbeat}")
    return round(4 * heartbeat)


def node_monitor_args(heartbeat: float) -> list[str]:
    """The node controller's grace period for a heartbeat slower than the kubelet's: a node is
    marked NotReady when its Lease has not been renewed for the lease duration plus 10 s (the
    default 50 s grace of a 40 s lease). Nothing for the default heartbeat."""
    if heartbeat == NODE_HEARTBEAT_SECONDS:
        return []
    return [f"--node-monitor-grace-period={node_lease_seconds(heartbeat) + 10}s"]


def controller_manager_args(
    layout: Layout,
    pki: dict[str, CertPair],
    kubeconfig: Path,
    *,
    node_heartbeat_seconds: float = NODE_HEARTBEAT_SECONDS,
) -> list[str]:
    return [
        "--controllers=" + ",".join(["*", *(f"-{c}" for c in DISABLED_CONTROLLERS)]),
        *node_monitor_args(node_heartbeat_seconds),
        *_delegating_component_args(
            layout, "controller-manager", pki["controller-manager"], kubeconfig
        ),
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki['sa'].key}",
        f"--root-ca-file={pki['ca'].cert}",
        f"--cluster-signing-cert-file={pki['ca'].cert}",
        f"--cluster-signing-key-file={pki['ca'].key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def scheduler_args(layout: Layout, pki: dict[str, CertPair], kubeconfig: Path) -> list[str]:
    return _delegating_component_args(layout, "scheduler", pki["scheduler"], kubeconfig)


def kwok_args(
    layout: Layout,
    kubeconfig: Path,
    config: Path,
    *,
    node_heartbeat_seconds: float = NODE_HEARTBEAT_SECONDS,
) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--config={config}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_SELECTOR}",
        f"--cidr={POD_CIDR}",
        f"--node-ip={DEFAULT_NODE_IP}",
        f"--server-address=127.0.0.1:{layout.ports['kwok']}",
        f"--node-port={layout.ports['kwok']}",
        f"--node-lease-duration-seconds={node_lease_seconds(node_heartbeat_seconds)}",
    ]
