"""`magistral-operator render` and `check-config`, as a reviewer in a GitOps pipeline runs them."""

from __future__ import annotations

import json
import logging
import re
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


def test_a_bad_log_level_from_the_environment_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAGISTRAL_LOG_LEVEL", "loud")
    with pytest.raises(SystemExit) as exited:
        main(["run", "--config", CONFIG])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--log-level: 'loud' is not one of debug, info, warning" in err
    assert "$MAGISTRAL_LOG_LEVEL" in err


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("MAGISTRAL_LEASE_DURATION_SECONDS", "fifteen"),
        ("MAGISTRAL_RENEW_DEADLINE_SECONDS", "-1"),
        ("MAGISTRAL_RETRY_PERIOD_SECONDS", "nan"),
    ],
)
def test_bad_lease_seconds_from_the_environment_are_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SystemExit) as exited:
        main(["run", "--config", CONFIG])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{value!r} is not a positive number of seconds (from the flag or ${env})" in err


def test_lease_seconds_default_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from magistral_operator.cli import build_parser

    args = build_parser().parse_args(["run"])
    assert (args.lease_duration, args.renew_deadline, args.retry_period) == (15.0, 10.0, 2.0)
    monkeypatch.setenv("MAGISTRAL_LEASE_DURATION_SECONDS", "30")
    assert build_parser().parse_args(["run"]).lease_duration == 30.0
    assert build_parser().parse_args(["run", "--lease-duration", "20.5"]).lease_duration == 20.5


@pytest.mark.parametrize(
    ("flags", "shown", "hidden"),
    [
        ([], "INFO", "DEBUG"),
        (["--log-level", "warning"], "WARNING", "INFO"),
        (["--log-level", "debug"], "DEBUG", "nothing"),
    ],
)
def test_run_logs_info_lines_with_a_time(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    shown: str,
    hidden: str,
) -> None:
    """kopf.run() leaves logging alone: `run` configures it, so a pass's INFO line (what it
    applied) reaches the pod's log, with a timestamp, at the level asked for."""
    import kopf

    from magistral_operator.kube import client as kube_client

    def fake_run(**_: object) -> None:
        log = logging.getLogger("magistral_operator.handlers.reconcile")
        log.debug("DEBUG line")
        log.info("INFO line")
        log.warning("WARNING line")

    monkeypatch.setattr(kube_client, "load_api_client", kube_client.client.ApiClient)
    monkeypatch.setattr(kopf, "run", fake_run)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    assert main(["run", "--config", CONFIG, *flags]) == 0
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if f"{shown} line" in x)
    assert re.match(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line), line
    assert f"{hidden} line" not in err


def test_run_logs_json_when_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kopf

    from magistral_operator.kube import client as kube_client

    monkeypatch.setattr(kube_client, "load_api_client", kube_client.client.ApiClient)
    monkeypatch.setattr(
        kopf, "run", lambda **_: logging.getLogger("magistral_operator").info("applied x")
    )
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    assert main(["run", "--config", CONFIG, "--log-format", "json"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "applied x" in x]
    assert json.loads(lines[0])["message"] == "applied x"
