"""A lint of runtime/Dockerfile (hadolint is not available: a small linter of our own).

The rules are the hadolint ones that matter for this image (pinned base, no `latest`,
non-root USER, exec-form ENTRYPOINT/CMD, no pip cache, COPY not ADD, apt hygiene) plus the
project's own (base tag = the pinned vLLM release, cache directories the operator mounts,
entrypoint `magistral-runtime serve`). Each rule is also run on a bad Dockerfile, so a
rule that cannot fail would show.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from magistral_runtime import VLLM_VERSION

DOCKERFILE = Path(__file__).resolve().parents[3] / "runtime" / "Dockerfile"
CACHE_ENV = {
    "HOME": "/cache/home",
    "HF_HOME": "/cache/huggingface",
    "VLLM_CACHE_ROOT": "/cache/vllm",
    "TRITON_CACHE_DIR": "/cache/triton",
}


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    current = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment inside a continued instruction
        if not current:
            start = number
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        current = ""
    return instructions


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def lint(text: str) -> list[str]:
    """Problems found in a Dockerfile's text."""
    instructions = parse(text)
    problems: list[str] = []
    froms = [i for i in instructions if i.keyword == "FROM"]
    if not froms:
        return ["no FROM"]
    image = froms[0].args.split()[0]
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    if not tag or "$" in image:
        problems.append(f"line {froms[0].line}: base image {image} is not pinned to a tag")
    if name != "vllm/vllm-openai" or tag != f"v{VLLM_VERSION}":
        problems.append(f"base image {image} is not vllm/vllm-openai:v{VLLM_VERSION}")
    if re.search(r":latest\b", text):
        problems.append("uses a `latest` tag")
    users = [i for i in instructions if i.keyword == "USER"]
    if not users or users[-1].args.split(":")[0] in ("root", "0"):
        problems.append("the final USER is root (or missing)")
    elif users[-1].args.split(":")[0] != "1000":
        problems.append(f"the final USER is {users[-1].args}, not 1000 (the pods' runAsUser)")
    for keyword in ("ENTRYPOINT", "CMD"):
        for ins in (i for i in instructions if i.keyword == keyword):
            try:
                value = json.loads(ins.args)
            except ValueError:
                value = None
            if not isinstance(value, list):
                problems.append(f"line {ins.line}: {keyword} is not in exec (JSON) form")
            elif keyword == "ENTRYPOINT" and value != ["magistral-runtime", "serve"]:
                problems.append(f"line {ins.line}: ENTRYPOINT is not magistral-runtime serve")
    if not any(i.keyword == "ENTRYPOINT" for i in instructions):
        problems.append("no ENTRYPOINT")
    for ins in instructions:
        if ins.keyword == "ADD":
            problems.append(f"line {ins.line}: ADD (use COPY)")
        if ins.keyword == "WORKDIR" and not ins.args.startswith("/"):
            problems.append(f"line {ins.line}: WORKDIR is not absolute")
        if ins.keyword != "RUN":
            continue
        run = ins.args
        if "pip install" in run and "--no-cache-dir" not in run:
            problems.append(f"line {ins.line}: pip install without --no-cache-dir")
        if "pip install" in run and "--no-deps" not in run:
            problems.append(f"line {ins.line}: pip install without --no-deps (vLLM's deps)")
        if re.search(r"\bsudo\b", run):
            problems.append(f"line {ins.line}: sudo")
        if re.search(r"(curl|wget)[^|]*\|\s*(ba)?sh", run):
            problems.append(f"line {ins.line}: pipes a download into a shell")
        if "apt-get upgrade" in run or "apt-get dist-upgrade" in run:
            problems.append(f"line {ins.line}: apt-get upgrade")
        if "apt-get install" in run and (
            "--no-install-recommends" not in run or "rm -rf /var/lib/apt/lists" not in run
        ):
            problems.append(f"line {ins.line}: apt-get install without apt hygiene")
    env = env_of(instructions)
    for key, value in CACHE_ENV.items():
        if env.get(key) != value:
            problems.append(f"ENV {key} is {env.get(key)!r}, not {value}")
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    for directory in CACHE_ENV.values():
        if directory not in runs:
            problems.append(f"{directory} is not created")
    if "chown -R 1000:1000 /cache" not in runs:
        problems.append("/cache is not owned by uid 1000")
    return problems


def test_the_runtime_dockerfile_is_clean() -> None:
    assert lint(DOCKERFILE.read_text()) == []


GOOD = DOCKERFILE.read_text()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("vllm/vllm-openai:v0.33.0", "vllm/vllm-openai"), "not pinned"),
        (("vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:latest"), "`latest`"),
        (("vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:v0.32.0"), "is not vllm/vllm-openai:v"),
        (("USER 1000:1000", "USER root"), "final USER is root"),
        (("USER 1000:1000", "USER 1001"), "not 1000"),
        (('ENTRYPOINT ["magistral-runtime", "serve"]', "ENTRYPOINT magistral-runtime serve"),
         "exec (JSON) form"),
        (('ENTRYPOINT ["magistral-runtime", "serve"]', 'ENTRYPOINT ["vllm", "serve"]'),
         "not magistral-runtime serve"),
        (("--no-cache-dir --no-deps", "--no-deps"), "without --no-cache-dir"),
        (("--no-cache-dir --no-deps", "--no-cache-dir"), "without --no-deps"),
        (("COPY runtime/ runtime/", "ADD runtime/ runtime/"), "ADD (use COPY)"),
        (("HF_HOME=/cache/huggingface", "HF_HOME=/root/.hf"), "ENV HF_HOME"),
        (("chown -R 1000:1000 /cache", "true"), "not owned by uid 1000"),
        (("WORKDIR /cache/home", "WORKDIR home"), "not absolute"),
        (("RUN mkdir -p", "RUN apt-get install -y curl && mkdir -p"), "apt hygiene"),
    ],
)  # fmt: skip
def test_each_rule_catches_its_problem(change: tuple[str, str], problem: str) -> None:
    old, new = change
    assert old in GOOD
    problems = lint(GOOD.replace(old, new, 1))
    assert any(problem in p for p in problems), problems


def test_the_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a:1\nRUN one \\\n  # inside\n  two\nUSER 1000\n"
    assert parse(text) == [
        Instruction(2, "FROM", "a:1"),
        Instruction(3, "RUN", "one  two"),
        Instruction(6, "USER", "1000"),
    ]
