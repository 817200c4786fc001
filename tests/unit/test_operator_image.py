"""A lint of operator/Dockerfile against what the Helm chart's pod spec requires."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.unit.runtime.test_dockerfile import parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "operator" / "Dockerfile"


def lint(text: str) -> list[str]:
    instructions = parse(text)
    problems = []
    for ins in instructions:
        if ins.keyword == "FROM":
            image = ins.args.split()[0]
            if not re.search(r":\d+\.\d+\.\d+", image):
                problems.append(f"line {ins.line}: base image {image} is not pinned to a patch")
        if ins.keyword == "ADD":
            problems.append(f"line {ins.line}: ADD (use COPY)")
        if ins.keyword == "RUN" and "pip install" in ins.args and "--no-cache-dir" not in ins.args:
            problems.append(f"line {ins.line}: pip install without --no-cache-dir")
    users = [i.args for i in instructions if i.keyword == "USER"]
    if not users or users[-1] != "65532:65532":
        problems.append("the final USER is not 65532:65532 (the chart's runAsUser)")
    entry = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1].args) != ["magistral-operator"]:
        problems.append("ENTRYPOINT is not the magistral-operator CLI in exec form")
    return problems


def test_operator_dockerfile_is_clean() -> None:
    assert lint(DOCKERFILE.read_text()) == []


def test_lint_catches_root_and_unpinned_images() -> None:
    bad = DOCKERFILE.read_text().replace("USER 65532:65532", "USER root")
    bad = bad.replace("python:3.11.14-slim-bookworm AS build", "python:latest AS build")
    problems = lint(bad)
    assert any("USER" in p for p in problems)
    assert any("not pinned" in p for p in problems)


def test_chart_runs_the_image_as_the_dockerfile_user() -> None:
    values = yaml.safe_load((ROOT / "charts" / "magistral-operator" / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/magistral-operator/operator"
    template = (
        ROOT / "charts" / "magistral-operator" / "templates" / "deployment.yaml"
    ).read_text()
    assert "runAsUser: 65532" in template
