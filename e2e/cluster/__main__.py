"""Command line for the local cluster.

    python -m e2e.cluster up [--state-dir D] [--no-nodepools]   start it, leave it running
        [--first-slot N] [--audit-reads-of USER]                (node slots; log USER's reads)
    python -m e2e.cluster status [--state-dir D]                what runs, is it ready
    python -m e2e.cluster down [--state-dir D] [--keep-state]   stop it, verify nothing is left
    python -m e2e.cluster env [--state-dir D]                   print `export KUBECONFIG=…`

``up`` prints the admin kubeconfig path on stdout; the state directory holds
``state.json`` (ports, pids, timings), ``logs/``, ``kubeconfigs/`` and ``pki/``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from e2e.cluster.cluster import STATE_FILE, LocalCluster
from e2e.cluster.kubeapi import ApiError
from e2e.cluster.nodepools import DEFAULT_LAYOUT, create_pools, is_ready
from e2e.cluster.processes import ComponentError


def default_state_dir() -> Path:
    """``$MAGISTRAL_E2E_STATE`` or ``<tmp>/magistral-e2e-<uid>/cluster``."""
    explicit = os.environ.get("MAGISTRAL_E2E_STATE")
    if explicit:
        return Path(explicit)
    return Path(tempfile.gettempdir()) / f"magistral-e2e-{os.getuid()}" / "cluster"


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_up(
    state_dir: Path,
    *,
    nodepools: bool,
    verbosity: int,
    first_slot: int = 0,
    audit_reads_of: Sequence[str] = (),
) -> int:
    cluster = LocalCluster(
        state_dir, keep_state=True, verbosity=verbosity, audit_reads_of=audit_reads_of
    )
    try:
        cluster.start()
    except (ComponentError, RuntimeError, OSError) as err:
        _err(f"error: {err}")
        return 1
    if nodepools:
        try:
            created = create_pools(cluster.api(), DEFAULT_LAYOUT, first_slot=first_slot)
        except (ApiError, TimeoutError) as err:
            _err(f"error: creating node pools: {err}")
            return 1
        _err(
            f"node pools ready: {', '.join(p.name for p in DEFAULT_LAYOUT)} ({len(created)} nodes)"
        )
    _err(f"state: {state_dir}   stop with: python -m e2e.cluster down --state-dir {state_dir}")
    print(cluster.kubeconfig)
    return 0


def cmd_down(state_dir: Path, *, keep_state: bool) -> int:
    if not (state_dir / STATE_FILE).exists():
        _err(f"no cluster state in {state_dir}; nothing to stop")
        return 0
    cluster = LocalCluster.attach(state_dir)
    cluster.keep_state = keep_state
    try:
        cluster.stop()
    except ComponentError as err:
        _err(f"error: {err}")
        return 1
    _err(
        "cluster stopped; no process left "
        + (f"(state kept in {state_dir})" if keep_state else "(state removed)")
    )
    return 0


def cmd_status(state_dir: Path) -> int:
    if not (state_dir / STATE_FILE).exists():
        _err(f"no cluster state in {state_dir}")
        return 1
    cluster = LocalCluster.attach(state_dir)
    assert cluster.state is not None
    alive = {p.name for p in cluster.running_processes()}
    ok = True
    for proc in cluster.state.processes:
        running = proc.name in alive
        ok &= running
        print(
            f"{proc.name:26} pid {proc.pid:<8} {'running' if running else 'NOT RUNNING'}"
            f"  log {proc.log}"
        )
    if not cluster.state.processes:
        print("no component processes recorded (stopped)")
        return 1
    try:
        api = cluster.api()
        ready = api.get_text("/readyz").strip()
        nodes = api.get("/api/v1/nodes").get("items", [])
        n_ready = sum(1 for n in nodes if is_ready(n))
        print(f"apiserver {cluster.server}: readyz={ready}; nodes {n_ready}/{len(nodes)} Ready")
    except (ApiError, OSError) as err:
        print(f"apiserver {cluster.server}: unreachable: {err}")
        ok = False
    print(f"kubeconfig {cluster.kubeconfig}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("up", "start the cluster and leave it running"),
        ("down", "stop the cluster"),
        ("status", "show the cluster's processes and readiness"),
        ("env", "print an export line for KUBECONFIG"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--state-dir", type=Path, default=default_state_dir(), help="state directory"
        )
        if name == "up":
            p.add_argument(
                "--no-nodepools",
                action="store_true",
                help="do not create the default node pools (GPU and CPU)",
            )
            p.add_argument(
                "-v", "--verbosity", type=int, default=0, help="klog verbosity of components"
            )
            p.add_argument(
                "--audit-reads-of",
                action="append",
                default=[],
                metavar="USER",
                help="also audit-log this user's get/list/watch requests (repeatable; "
                "default: only writes are logged)",
            )
            p.add_argument(
                "--first-slot",
                type=int,
                default=0,
                help="first node slot (IP and pod CIDR) of the node pools: another cluster on "
                "this machine whose pods are served by processes must not share pod IPs",
            )
        if name == "down":
            p.add_argument(
                "--keep-state", action="store_true", help="keep logs and state after stopping"
            )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    if args.command == "up":
        return cmd_up(
            state_dir,
            nodepools=not args.no_nodepools,
            verbosity=args.verbosity,
            first_slot=args.first_slot,
            audit_reads_of=args.audit_reads_of,
        )
    if args.command == "down":
        return cmd_down(state_dir, keep_state=args.keep_state)
    if args.command == "status":
        return cmd_status(state_dir)
    print(f"export KUBECONFIG={state_dir / 'kubeconfigs' / 'admin.kubeconfig'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
