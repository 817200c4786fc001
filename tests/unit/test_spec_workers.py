"""kopf's executor (the create, spec-change and resume passes) has `MAGISTRAL_SPEC_WORKERS`
threads, 8 unless set (the chart sets it from `specWorkers`, tests/unit/test_chart.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import kopf
import pytest

from magistral_operator.handlers import operator as op


def test_kopf_runs_the_spec_passes_on_spec_workers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(op, "SPEC_WORKERS", 24)
    settings = kopf.OperatorSettings()
    op.configure(settings=settings, memo=kopf.Memo())
    assert settings.execution.max_workers == 24


@pytest.mark.parametrize(("value", "workers"), [(None, 8), ("3", 3)])
def test_the_environment_sets_the_spec_workers(value: str | None, workers: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MAGISTRAL_SPEC_WORKERS"}
    if value is not None:
        env["MAGISTRAL_SPEC_WORKERS"] = value
    code = "from magistral_operator.handlers import operator as op; print(op.SPEC_WORKERS)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(workers)
