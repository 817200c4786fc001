"""`spec.runtime.extraArgs` as vLLM 0.33.0 will parse it, and the CRD's CEL version of it.

EXTRA_ARGS_CASES is shared with the spec tests: each case says whether the operator refuses
the arguments (a fragment of the message, or None) and whether the API server's CEL rules
are meant to catch it too (they catch every refused option in any spelling; unknown options,
missing values and positionals are left to the operator's full parse).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

import celpy
import pytest
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st

from magistral_operator.api import vllm_args
from magistral_operator.api.vllm_args import (
    CEL_FAMILIES,
    EXTRA_ARG_CEL_RULES,
    EXTRA_ARG_MAX_LENGTH,
    EXTRA_ARGS_CEL_RULES,
    EXTRA_ARGS_MAX_ITEMS,
    MANAGED,
    REFUSED,
    extra_args_problems,
    refused_options,
    vllm_options,
)
from magistral_runtime import VLLM_VERSION
from magistral_runtime.launcher import build_serve_argv

from .runtime.test_vllm_flags import CONFIGS
from .runtime.vllm_cli import SourceUnavailableError, VllmSource, vllm_source
from .runtime.write_vllm_options import options_document, render


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    refused: str | None  # a fragment of the first problem, None when accepted
    cel: bool  # the CEL rules reject it too

    @property
    def id(self) -> str:
        return repr(list(self.args))


def case(*args: str, refused: str | None = None, cel: bool | None = None) -> Case:
    return Case(args, refused, cel if cel is not None else refused is not None)


TP = "sets --tensor-parallel-size, which the operator manages (set spec.gpu.tensorParallelSize)"
EXTRA_ARGS_CASES = [
    # accepted
    case(),
    case("--enable-prefix-caching"),
    case("--no-enable-prefix-caching"),
    case("--disable-prefix-caching"),
    case("--max-num-batched-tokens=8192"),
    case("--max_num_batched_tokens", "8k"),
    case("--model-impl", "vllm"),
    case("--model-impl=transformers"),
    case("--tokenizer", "mistralai/Mistral-Small"),  # exact: not --tokenizer-mode
    case("--enforce-eager", "--seed", "-5"),
    case("-O3"),
    case("-O", "3"),
    case("-cc.mode=3"),
    case("--compilation-config.cudagraph_capture_sizes+", "1,2,4"),
    case("--lora-modules", "a=/models/a", "b=/models/b"),
    case("--hf-overrides", '{"rope_theta": 1000000}'),
    case("--enable-lora"),
    case("--dtype=bfloat16"),
    case("--served-model-name-x", refused="is not an option", cel=False),
    # managed options in every spelling
    case("--tensor-parallel-size", "2", refused=TP),
    case("--tensor_parallel_size=8", refused=TP),
    case("--tensor-parallel", "2", refused=TP),
    case("--tensor-parallel-size 2", refused=TP),
    case("--tensor-parallel-size=2 ", refused=TP),
    case("-tp", "2", refused=TP),
    case("-tp=2", refused=TP),
    case("-t", "2", refused=TP),
    case("--served-model=x", refused="sets --served-model-name"),
    case("--served_model_name", "x", "y", refused="sets --served-model-name"),
    case("--model", "other/model", refused="sets --model, which the operator manages"),
    case("--model=other/model", refused="sets --model,"),
    case("--port=9000", refused="sets --port"),
    case("--host", "127.0.0.1", refused="sets --host"),
    case("--api-key", "k1", "k2", refused="set spec.auth.apiKeySecretRef"),
    case("--api_key=k", refused="sets --api-key"),
    case("--hf-token=hf_x", refused="set spec.model.source.hub.tokenSecretRef"),
    case("--quantization", "fp8", refused="sets --quantization"),
    case("-q", "fp8", refused="sets --quantization"),
    case("-qfp8", refused="sets --quantization"),
    case("-q=fp8", refused="sets --quantization"),
    case("--device-memory-utilization", "0.5", refused="sets --gpu-memory-utilization"),
    case("--gpu_memory_utilization=0.5", refused="sets --gpu-memory-utilization"),
    case("--disable-auto-tool-choice", refused="sets --enable-auto-tool-choice"),
    case("--no-enable-auto-tool-choice", refused="sets --enable-auto-tool-choice"),
    case("--override-generation-config.temperature=2", refused="spec.inference.sampling"),
    case("--override_generation_config.top_p", "0.1", refused="spec.inference.sampling"),
    case("--middleware", "evil.Middleware", refused="sets --middleware"),
    case("--max-model-len=131072", refused="spec.runtime.maxModelLen"),
    case("--kv-cache-dtype", "fp8", refused="spec.runtime.kvCacheDtype"),
    case("--max-num-seqs", "512", refused="spec.runtime.maxNumSeqs"),
    case("--pipeline-parallel-size=2", refused="sets --pipeline-parallel-size"),
    case("-pp", "2", refused="sets --pipeline-parallel-size"),
    case("-dp", "2", refused="sets --data-parallel-size"),
    case("--config", "/etc/vllm.yaml", refused="sets --config, which is not allowed"),
    case("--config=/etc/vllm.yaml", refused="sets --config,"),
    case("--uds", "/tmp/s", refused="sets --uds"),
    case("--headless", refused="sets --headless"),
    case("--allowed-origins", '["*"]', refused="sets --allowed-origins"),
    case("--help", refused="prints its help"),
    case("--help=all", refused="prints its help"),
    case("-h", refused="prints its help"),
    case("--enable-prefix-caching", "-tp", "4", refused="extraArgs[1]: '-tp'"),
    # ambiguous abbreviations that a refused option starts with
    case("--max", "1", refused="ambiguous"),
    case("--mod", "x", refused="ambiguous"),
    case("--conf", "x.yaml", refused="ambiguous"),
    # what vLLM would exit on, which the CEL rules leave to the operator
    case("--no-such-option", refused="is not an option", cel=False),
    case("positional", refused="is a positional argument", cel=False),
    case("--max-num-batched-tokens", refused="takes a value but has none", cel=False),
    case("--max-num-batched-tokens", "--enforce-eager", refused="takes a value", cel=False),
    case("--compilation-config.mode", refused="takes a value but has none", cel=False),
    case("--enforce-eager=true", refused="takes none", cel=False),
    case("--enable-prefix-caching 1", refused="reads as a positional argument", cel=False),
    case("--", refused="ends vLLM's options"),
]


def problems_of(args: tuple[str, ...]) -> list[str]:
    return extra_args_problems(list(args))


@pytest.mark.parametrize("c", EXTRA_ARGS_CASES, ids=lambda c: c.id)
def test_extra_args_table(c: Case) -> None:
    problems = problems_of(c.args)
    if c.refused is None:
        assert problems == []
    else:
        assert problems, f"{c.args} should be refused"
        assert c.refused in problems[0], problems
        assert problems[0].startswith("spec.runtime.extraArgs[")


def test_a_problem_names_the_element_and_the_spec_field() -> None:
    assert extra_args_problems(["--enforce-eager", "--tensor_parallel_size=8"]) == [
        "spec.runtime.extraArgs[1]: '--tensor_parallel_size=8' sets --tensor-parallel-size, "
        "which the operator manages (set spec.gpu.tensorParallelSize)"
    ]


# --------------------------------------------------------------------------------------
# The CEL rules, evaluated with cel-python (plus the Kubernetes functions they use)

_CEL = celpy.Environment()


def _program(rule: str) -> Any:
    return _CEL.program(_CEL.compile(rule))


ITEM_PROGRAMS = [(_program(r["rule"]), r["message"]) for r in EXTRA_ARG_CEL_RULES]
LIST_PROGRAMS = [(_program(r["rule"]), r["message"]) for r in EXTRA_ARGS_CEL_RULES]


def cel_item_failures(arg: str) -> list[str]:
    value = celtypes.StringType(arg)
    return [m for program, m in ITEM_PROGRAMS if not program.evaluate({"self": value})]


def cel_list_failures(args: tuple[str, ...]) -> list[str]:
    value = celpy.json_to_cel(list(args))
    return [m for program, m in LIST_PROGRAMS if not program.evaluate({"self": value})]


@pytest.mark.parametrize("c", EXTRA_ARGS_CASES, ids=lambda c: c.id)
def test_cel_agrees_with_the_operator(c: Case) -> None:
    item_failures = [f for arg in c.args for f in cel_item_failures(arg)]
    list_failures = cel_list_failures(c.args)
    assert bool(item_failures) == c.cel, item_failures
    assert bool(list_failures) == c.cel, list_failures
    if c.cel:
        assert c.refused is not None
        assert problems_of(c.args)


def test_cel_messages_name_the_field_and_the_family() -> None:
    failures = cel_item_failures("--tensor_parallel_size=8")
    assert len(failures) == 1
    assert failures[0].startswith("spec.runtime.extraArgs[*] sets one of the GPU")
    assert "--tensor-parallel-size" in failures[0]
    assert "spec.runtime.extraArgs" in cel_list_failures(("--port=1",))[0]


def test_cel_families_cover_exactly_the_refused_options() -> None:
    covered = [d for _, dests in CEL_FAMILIES.values() for d in dests]
    assert len(covered) == len(set(covered))
    assert set(covered) == set(MANAGED) | set(REFUSED)


def test_cel_accepts_every_allowed_option_by_its_exact_name() -> None:
    refused = {o.dest for o in refused_options()}
    for string, option in vllm_options().by_string.items():
        if option.dest in refused:
            assert cel_item_failures(string), string
        else:
            assert cel_item_failures(string) == [], string
            assert cel_item_failures(string + "=1") == [], string


def test_the_operator_accepts_every_allowed_option() -> None:
    refused = {o.dest for o in refused_options()}
    for string, option in vllm_options().by_string.items():
        if option.dest in refused:
            continue
        args = [string] if option.nargs in ("switch", "optional-value") else [string, "1"]
        assert extra_args_problems(args) == [], args


def test_cel_cost_fits_the_api_servers_budget() -> None:
    """cel-go's estimate for `matches`: 0.1 x string size x 0.25 x regex size, per element;
    Kubernetes multiplies a rule's cost by the list's maxItems and allows 10M per rule."""
    for rule in EXTRA_ARG_CEL_RULES:
        regexes = [part.split("')")[0] for part in rule["rule"].split("matches('")[1:]]
        cost = sum(
            math.ceil(0.1 * EXTRA_ARG_MAX_LENGTH) * math.ceil(0.25 * len(r)) for r in regexes
        )
        assert cost * EXTRA_ARGS_MAX_ITEMS < 10_000_000, (cost, rule["message"][:60])


# --------------------------------------------------------------------------------------
# Spellings of refused options (properties)


def _unique_prefix_length(string: str) -> int:
    """The shortest prefix argparse resolves to this string's option alone."""
    table = vllm_options().by_string
    option = table[string]
    for length in range(2, len(string) + 1):
        prefix = string[:length]
        if {o for s, o in table.items() if s.startswith(prefix)} == {option}:
            return length
    return len(string)


