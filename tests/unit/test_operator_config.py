"""The operator config: valid example, and bad files stop with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from magistral_operator.api.config import load_operator_config, parse_operator_config
from magistral_operator.api.errors import ConfigError

from .conftest import EXAMPLES

POOL = {
    "name": "p",
    "tier": "reserved",
    "gpuProduct": "NVIDIA-H100-80GB-HBM3",
    "gpuMemoryGiB": 80,
    "gpusPerNode": 8,
}


def test_example_config_is_valid() -> None:
    config = load_operator_config(EXAMPLES / "operator-config.yaml")
    assert [p.tier for p in config.pools] == ["reserved", "on-demand", "spot"]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"pools": [POOL]}, "defaultImage: Field required"),
        ({"defaultImage": "i", "pools": []}, "pools: List should have at least 1 item"),
        ({"defaultImage": "i", "pools": [{**POOL, "tier": "cheap"}]}, "pools[0].tier"),
        ({"defaultImage": "i", "pools": [{**POOL, "gpuMemoryGiB": -1}]}, "pools[0].gpuMemoryGiB"),
        ({"defaultImage": "i", "pools": [POOL, POOL]}, "repeated: p"),
        ({"defaultImage": "i", "pools": [{**POOL, "name": "Bad_Name"}]}, "pools[0].name"),
        ({"defaultImage": "i", "pools": [POOL], "typo": 1}, "typo: Extra inputs"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_bad_config_names_the_field(data: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_operator_config(data, source="cfg.yaml")
    assert fragment in str(exc.value)
    assert str(exc.value).startswith("cfg.yaml: ")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read operator config"):
        load_operator_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_operator_config(bad)
