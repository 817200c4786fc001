"""The invalid-endpoint catalogue shared by unit and cluster tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CATALOGUE = Path(__file__).with_name("invalid-endpoints.yaml")


@dataclass(frozen=True)
class InvalidCase:
    case: str
    expect: tuple[str, ...]
    spec: dict[str, Any]
    operator_only: bool

    def manifest(self, *, name: str, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": name, "namespace": namespace},
            "spec": self.spec,
        }


def invalid_cases() -> list[InvalidCase]:
    raw = yaml.safe_load(CATALOGUE.read_text())
    return [
        InvalidCase(
            case=item["case"],
            expect=tuple(item["expect"]),
            spec=item["spec"],
            operator_only=bool(item.get("operatorOnly", False)),
        )
        for item in raw
    ]