REFUSED_STRINGS = sorted(s for o in refused_options() for s in o.strings)
LONG_REFUSED = [s for s in REFUSED_STRINGS if s.startswith("--")]


@st.composite
def long_spelling(draw: st.DrawFn) -> tuple[list[str], str]:
    string = draw(st.sampled_from(LONG_REFUSED))
    option = vllm_options().by_string[string]
    cut = draw(st.integers(_unique_prefix_length(string), len(string)))
    name = "".join(
        "_" if c == "-" and i >= 2 and draw(st.booleans()) else c
        for i, c in enumerate(string[:cut])
    )
    form = draw(st.sampled_from(["alone", "equals", "space", "next", "dotted"]))
    if option.nargs == "switch" or form == "alone":
        return [name], option.name
    value = draw(st.sampled_from(["2", "x", "a.b", "-1"]))
    if form == "equals":
        return [f"{name}={value}"], option.name
    if form == "space":
        return [f"{name} {value}"], option.name
    if form == "dotted":
        return [f"{name}.key={value}"], option.name
    return [name, value], option.name


@settings(max_examples=400, deadline=None)
@given(long_spelling(), st.sampled_from([[], ["--enforce-eager"], ["--seed", "1"]]))
def test_every_spelling_of_a_refused_long_option_is_refused(
    spelling: tuple[list[str], str], before: list[str]
) -> None:
    args, name = spelling
    problems = extra_args_problems([*before, *args])
    index = len(before)
    assert problems
    assert problems[0].startswith(f"spec.runtime.extraArgs[{index}]: ")
    assert f"sets {name}," in problems[0], problems
    assert cel_item_failures(args[0]), args
    assert cel_list_failures((*before, *args)), args


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([s for s in REFUSED_STRINGS if not s.startswith("--")]), st.data())
def test_every_spelling_of_a_refused_short_option_is_refused(
    string: str, data: st.DataObject
) -> None:
    option = vllm_options().by_string[string]
    value = data.draw(st.sampled_from(["2", "fp8"]))
    forms = [[string]] if option.nargs == "switch" else [[string, value], [f"{string}={value}"]]
    if len(string) == 2 and option.nargs != "switch":
        forms.append([string + value])  # -qfp8
    args = data.draw(st.sampled_from(forms))
    problems = extra_args_problems(args)
    assert problems
    assert f"sets {option.name}," in problems[0], (args, problems)
    assert cel_item_failures(args[0]), args


