"""The CRD: generated from the API models, committed, and complete."""

from __future__ import annotations

import re
from typing import Any

import yaml

from magistral_operator.api.crd import CRD_FILE, build_crd, crd_yaml

from .conftest import ROOT


def schema() -> dict[str, Any]:
    crd = build_crd()
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def test_committed_crd_matches_generated() -> None:
    committed = (ROOT / CRD_FILE).read_text()
    assert committed == crd_yaml(), "crds/ is stale: run `make crds` and commit the result"


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, child in node.get("properties", {}).items():
        out += walk(child, f"{path}.{name}")
    if "items" in node:
        out += walk(node["items"], f"{path}[]")
    return out


def test_every_spec_and_status_field_is_described() -> None:
    for path, node in walk(schema()):
        if path.startswith((".spec.", ".status.")) and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_schema_is_structural() -> None:
    for path, node in walk(schema()):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        else:
            assert "type" in node or path == "", f"{path} has no type"


def test_defaults_are_filled_for_nested_objects() -> None:
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["runtime"]["properties"]["maxModelLen"]["default"] == 40960
    assert spec["model"]["properties"]["repo"]["default"] == "mistralai/Magistral-Small-2506"
    assert spec["model"]["default"]["source"] == {"hub": {}}
    assert spec["inference"]["default"]["sampling"] == {"temperature": 0.7, "topP": 0.95}
    assert spec["gpu"]["properties"]["tensorParallelSize"]["default"] == "auto"


def test_cel_rules_cover_the_cross_field_checks() -> None:
    rules = [
        (path, rule["rule"])
        for path, node in walk(schema())
        for rule in node.get("x-kubernetes-validations", [])
    ]
    text = "\n".join(f"{p}: {r}" for p, r in rules)
    assert ".spec.scaling: self.minReplicas <= self.maxReplicas" in text
    assert ".spec.gpu.tensorParallelSize: type(self) == string" in text
    assert ".spec.auth: self.disabled || has(self.apiKeySecretRef)" in text
    assert "oldSelf" in text  # immutability / one-way transitions
    assert (
        schema()["properties"]["spec"]["properties"]["runtime"]["properties"]["maxModelLen"][
            "maximum"
        ]
        == 131072
    )


def test_names_columns_and_subresources() -> None:
    crd = yaml.safe_load((ROOT / CRD_FILE).read_text())
    assert crd["spec"]["names"]["shortNames"] == ["mep"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    for wanted in ("Ready", "Replicas", "TP", "GPU", "Age"):
        assert wanted in columns
    assert schema()["required"] == ["spec"]
    assert "auth" in schema()["properties"]["spec"]["required"]


def test_every_printer_column_reads_a_field_the_schema_has() -> None:
    """A column whose path names no field prints empty forever: each path is walked through the
    generated schema (a filter such as `[?(@.type=="Ready")]` selects list items)."""
    crd = yaml.safe_load((ROOT / CRD_FILE).read_text())
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".metadata."):
            continue
        node = root
        for part in re.sub(r"\[\?\(.*?\)\]", "[]", path).lstrip(".").split("."):
            name, _, selector = part.partition("[")
            assert name in node.get("properties", {}), (column["name"], path, name)
            node = node["properties"][name]
            if selector:
                assert node["type"] == "array", (column["name"], path)
                node = node["items"]


def test_the_rollout_columns() -> None:
    crd = yaml.safe_load((ROOT / CRD_FILE).read_text())
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Rollout"]["jsonPath"] == ".status.rollout.phase"
    assert "priority" not in columns["Rollout"]  # in the default view
    assert columns["Revision"]["jsonPath"] == ".status.rollout.currentRevision"
    assert columns["Revision"]["priority"] == 1  # -o wide
