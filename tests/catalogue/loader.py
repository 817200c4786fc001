"""The endpoint catalogue shared by unit and cluster tests (see endpoints.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

CATALOGUE = Path(__file__).with_name("endpoints.yaml")

Outcome = Literal["rejected", "degraded", "served"]
_REPEAT = re.compile(r"<<repeat:(?P<text>.+?):(?P<count>[0-9]+)>>")


@dataclass(frozen=True)
class Case:
    """One endpoint a user may write, and what every reader of it must do."""

    case: str
    outcome: Outcome
    expect: tuple[str, ...]
    spec: dict[str, Any]
    name: str | None = None
    reason: str | None = None  # the Degraded reason, for outcome degraded
    render_rejects: bool = False  # `magistral-operator render` refuses it (beyond pydantic)
    objects: tuple[dict[str, Any], ...] = ()

    def manifest(self, *, name: str, namespace: str) -> dict[str, Any]:
        """The MagistralEndpoint (the case's own name when it is about the name)."""
        return {
            "apiVersion": "magistral.dev/v1alpha1",
            "kind": "MagistralEndpoint",
            "metadata": {"name": self.name or name, "namespace": namespace},
            "spec": self.spec,
        }

    @property
    def offline_rejects(self) -> bool:
        """Whether pydantic or render must refuse it."""
        return self.outcome == "rejected" or self.render_rejects


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _REPEAT.sub(lambda m: m.group("text") * int(m.group("count")), value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def catalogue() -> list[Case]:
    """Every case, in file order."""
    raw = yaml.safe_load(CATALOGUE.read_text())
    cases = []
    for item in raw:
        outcome = item.get("outcome", "rejected")
        if outcome not in ("rejected", "degraded", "served"):
            raise ValueError(f"{item['case']}: unknown outcome {outcome!r}")
        if outcome != "served" and not item.get("expect"):
            raise ValueError(f"{item['case']}: a {outcome} case needs expect fragments")
        if outcome == "degraded" and not item.get("reason"):
            raise ValueError(f"{item['case']}: a degraded case needs its reason")
        cases.append(
            Case(
                case=item["case"],
                outcome=outcome,
                expect=tuple(item.get("expect") or ()),
                spec=_expand(item["spec"]),
                name=item.get("name"),
                reason=item.get("reason"),
                render_rejects=item.get("render") == "rejected",
                objects=tuple(item.get("objects") or ()),
            )
        )
    names = [c.case for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"duplicate case names: {sorted(duplicates)}")
    return cases


def invalid_cases() -> list[Case]:
    """Cases the API server refuses outright (kept for older tests)."""
    return [c for c in catalogue() if c.outcome == "rejected"]
