"""`make demo`: the whole product on one machine, with no GPU and no Docker.

Builds (or reuses) the control plane's binaries, starts the cluster with simulated GPU pools
(and a CPU pool), installs the chart (CRDs, ServiceAccount, RBAC, operator config), runs the
operator as a local process under the chart's ServiceAccount, runs an engine simulator for each
serving pod, applies the example endpoint and shows where it landed. Everything keeps running
until `make demo-down`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.nodepools import create_pools
from e2e.install import (
    CHART,
    OPERATOR_NAMESPACE,
    RELEASE,
    SERVICE_ACCOUNT,
    kubectl,
    tool,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "magistral-small.yaml"


def default_state_dir() -> Path:
    env = os.environ.get("MAGISTRAL_DEMO_STATE")
    return Path(env) if env else Path(tempfile.gettempdir()) / f"magistral-demo-{os.getuid()}"


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _spawn(argv: list[str], *, log: Path, env: dict[str, str]) -> int:
    handle = log.open("ab")
    proc = subprocess.Popen(
        argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    return proc.pid


def _pids_file(state: Path) -> Path:
    return state / "demo-pids.json"


def up(state: Path) -> int:
    cluster_dir = state / "cluster"
    if (state / "demo-pids.json").exists():
        print(f"a demo is already running from {state}; stop it with: make demo-down", flush=True)
        return 1
    say("building or reusing the control plane binaries (cold: about 10 minutes, once)")
    tool("kube-apiserver")
    say("starting the local control plane on 127.0.0.1")
    cluster = LocalCluster(cluster_dir)
    cluster.start()
    admin = cluster.kubeconfig
    say("creating simulated node pools (kwok): GPU pools and a CPU pool for the routers")
    create_pools(cluster.api())

    say("helm install (CRDs, ServiceAccount, RBAC, operator config)")
    subprocess.run(
        [
            str(tool("helm")),
            "upgrade",
            "--install",
            RELEASE,
            str(CHART),
            f"--kubeconfig={admin}",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            # kwok nodes run no containers: the operator runs below as a local process.
            "--set",
            "replicas=0",
            "--wait",
        ],
        check=True,
    )
    sa_kubeconfig = cluster.kubeconfig_for_service_account(
        OPERATOR_NAMESPACE, SERVICE_ACCOUNT, create=False
    )
    config_yaml = kubectl(
        admin,
        "-n",
        OPERATOR_NAMESPACE,
        "get",
        "configmap",
        f"{RELEASE}-config",
        "-o",
        "jsonpath={.data.config\\.yaml}",
    )
    config_path = state / "operator-config.yaml"
    config_path.write_text(config_yaml)

    say("starting the operator under the chart's ServiceAccount (log: operator.log)")
    env = {**os.environ, "KUBECONFIG": str(sa_kubeconfig), "PYTHONUNBUFFERED": "1"}
    pids = {
        "operator": _spawn(
            [sys.executable, "-m", "magistral_operator.cli", "run", "--config", str(config_path)],
            log=state / "operator.log",
            env=env,
        )
    }
    supervisor = ROOT / "e2e" / "engine" / "supervisor.py"
    if supervisor.exists():
        say("starting engine simulators for serving pods (log: engines.log)")
        pids["engines"] = _spawn(
            [
                sys.executable,
                "-m",
                "e2e.engine.supervisor",
                "--kubeconfig",
                str(admin),
                "--",
                # Short answers so a demo request returns in a few seconds.
                "--output-tokens-min",
                "40",
                "--output-tokens-max",
                "120",
            ],
            log=state / "engines.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _pids_file(state).write_text(json.dumps(pids))

    say("applying examples/magistral-small.yaml with its API key Secret")
    kubectl(
        admin,
        "create",
        "secret",
        "generic",
        "magistral-small-api-key",
        "--from-literal=api-key=demo-key",
        check=False,
    )
    kubectl(admin, "apply", "-f", str(EXAMPLE))
    say("waiting for the endpoint to become Ready")
    kubectl(
        admin,
        "wait",
        "mep/magistral-small",
        "--for=condition=Ready",
        "--timeout=120s",
    )
    print(kubectl(admin, "get", "mep", "-o", "wide"))
    print(
        kubectl(
            admin,
            "get",
            "pods",
            "-l",
            "magistral.dev/endpoint=magistral-small",
            "-o",
            "custom-columns=POD:.metadata.name,COMPONENT:.metadata.labels.app\\.kubernetes\\.io/"
            "component,NODE:.spec.nodeName,IP:.status.podIP,"
            "READY:.status.conditions[?(@.type=='Ready')].status",
        )
    )
    print(kubectl(admin, "get", "nodes", "-L", "magistral.dev/pool,karpenter.sh/capacity-type"))

    def first_ip(component: str) -> str:
        return kubectl(
            admin,
            "get",
            "pods",
            "-l",
            f"magistral.dev/endpoint=magistral-small,app.kubernetes.io/component={component}",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        )

    router_ip, engine_ip = first_ip("router"), first_ip("inference")
    kubectl_path = tool("kubectl")
    print(
        f"""
The endpoint is up. Requests go through a router pod (the Service's target: vllm-router behind
the front that holds requests at zero replicas) to an engine pod. Try:

  export KUBECONFIG={admin}
  {kubectl_path} get mep magistral-small -o yaml        # status: sizing, router, autoscaler
  {kubectl_path} describe mep magistral-small           # conditions and events
  curl -s http://{router_ip}:8000/v1/chat/completions -H 'Authorization: Bearer demo-key' \\
       -H 'Content-Type: application/json' \\
       -d '{{"model":"magistral-small","messages":[{{"role":"user","content":"Hi"}}]}}'
       # through the router pod's loopback address to an engine simulator behind the real
       # runtime middleware: reasoning split into "reasoning", system prompt inserted
  curl -s http://{router_ip}:9090/demand                  # what the autoscaler reads
  curl -s http://{engine_ip}:8000/magistral/ready         # an engine's deep readiness

Logs: {state}/operator.log, {state}/engines.log, {cluster_dir}/logs/
Stop everything: make demo-down
"""
    )
    return 0


def down(state: Path) -> int:
    pids_file = _pids_file(state)
    if pids_file.exists():
        for name, pid in json.loads(pids_file.read_text()).items():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
                say(f"stopped {name} (pid {pid})")
        time.sleep(1)
        for pid in json.loads(pids_file.read_text()).values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        pids_file.unlink()
    cluster_dir = state / "cluster"
    if (cluster_dir / "state.json").exists():
        LocalCluster.attach(cluster_dir).stop()
        say("cluster stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    args = parser.parse_args(argv)
    state: Path = args.state_dir
    state.mkdir(parents=True, exist_ok=True)
    return up(state) if args.command == "up" else down(state)


if __name__ == "__main__":
    sys.exit(main())
