"""The router image, the harness and the default config run one vllm-router release."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from magistral_operator.api.config import DEFAULT_ROUTER_IMAGE

ROOT = Path(__file__).resolve().parents[2]


def _pins(text: str) -> set[str]:
    return set(re.findall(r"vllm-router==([0-9][0-9.]*)", text))


def test_one_vllm_router_release_everywhere() -> None:
    (dev,) = _pins((ROOT / "pyproject.toml").read_text())  # what the tests and harness run
    assert _pins((ROOT / "router" / "Dockerfile").read_text()) == {dev}
    assert DEFAULT_ROUTER_IMAGE.endswith(f"-vllm-router{dev}")
    example = yaml.safe_load((ROOT / "examples" / "operator-config.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "magistral-operator" / "values.yaml").read_text())
    assert example["routerImage"] == values["config"]["routerImage"] == DEFAULT_ROUTER_IMAGE