@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[-3:], ids=str)
def test_every_option_the_launcher_emits_is_managed(config: Any) -> None:
    """Adding a flag to the launcher without refusing it in extraArgs fails here."""
    argv = build_serve_argv(config)
    flags = [a for a in argv[3:] if a.startswith("-")]
    assert flags
    for flag in flags:
        problems = extra_args_problems([flag, "1"])
        assert problems
        assert "which the operator manages" in problems[0], (flag, problems)
        assert cel_item_failures(flag), flag
    # and the model positional: a second positional is refused too
    assert extra_args_problems([argv[2]]) != []


def test_every_flag_the_launcher_can_write_is_managed() -> None:
    emitted = {a for config in CONFIGS for a in build_serve_argv(config) if a.startswith("--")}
    dests = {vllm_options().by_string[a].dest for a in emitted}
    assert dests <= set(MANAGED), sorted(dests - set(MANAGED))


def test_every_refused_dest_is_a_vllm_option() -> None:
    dests = {o.dest for o in vllm_options().by_string.values()}
    assert set(MANAGED) | set(REFUSED) <= dests, sorted((set(MANAGED) | set(REFUSED)) - dests)


# --------------------------------------------------------------------------------------
# The packaged table against the release's source


@pytest.fixture(scope="module")
def source() -> VllmSource:
    try:
        return VllmSource(vllm_source(VLLM_VERSION))
    except SourceUnavailableError as exc:
        pytest.fail(str(exc))


