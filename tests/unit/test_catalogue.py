"""Every catalogue case through pydantic and `magistral-operator render` (offline readers).

The same cases go through the real API server in tests/cluster/test_catalogue.py; together
they fail on any disagreement between what `kubectl apply`, the operator and a dry run say.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from magistral_operator.api.endpoint import parse_endpoint
from magistral_operator.api.errors import ConfigError
from magistral_operator.cli import main
from tests.catalogue.loader import Case, catalogue

from .conftest import EXAMPLES

CONFIG = str(EXAMPLES / "operator-config.yaml")
CASES = catalogue()


def _render(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    manifest = tmp_path / "endpoint.yaml"
    manifest.write_text(
        yaml.safe_dump(case.manifest(name="ep", namespace="team"), allow_unicode=True),
        encoding="utf-8",
    )
    code = main(["render", "-f", str(manifest), "--config", CONFIG])
    captured = capsys.readouterr()
    return code, captured.err if code else captured.out


def test_catalogue_covers_every_outcome_and_class() -> None:
    outcomes = {c.outcome for c in CASES}
    assert outcomes == {"rejected", "degraded", "served"}
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.case)
def test_pydantic_agrees_with_the_catalogue(case: Case) -> None:
    manifest = case.manifest(name="ep", namespace="team")
    if case.outcome == "rejected":
        with pytest.raises(ConfigError) as exc:
            parse_endpoint(manifest)
        for fragment in case.expect:
            assert fragment in str(exc.value), f"{fragment!r} not in {exc.value}"
    elif not case.render_rejects:
        parse_endpoint(manifest)  # accepted: the operator must take it


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.case)
def test_render_agrees_with_the_catalogue(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = _render(case, tmp_path, capsys)
    if case.offline_rejects:
        assert code == 2, f"render accepted {case.case}"
        for fragment in case.expect:
            assert fragment in text, f"{fragment!r} not in {text!r}"
    else:
        assert code == 0, text
        kinds = [d["kind"] for d in yaml.safe_load_all(text) if d]
        assert "Deployment" in kinds
