"""`python -m e2e.tour`: the endpoints of docs/kubectl.md, one per situation a user meets.

Run it after `make demo` (which applies `magistral-small`): it applies seven more endpoints to
namespace `default`, waits until each shows the state the docs describe, and prints what
`kubectl get mep` and `kubectl get mep -o wide` show then. That output is what docs/kubectl.md
holds. `python -m e2e.tour delete` removes the seven again.

The endpoints reuse the demo's API key Secret (`magistral-small-api-key`). `crashing` sets
`E2E_SIM_FAIL` through `spec.runtime.env`: the demo's pod supervisor makes such a pod
crash-loop (e2e/cluster/stages.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.stages import SIM_FAIL_ENV
from e2e.demo import EXAMPLE, default_state_dir, say
from e2e.install import kubectl

NAMESPACE = "default"
WAIT_SECONDS = 240


def _endpoint(name: str, **spec: Any) -> dict[str, Any]:
    """The demo's example endpoint, renamed, with `spec` merged in at its top level."""
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body["spec"].get(key), dict):
            body["spec"][key] = {**body["spec"][key], **value}
        else:
            body["spec"][key] = value
    return body


TOUR: list[tuple[dict[str, Any], str, str]] = [
    # (endpoint, condition, the reason to wait for)
    (_endpoint("idle", scaling={"minReplicas": 0}), "Ready", "ScaledToZero"),
    (
        _endpoint("paused", scaling={"minReplicas": 0, "maxReplicas": 0}),
        "Ready",
        "ScaledToZero",
    ),
    (
        _endpoint(
            "too-many",
            gpu={"pools": ["reserved-h100"], "tensorParallelSize": 8},
            scaling={"minReplicas": 3, "maxReplicas": 3},
        ),
        "Degraded",
        "Unschedulable",
    ),
    (
        _endpoint("crashing", runtime={"env": [{"name": SIM_FAIL_ENV, "value": "true"}]}),
        "Degraded",
        "RolloutFailed",
    ),
    (
        _endpoint("on-l40s", gpu={"pools": ["spot-l40s"], "tensorParallelSize": 1}),
        "Degraded",
        "InsufficientGPUMemory",
    ),
    (_endpoint("typo-pool", gpu={"pools": ["reserved-h200"]}), "Degraded", "UnknownPool"),
    (
        _endpoint("other-model", model={"repo": "acme/other-model"}),
        "Degraded",
        "UnknownModel",
    ),
]
"""The seven endpoints beside the demo's `magistral-small`, each with what marks its state."""


def _admin(state: Path) -> Path:
    cluster_dir = state / "cluster"
    if not (cluster_dir / "state.json").exists():
        raise SystemExit(f"no demo cluster in {state}: run `make demo` first")
    return LocalCluster.attach(cluster_dir).kubeconfig


def _wait(admin: Path, name: str, condition: str, reason: str) -> None:
    path = f'{{.status.conditions[?(@.type=="{condition}")].reason}}'
    say(f"waiting for {name}: {condition} reason {reason}")
    kubectl(
        admin,
        "-n",
        NAMESPACE,
        "wait",
        f"mep/{name}",
        f"--for=jsonpath={path}={reason}",
        f"--timeout={WAIT_SECONDS}s",
    )


def apply(state: Path) -> int:
    admin = _admin(state)
    _wait(admin, "magistral-small", "Ready", "ReplicasReady")
    for body, _, _ in TOUR:
        kubectl(admin, "apply", "-f", "-", stdin=json.dumps(body))
    for body, condition, reason in TOUR:
        _wait(admin, body["metadata"]["name"], condition, reason)
    # Its revision proves healthy once its replica has stayed Ready for healthySeconds (120 s).
    say("waiting for magistral-small: rollout Healthy")
    kubectl(
        admin,
        "-n",
        NAMESPACE,
        "wait",
        "mep/magistral-small",
        "--for=jsonpath={.status.rollout.phase}=Healthy",
        f"--timeout={WAIT_SECONDS}s",
    )
    for args in (["get", "mep"], ["get", "mep", "-o", "wide"]):
        print(f"$ kubectl {' '.join(args)}")
        print(kubectl(admin, "-n", NAMESPACE, *args))
    return 0


def delete(state: Path) -> int:
    admin = _admin(state)
    names = [f"mep/{body['metadata']['name']}" for body, _, _ in TOUR]
    kubectl(admin, "-n", NAMESPACE, "delete", "--ignore-not-found", *names)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.tour", description=__doc__)
    parser.add_argument("command", choices=["apply", "delete"], nargs="?", default="apply")
    parser.add_argument("--state-dir", type=Path, default=default_state_dir())
    args = parser.parse_args(argv)
    return apply(args.state_dir) if args.command == "apply" else delete(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