def test_the_packaged_options_match_the_pinned_release(source: VllmSource) -> None:
    """A vLLM bump (or a reader change) that changes an option fails until the file is
    rewritten with `python -m tests.unit.runtime.write_vllm_options`."""
    packaged = resources.files(vllm_args.__package__).joinpath("vllm_options.json")
    assert packaged.read_text("utf-8") == render(options_document(source))
    assert json.loads(packaged.read_text("utf-8"))["vllm"] == VLLM_VERSION == vllm_options().version


def test_the_table_knows_vllms_special_forms(source: VllmSource) -> None:
    table = vllm_options().by_string
    assert table["-tp"] is table["--tensor-parallel-size"]
    assert table["--device-memory-utilization"].dest == "gpu_memory_utilization"
    assert table["--disable-prefix-caching"] is table["--enable-prefix-caching"]
    assert table["--no-enable-prefix-caching"].nargs == "switch"
    assert table["--api-key"].nargs == "list"
    assert table["--served-model-name"].nargs == "list"
    assert table["--hf-token"].nargs == "optional-value"
    assert table["--middleware"].nargs == "value"
    assert "-O" not in table  # -O is rewritten to --optimization-level before argparse
    # The parser facts extra_args_problems relies on, in vLLM's own source.
    parser = source.text("utils/argparse_utils.py")
    for fact in (
        'pattern = re.compile(r"(?<=--)[^\\.]*")',
        'if "--config" in args:',
        'elif arg.startswith("-O") and arg != "-O":',
        'if processed_arg.startswith("-") and "." in processed_arg:',
        'self.register("action", BooleanOptionalAction, EnableDisableAction)',
        '_inverse_prefixes = {"--enable-": "--disable-", "--disable-": "--enable-"}',
        'if arg.startswith("--help="):',
    ):
        assert fact in parser, fact
    assert "allow_abbrev" not in parser  # argparse's default (abbreviations on) holds


@pytest.mark.parametrize(
    ("args", "tokens"),
    [
        # underscores become dashes up to the first '.', and dotted args move to the end
        (["--a_b.c_d=1", "--e_f=g_h"], ["--e-f=g_h", "--a-b", "{}"]),
        (["--a_b.c", "v", "--x"], ["--x", "--a-b", "{}"]),
        (
            ["-O3", "-O", "2", "-O", "x"],
            ["--optimization-level", "3", "--optimization-level", "2", "-O", "x"],
        ),
        (["-O=1"], ["--optimization-level", "1"]),
        (["--help=all"], ["--help"]),
        (["-tp_x"], ["-tp_x"]),  # one dash: no underscore rewriting
    ],
)
def test_rewriting_follows_flexible_argument_parser(args: list[str], tokens: list[str]) -> None:
    rewritten, _ = vllm_args._rewrite(args)
    assert [t.text for t in rewritten] == tokens


def test_all_cases_are_distinct() -> None:
    ids = [c.id for c in EXTRA_ARGS_CASES]
    assert len(ids) == len(set(ids))
