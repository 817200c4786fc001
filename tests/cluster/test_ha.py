"""Active/standby: two operator processes under the chart's ServiceAccount elect one leader
through a Lease; the leader is killed (SIGKILL), the standby takes over within the bound and
reconciles a spec change made meanwhile; the API server's audit log shows that at no point did
both write."""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.cluster.cluster import LocalCluster
from e2e.install import OPERATOR_NAMESPACE, SERVICE_ACCOUNT, install_operator_rbac
from e2e.operator_process import OperatorProcess
from e2e.stalls import process_heartbeat

from .audit import OPERATOR_USER, AttributedWrite, attributed_writes, log_size
from .conftest import apply_manifest, endpoint_manifest, get_endpoint, ready_status, wait_for

# Short timings for the test (the chart's defaults are client-go's 15 s / 10 s / 2 s;
# MAGISTRAL_HA_TIMINGS=15,10,2 runs the test with them).
LEASE, RENEW, RETRY = (float(x) for x in os.environ.get("MAGISTRAL_HA_TIMINGS", "6,4,1").split(","))
TAKEOVER_BOUND = LEASE + 2 * RETRY  # leadership.LeaseTiming.takeover_bound
SLACK = 2.0  # a Lease read and write on a loaded 2-core machine


def token_jti(kubeconfig: Path) -> str:
    """The credential id the API server records for this kubeconfig's ServiceAccount token."""
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}"


def lease_holder(api: client.ApiClient, name: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, OPERATOR_NAMESPACE)
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    holder: str | None = lease.spec.holder_identity
    return holder


