"""Shared fixtures for unit tests: the example operator config, endpoint builders, and a
recorder in place of the reconcile pass (for the handlers' wiring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from magistral_operator.api.config import OperatorConfig, load_operator_config
from magistral_operator.api.endpoint import Endpoint, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def reconciled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names `reconcile` was called for (handlers/operator.py's pass replaced by a
    recorder), for tests of what triggers passes."""
    from magistral_operator.handlers import operator as op
    from magistral_operator.handlers.reconcile import Outcome

    names: list[str] = []

    def fake(kube: Any, config: Any, body: dict[str, Any], **_: Any) -> Outcome:
        names.append(body["metadata"]["name"])
        return Outcome()

    monkeypatch.setattr(op, "reconcile", fake)
    return names


@pytest.fixture(scope="session")
def operator_config() -> OperatorConfig:
    return load_operator_config(EXAMPLES / "operator-config.yaml")


def endpoint_from_spec(spec: dict[str, Any], *, name: str = "ep", uid: str = "uid-1") -> Endpoint:
    """A parsed endpoint in namespace `ns` with the given spec."""
    return parse_endpoint(
        {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1},
            "spec": spec,
        }
    )


def load_example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return data
