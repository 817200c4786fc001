"""`magistral-operator render` and `check-config`, as a reviewer in a GitOps pipeline runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from magistral_operator.cli import main

from .conftest import EXAMPLES

CONFIG = str(EXAMPLES / "operator-config.yaml")


def test_render_prints_valid_manifests_with_tp_and_args(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["render", "-f", str(EXAMPLES / "magistral-small.yaml"), "--config", CONFIG])
    out = capsys.readouterr().out
    assert code == 0
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",  # two pools' engines
        "Deployment",
        "Deployment",  # the router
        "NetworkPolicy",  # engines
        "NetworkPolicy",  # routers
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",  # the endpoint's (routers)
        "Service",  # headless, the engines
        "ServiceAccount",
    ]
    assert "TP=1" in out  # the sizing note
    assert "magistral.dev/tensor-parallel-size: '1'" in out
    assert "vllm serve mistralai/Magistral-Small-2506" in out
    assert "--tensor-parallel-size 1" in out


def test_render_bad_endpoint_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: magistral.dev/v1alpha1\nkind: MagistralEndpoint\nmetadata: {name: x}\n"
        "spec: {gpu: {tensorParallelSize: 3}, auth: {disabled: true}}\n"
    )
    assert main(["render", "-f", str(bad), "--config", CONFIG]) == 2
    err = capsys.readouterr().err
    assert "spec.gpu.tensorParallelSize" in err
    assert "Traceback" not in err


def test_render_unknown_pool_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: magistral.dev/v1alpha1\nkind: MagistralEndpoint\nmetadata: {name: x}\n"
        "spec: {gpu: {pools: [nope]}, auth: {disabled: true}}\n"
    )
    assert main(["render", "-f", str(bad), "--config", CONFIG]) == 2
    assert "spec.gpu.pools[0]: unknown pool 'nope'" in capsys.readouterr().err


def test_bad_operator_config_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("defaultImage: x\npools:\n- {name: a, tier: cheap}\n")
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "pools[0].tier" in err
    assert "pools[0].gpuProduct" in err


def test_console_script_runs() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "magistral_operator.cli",
            "render",
            "-f",
            str(EXAMPLES / "magistral-small.yaml"),
            "--config",
            CONFIG,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: Deployment" in done.stdout


def test_run_with_bad_config_stops_before_touching_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("defaultImage: x\npools: []\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "pools: List should have at least 1 item" in capsys.readouterr().err
