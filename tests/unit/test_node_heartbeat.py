"""The simulated nodes' heartbeat (e2e/cluster/components.py): kwok's node Lease and the node
controller's grace period follow it; the default is the kubelet's and changes no flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.cluster.cluster import LocalCluster
from e2e.cluster.components import (
    NODE_HEARTBEAT_SECONDS,
    CertPair,
    Layout,
    controller_manager_args,
    kwok_args,
    node_lease_seconds,
    node_monitor_args,
)

PORTS = {"apiserver": 1, "controller-manager": 2, "scheduler": 3, "kwok": 4}


def _pki(tmp_path: Path) -> dict[str, CertPair]:
    pair = CertPair(cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    return {"controller-manager": pair, "sa": pair, "ca": pair}


def _flag(args: list[str], name: str) -> list[str]:
    return [a for a in args if a.startswith(f"--{name}=")]


@pytest.mark.parametrize(
    ("heartbeat", "lease", "grace"),
    [(10, 40, None), (60, 240, "250s"), (2.5, 10, "20s"), (1, 4, "14s")],
)
def test_the_lease_and_the_grace_period_follow_the_heartbeat(
    tmp_path: Path, heartbeat: float, lease: int, grace: str | None
) -> None:
    layout = Layout(state_dir=tmp_path, ports=PORTS)
    kwok = kwok_args(layout, tmp_path / "kc", tmp_path / "cfg", node_heartbeat_seconds=heartbeat)
    assert _flag(kwok, "node-lease-duration-seconds") == [f"--node-lease-duration-seconds={lease}"]
    kcm = controller_manager_args(
        layout, _pki(tmp_path), tmp_path / "kc", node_heartbeat_seconds=heartbeat
    )
    expected = [] if grace is None else [f"--node-monitor-grace-period={grace}"]
    assert _flag(kcm, "node-monitor-grace-period") == expected


def test_the_default_is_the_kubelets_and_adds_no_flag(tmp_path: Path) -> None:
    layout = Layout(state_dir=tmp_path, ports=PORTS)
    assert NODE_HEARTBEAT_SECONDS == 10
    assert node_monitor_args(NODE_HEARTBEAT_SECONDS) == []
    assert controller_manager_args(layout, _pki(tmp_path), tmp_path / "kc") == (
        controller_manager_args(layout, _pki(tmp_path), tmp_path / "kc", node_heartbeat_seconds=10)
    )
    assert "--node-lease-duration-seconds=40" in kwok_args(layout, tmp_path, tmp_path)


@pytest.mark.parametrize("bad", [0, 0.5, -10, float("nan")])
def test_a_heartbeat_under_a_second_is_refused_before_anything_starts(
    tmp_path: Path, bad: float
) -> None:
    with pytest.raises(ValueError, match="node heartbeat"):
        node_lease_seconds(bad)
    with pytest.raises(ValueError, match="node heartbeat"):
        LocalCluster(tmp_path / "state", node_heartbeat_seconds=bad)
    assert not (tmp_path / "state").exists()