@pytest.fixture
def no_standalone_operator(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's standalone operator (if another test started it) pauses meanwhile: it
    watches every namespace and would reconcile this test's endpoint too."""
    proc: OperatorProcess | None = None
    if _session_operator_running(request):
        proc = request.getfixturevalue("operator")
    if proc is not None:
        proc.stop()
    yield
    if proc is not None:
        proc.start()


def _session_operator_running(request: pytest.FixtureRequest) -> bool:
    # getfixturevalue would start it: look whether the session has already made one.
    manager = request._fixturemanager
    for definition in manager.getfixturedefs("operator", request.node) or ():
        if getattr(definition, "cached_result", None) is not None:
            return True
    return False


def two_operators(
    cluster: LocalCluster, tmp_path: Path, lease_name: str
) -> tuple[dict[str, OperatorProcess], dict[str, str]]:
    """op-a and op-b, each with a token of its own for the chart's ServiceAccount; and which
    process each token's credential id belongs to."""
    procs: dict[str, OperatorProcess] = {}
    credentials: dict[str, str] = {}
    for identity in ("op-a", "op-b"):
        minted = cluster.kubeconfig_for_service_account(OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
        kubeconfig = tmp_path / f"{identity}.kubeconfig"
        shutil.copy(minted, kubeconfig)
        credentials[token_jti(kubeconfig)] = identity
        procs[identity] = OperatorProcess(
            kubeconfig=kubeconfig,
            log_file=tmp_path / f"{identity}.log",
            # Cluster-wide, like the chart's default (a namespace list makes kopf list
            # namespaces, which the ServiceAccount may not).
            extra_args=(
                "--leader-elect",
                f"--leader-elect-namespace={OPERATOR_NAMESPACE}",
                f"--leader-elect-lease-name={lease_name}",
                f"--leader-elect-identity={identity}",
                f"--lease-duration={LEASE}",
                f"--renew-deadline={RENEW}",
                f"--retry-period={RETRY}",
            ),
        )
    return procs, credentials


def deployment_replicas(api: client.ApiClient, namespace: str, endpoint: str) -> int:
    apps = client.AppsV1Api(api)
    deployments = apps.list_namespaced_deployment(
        namespace,
        label_selector=f"magistral.dev/endpoint={endpoint},app.kubernetes.io/component=inference",
    )
    return sum(d.spec.replicas or 0 for d in deployments.items)


@pytest.mark.usefixtures("no_standalone_operator")
def test_standby_takes_over_within_the_bound_and_never_writes_while_the_leader_does(
    cluster: LocalCluster,
    admin_kubeconfig: Path,
    api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    install_operator_rbac(admin_kubeconfig, "--set", "leaderElection.enabled=true")
    lease_name = f"ha-{namespace}"
    offset = log_size(cluster.audit_log)

    procs, credentials = two_operators(cluster, tmp_path, lease_name)
    assert len(credentials) == 2
    a, b = procs["op-a"], procs["op-b"]
    try:
        a.start()
        wait_for("op-a to lead", lambda: lease_holder(api, lease_name) == "op-a", timeout=120)
        b.start()
        time.sleep(2 * RETRY)  # b has read the Lease and waits
        assert lease_holder(api, lease_name) == "op-a"

        # Created and changed while op-a leads.
        name = "ha"
        apply_manifest(admin_kubeconfig, endpoint_manifest(name, namespace))
        wait_for("the endpoint Ready", ready_status(api, namespace, name, 1), timeout=90)
        apply_manifest(
            admin_kubeconfig,
            endpoint_manifest(name, namespace, scaling={"minReplicas": 2, "maxReplicas": 4}),
        )
        wait_for("2 replicas Ready", ready_status(api, namespace, name, 2), timeout=90)

        # Kill the leader, and change the spec at once: only a new leader can serve it.
        a.kill()
        killed = time.monotonic()
        killed_wall = datetime.now(UTC)
        apply_manifest(
            admin_kubeconfig,
            endpoint_manifest(name, namespace, scaling={"minReplicas": 3, "maxReplicas": 4}),
        )
        wait_for(
            "op-b to lead",
            lambda: lease_holder(api, lease_name) == "op-b",
            timeout=TAKEOVER_BOUND + 30,
            interval=0.1,
        )
        seen_leading = time.monotonic() - killed
        wait_for(
            "op-b to reconcile the change",
            lambda: deployment_replicas(api, namespace, name) == 3,
            timeout=120,
            interval=0.1,
        )
        reconciled = time.monotonic() - killed
        obj = wait_for("3 replicas Ready", ready_status(api, namespace, name, 3), timeout=90)
        assert obj["status"]["replicas"] == 3
    finally:
        for proc in procs.values():
            proc.stop()

    # The audit log: every write by the ServiceAccount since the test began, per process.
    everything = attributed_writes(cluster.audit_log, user=OPERATOR_USER, offset=offset)
    ours = [w for w in everything if w.credential in credentials]
    by: dict[str, list[AttributedWrite]] = {"op-a": [], "op-b": []}
    for w in ours:
        by[credentials[w.credential]].append(w)
    work = {k: [w for w in ws if w.resource != "leases"] for k, ws in by.items()}
    for identity, ws in by.items():
        agents = sorted({w.user_agent.split(" ")[0] for w in ws})
        print(f"{identity}: {len(ws)} writes ({len(work[identity])} besides the Lease), {agents}")
    assert work["op-a"], "op-a, the first leader, wrote nothing"
    assert work["op-b"], "op-b never reconciled after the takeover"
    # op-a's writes all precede op-b's first: never both.
    last_a = max(w.received for w in by["op-a"])
    first_b = min(w.received for w in by["op-b"])
    assert last_a < first_b, "both wrote:\n" + "\n".join(map(str, sorted(ours, key=_when)))
    assert last_a <= killed_wall
    # op-b's first write is its takeover of the Lease.
    assert min(by["op-b"], key=_when).resource == "leases"
    # The takeover's time, by the API server's clock: from the kill to op-b's Lease write
    # (what this process saw includes a kubectl apply and its polls); not counting the
    # seconds this process stalled, which a stall of the whole machine shows.
    taken = min(w.received for w in by["op-b"] if w.resource == "leases" and w.code == 200)
    takeover = (taken - killed_wall).total_seconds()
    stalled = process_heartbeat().stalled(killed, killed + takeover)
    print(
        f"\nleader killed → standby's Lease write after {takeover:.1f} s ({stalled:.1f} s "
        f"stalled; seen leading after {seen_leading:.1f} s; bound {TAKEOVER_BOUND:g} s); "
        f"the change made at the kill reached its Deployment after {reconciled:.1f} s"
    )
    assert takeover - stalled <= TAKEOVER_BOUND + SLACK
    # Our own client names each process in its User-Agent (kopf's requests say kopf/...).
    assert {w.user_agent.split(" ")[0] for w in work["op-b"]} <= {
        "magistral-operator/op-b",
        *_kopf_agents(work["op-b"]),
    }
    assert any(w.namespace == namespace for w in work["op-b"])
    assert get_endpoint(api, namespace, name)["spec"]["scaling"]["minReplicas"] == 3


def _when(w: AttributedWrite) -> datetime:
    return w.received


def _kopf_agents(ws: list[AttributedWrite]) -> set[str]:
    return {w.user_agent.split(" ")[0] for w in ws if w.user_agent.startswith("kopf/")}


@pytest.mark.usefixtures("no_standalone_operator")
def test_a_leader_stopped_with_sigterm_hands_over_within_a_retry_period(
    cluster: LocalCluster, admin_kubeconfig: Path, api: client.ApiClient, tmp_path: Path
) -> None:
    """A deleted or upgraded leader pod gives the Lease up: no wait for its expiry."""
    install_operator_rbac(admin_kubeconfig, "--set", "leaderElection.enabled=true")
    lease_name = f"ha-term-{int(time.time())}"
    offset = log_size(cluster.audit_log)
    procs, credentials = two_operators(cluster, tmp_path, lease_name)
    a, b = procs["op-a"], procs["op-b"]
    try:
        a.start()
        wait_for("op-a to lead", lambda: lease_holder(api, lease_name) == "op-a", timeout=120)
        b.start()
        time.sleep(2 * RETRY)
        started = time.monotonic()
        a.stop()  # SIGTERM: kopf's cleanup releases the Lease
        wait_for(
            "op-b to lead",
            lambda: lease_holder(api, lease_name) == "op-b",
            timeout=LEASE + 30,
            interval=0.1,
        )
        seen = time.monotonic() - started
    finally:
        for proc in procs.values():
            proc.stop()
    # By the API server's clock: from op-a's last Lease write (its release) to op-b's first
    # (its takeover). Without the release, op-b would write only once the Lease expired,
    # LEASE seconds after op-a's last renewal.
    leases = [
        w
        for w in attributed_writes(cluster.audit_log, user=OPERATOR_USER, offset=offset)
        if w.credential in credentials
        and w.resource == "leases"
        and w.name == lease_name
        and w.code == 200
    ]
    released = max(w.received for w in leases if credentials[w.credential] == "op-a")
    taken = min(w.received for w in leases if credentials[w.credential] == "op-b")
    handover = (taken - released).total_seconds()
    print(
        f"\nleader stopped (SIGTERM) → standby's Lease write {handover:.1f} s after the "
        f"leader's last (seen leading {seen:.1f} s after the SIGTERM)"
    )
    assert 0 < handover < LEASE, "the standby waited for the Lease to expire"
