"""`spec.runtime.extraArgs`, read the way `vllm serve` (vLLM 0.33.0) will read it (pure).

The extra arguments are appended to the launcher's own (runtime/magistral_runtime/launcher.py)
and followed by `--middleware`. vLLM's `FlexibleArgumentParser.parse_args`
(vllm/utils/argparse_utils.py) rewrites the command line before argparse sees it, and
argparse then splits it; every step can turn a harmless-looking string into a managed option:

* `--model X` / `--model=X` is moved to the front as the model (a second model);
* an element that is exactly `--config` loads a YAML file whose keys become options;
* in an element starting with `--`, `_` becomes `-` up to the first `.` (and before `=`):
  `--tensor_parallel_size=8` is `--tensor-parallel-size=8`;
* `-O3`, `-O=3`, `-Odecode` and `-O 3` become `--optimization-level ...`;
* an element starting with `-` that holds a `.` before any `=` (`--json-arg.key=value`, or
  `--json-arg.key value`, which takes the next element as its value) is turned into
  `--json-arg '{"key": value}'` appended at the end: the name before the first `.` is an
  option like any other (`--override-generation-config.temperature=2`);
* `--help=...` becomes `--help`;
* argparse (allow_abbrev is on) accepts any unambiguous prefix of a long option
  (`--served-model=x`), `--name=value`, short options with the value attached (`-q fp8`,
  `-qfp8`, `-q=fp8`, `-tp=2`) and prefixes of short options (`-t` for `-tp`); it refuses
  ambiguous prefixes, unknown options and extra positional arguments, and reads an element
  with a space that matches no option (`'--tensor-parallel-size 2'`) as a positional.

The options themselves (names, short forms, aliases such as `--device-memory-utilization`,
the `--no-x` and `--enable-x`/`--disable-x` forms of switches, how many values each takes)
come from vllm_options.json, generated from the release's source by
`python -m tests.unit.runtime.write_vllm_options` and checked against it by the tests.

Refused options (`REFUSED`, by argparse dest), each with where to set it instead:

* everything the launcher emits: the model and its revision, served name, tokenizer, config
  and load formats, host, port, tool calling, reasoning parser, tensor parallelism, context
  length, GPU memory utilisation, KV cache dtype, max sequences, download dir, sampling
  overrides, quiet endpoints, shutdown timeout, middleware;
* `--api-key` (the key comes from the Secret through VLLM_API_KEY; on the command line `ps`
  and the pod annotation would show it) and `--hf-token` (likewise, HF_TOKEN);
* `--config`: a YAML file in the image could set any of the above;
* `--quantization`: the checkpoint's precision decides it, and sizing counts on it;
* pipeline, data and prefill-context parallelism, nodes and node rank, and the KV cache
  size overrides (`--kv-cache-memory-bytes`, `--num-gpu-blocks-override`): the pod's GPUs
  and the KV cache are sized from spec.gpu and spec.runtime;
* `--uds`, `--headless`, `--grpc`, `--tokens-only`, `--ssl-keyfile`, `--ssl-certfile`: the
  Service, the probes and the middleware speak plain HTTP to vLLM's OpenAI server on --port;
* `--allowed-origins`, `--allow-credentials`: CORS would open the API to browser pages of
  other origins; exposure is spec.exposure's business;
* `--allowed-local-media-path`: requests could read files of the pod (service account token);
* `-h`/`--help`: vLLM prints the help and exits.

Everything else vLLM accepts is allowed (`--enable-prefix-caching`,
`--max-num-batched-tokens=8192`, `--model-impl`, ...).

`EXTRA_ARGS_CEL_RULES` are the API server's version: conservative string tests that catch
every spelling of a refused long or short option (underscores, prefixes, `=`, a space- or
`.`-joined value) without argparse; the full parse (unknown options, values, positionals)
is `extra_args_problems`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

Nargs = Literal["switch", "value", "optional-value", "list"]

FIELD = "spec.runtime.extraArgs"
EXTRA_ARGS_MAX_ITEMS = 64
# The API server estimates a `matches` as 0.1 x string length x 0.25 x regex length and a
# rule on the items as that times maxItems, within 10M per rule: 2048 characters leave room
# for the regex of the refused options (tests/unit/test_vllm_args.py checks the budget).
EXTRA_ARG_MAX_LENGTH = 2048

_MODEL_CARD = "the model card's mistral format, always passed"
_GPU = "spec.gpu.tensorParallelSize; the pod's GPUs are sized from it"
_HTTP = "the Service, probes and middleware need vLLM's HTTP server on its port"

# dest -> where to set it instead ("set ...") or why it is refused.
MANAGED: dict[str, str] = {
    "model": "set spec.model.repo",
    "revision": "set spec.model.revision",
    "served_model_name": "set spec.model.servedModelName",
    "tokenizer_mode": _MODEL_CARD,
    "config_format": _MODEL_CARD,
    "load_format": _MODEL_CARD,
    "quantization": "set spec.model.precision; sizing counts on it",
    "host": _HTTP,
    "port": "set spec.exposure.port",
    "middleware": "the runtime's middleware is always loaded",
    "api_key": "set spec.auth.apiKeySecretRef",
    "hf_token": "set spec.model.source.hub.tokenSecretRef",
    "tool_call_parser": "set spec.inference.toolCalling",
    "enable_auto_tool_choice": "set spec.inference.toolCalling",
    "reasoning_parser": "the model profile chooses it",
    "tensor_parallel_size": "set spec.gpu.tensorParallelSize",
    "pipeline_parallel_size": "set " + _GPU,
    "data_parallel_size": "set " + _GPU,
    "data_parallel_size_local": "set " + _GPU,
    "prefill_context_parallel_size": "set " + _GPU,
    "nnodes": "set " + _GPU,
    "node_rank": "set " + _GPU,
    "max_model_len": "set spec.runtime.maxModelLen",
    "gpu_memory_utilization": "set spec.runtime.gpuMemoryUtilization",
    "kv_cache_memory_bytes": "set spec.runtime.gpuMemoryUtilization; sizing counts on it",
    "num_gpu_blocks_override": "set spec.runtime.gpuMemoryUtilization; sizing counts on it",
    "kv_cache_dtype": "set spec.runtime.kvCacheDtype",
    "max_num_seqs": "set spec.runtime.maxNumSeqs",
    "download_dir": "set spec.model.cache",
    "override_generation_config": "set spec.inference.sampling",
    "disable_access_log_for_endpoints": "the probes' endpoints are kept out of the log",
    "shutdown_timeout": "draining is sized with the pod's grace period",
}
# dest -> why vLLM must not get it at all.
REFUSED: dict[str, str] = {
    "config": "reads options from a YAML file the operator cannot check",
    "uds": _HTTP,
    "headless": _HTTP,
    "grpc": _HTTP,
    "tokens_only": _HTTP,
    "ssl_keyfile": _HTTP,
    "ssl_certfile": _HTTP,
    "allowed_origins": "CORS would open the API to other origins' pages; see spec.exposure",
    "allow_credentials": "CORS would open the API to other origins' pages; see spec.exposure",
    "allowed_local_media_path": "requests could read the pod's files",
    "help": "vLLM prints its help and exits",
}


@dataclass(frozen=True)
class VllmOption:
    """One argparse action of `vllm serve`."""

    dest: str
    strings: tuple[str, ...]
    nargs: Nargs

    @property
    def name(self) -> str:
        """The option's long name, as the help shows it."""
        return next((s for s in self.strings if s.startswith("--")), self.strings[0])


@dataclass(frozen=True)
class VllmOptions:
    version: str
    by_string: dict[str, VllmOption]


@cache
def vllm_options() -> VllmOptions:
    """The packaged table of `vllm serve`'s options."""
    text = resources.files(__package__).joinpath("vllm_options.json").read_text("utf-8")
    document = json.loads(text)
    by_string: dict[str, VllmOption] = {}
    for entry in document["options"]:
        option = VllmOption(entry["dest"], tuple(entry["strings"]), entry["nargs"])
        for string in option.strings:
            by_string[string] = option
    return VllmOptions(str(document["vllm"]), by_string)


# --------------------------------------------------------------------------------------
# FlexibleArgumentParser.parse_args's rewriting


@dataclass(frozen=True)
class _Token:
    text: str
    index: int  # the extraArgs element it comes from
    synthetic: bool = False  # a JSON value vLLM made from dotted arguments


_DOTTED_KEY = re.compile(r"(?<=--)[^.]*")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _dashes(text: str) -> str:
    return _DOTTED_KEY.sub(lambda m: m.group(0).replace("_", "-"), text, count=1)


def _rewrite(args: Sequence[str]) -> tuple[list[_Token], list[tuple[int, str]]]:
    """vLLM's rewriting of the command line, with each token's element index."""
    tokens: list[_Token] = []
    problems: list[tuple[int, str]] = []
    for i, arg in enumerate(args):
        if arg.startswith("--help="):
            tokens.append(_Token("--help", i))
        elif arg.startswith("--"):
            key, eq, value = arg.partition("=")
            tokens.append(_Token(_dashes(key) + eq + value, i))
        elif arg.startswith("-O") and arg != "-O":
            level = arg[3:] if arg[2] == "=" else arg[2:]
            tokens += [_Token("--optimization-level", i), _Token(level, i)]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            tokens.append(_Token("--optimization-level", i))
        else:
            tokens.append(_Token(arg, i))
    # Dotted arguments: removed, merged per name and appended as `name '{json}'`.
    kept: list[_Token] = []
    dotted: dict[str, int] = {}
    skip = False
    for j, token in enumerate(tokens):
        if skip:
            skip = False
            continue
        text = token.text
        if (
            not text.startswith("-")
            or "." not in text
            or (text.startswith("--") and "." not in text)
        ):
            kept.append(token)
            continue
        key, eq, _ = text.partition("=")
        if eq and "." not in key:
            kept.append(token)  # the '.' is in the value
            continue
        if not eq:
            if j + 1 >= len(tokens):
                problems.append((token.index, "takes a value but has none"))
            skip = True  # the next element is its value, whatever it is
        dotted.setdefault(key.removesuffix("+").split(".")[0], token.index)
    for key, index in dotted.items():
        kept += [_Token(key, index), _Token("{}", index, synthetic=True)]
    return kept, problems


# --------------------------------------------------------------------------------------
# argparse


@dataclass(frozen=True)
class _Match:
    option: VllmOption
    explicit: str | None  # a value attached with '=' or to a short option


@dataclass(frozen=True)
class _Ambiguous:
    candidates: tuple[str, ...]


@dataclass(frozen=True)
class _Unknown:
    pass


_Classified = _Match | _Ambiguous | _Unknown | None  # None: a positional argument


def _classify(text: str) -> _Classified:
    """argparse's `_parse_optional` (Python 3.11 to 3.13) against vLLM's options."""
    table = vllm_options().by_string
    if not text or text[0] != "-":
        return None
    if text in table:
        return _Match(table[text], None)
    if len(text) == 1:
        return None
    key, eq, value = text.partition("=")
    if eq and key in table:
        return _Match(table[key], value)
    matches: dict[str, _Match] = {}
    if text[1] == "-":
        for string, option in table.items():
            if string.startswith(key):
                matches[string] = _Match(option, value if eq else None)
    else:
        for string, option in table.items():
            if string == text[:2]:
                matches[string] = _Match(option, text[2:])
            elif string.startswith(key):
                matches[string] = _Match(option, value if eq else None)
    if len({m.option for m in matches.values()}) > 1:
        return _Ambiguous(tuple(sorted(matches)))
    if matches:
        return next(iter(matches.values()))
    if _NEGATIVE_NUMBER.match(text) or " " in text:
        return None
    return _Unknown()


def _quoted(arg: str) -> str:
    return repr(arg if len(arg) <= 80 else arg[:77] + "...")


def _refusal(option: VllmOption) -> str | None:
    if option.dest in MANAGED:
        return f"sets {option.name}, which the operator manages ({MANAGED[option.dest]})"
    if option.dest in REFUSED:
        return f"sets {option.name}, which is not allowed: {REFUSED[option.dest]}"
    return None


def _space_joined(arg: str) -> str | None:
    """A refusal for `'--flag value'` in one element when the flag is a refused option."""
    words = arg.split(maxsplit=1)
    first = words[0] if words else arg
    found = _classify(_dashes(first) if first.startswith("--") else first)
    if isinstance(found, _Match):
        return _refusal(found.option)
    return None


def extra_args_problems(args: Sequence[str]) -> list[str]:
    """What is wrong with these `spec.runtime.extraArgs`; empty when vLLM will take them."""
    tokens, early = _rewrite(args)
    problems: dict[int, str] = {}  # the first problem of each element; refusals come first

    def at(index: int, problem: str) -> None:
        problems.setdefault(index, problem)

    def is_value(token: _Token) -> bool:
        return token.synthetic or (token.text != "--" and _classify(token.text) is None)

    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.synthetic:
            continue
        if token.text == "--":
            at(
                token.index,
                "ends vLLM's options: the operator's own flags after it would be read as "
                "positional arguments",
            )
            break
        found = _classify(token.text)
        if found is None:
            joined = _space_joined(args[token.index]) if " " in token.text else None
            at(
                token.index,
                joined
                or (
                    "holds an option and its value in one element, which vLLM reads as a "
                    "positional argument: split it into two elements or join them with '='"
                    if token.text.startswith("-")
                    else "is a positional argument: vllm serve already has its model and would exit"
                ),
            )
            continue
        if isinstance(found, _Ambiguous):
            shown = ", ".join(found.candidates[:6]) + (", ..." if len(found.candidates) > 6 else "")
            at(token.index, f"is an ambiguous abbreviation ({shown}): vLLM would exit")
            continue
        if isinstance(found, _Unknown):
            at(token.index, f"is not an option of vllm serve {vllm_options().version}")
            continue
        option = found.option
        refusal = _refusal(option)
        if refusal is not None:
            at(token.index, refusal)
        if option.nargs == "switch":
            if found.explicit is not None:
                at(token.index, f"gives a value to {option.name}, which takes none")
            continue
        if found.explicit is not None:
            continue
        values = 0
        while i < len(tokens) and is_value(tokens[i]) and (values == 0 or option.nargs == "list"):
            values += 1
            i += 1
            if option.nargs != "list":
                break
        if values == 0 and option.nargs != "optional-value":
            at(token.index, "takes a value but has none")
    for index, problem in early:
        problems.setdefault(index, problem)
    return [f"{FIELD}[{i}]: {_quoted(args[i])} {p}" for i, p in sorted(problems.items())]


# --------------------------------------------------------------------------------------
# The API server's version (CEL)


def refused_options() -> list[VllmOption]:
    """Every option of the table that extraArgs may not set."""
    unique = {o.dest: o for o in vllm_options().by_string.values()}
    return [o for dest, o in sorted(unique.items()) if dest in MANAGED or dest in REFUSED]


class _Trie(dict[str, "_Trie"]):
    pass


def _trie_regex(words: Sequence[str]) -> str:
    """RE2 matching any non-empty prefix of any word ('-' also matches '_')."""
    trie = _Trie()
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, _Trie())

    def emit(node: _Trie) -> str:
        parts = []
        for char, child in sorted(node.items()):
            atom = "[-_]" if char == "-" else re.escape(char)
            rest = emit(child) if child else ""
            parts.append(atom + (f"({rest})?" if rest else ""))
        return parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"

    return emit(trie)


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# The CEL messages name a family of options and the spec section to use instead.
CEL_FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "model": (
        "the model options (set spec.model)",
        frozenset(
            {
                "model",
                "revision",
                "served_model_name",
                "tokenizer_mode",
                "config_format",
                "load_format",
                "quantization",
                "hf_token",
                "reasoning_parser",
                "download_dir",
                "config",
            }
        ),
    ),
    "sizing": (
        "the GPU and memory sizing options (set spec.gpu and spec.runtime)",
        frozenset(
            {
                "tensor_parallel_size",
                "pipeline_parallel_size",
                "data_parallel_size",
                "data_parallel_size_local",
                "prefill_context_parallel_size",
                "nnodes",
                "node_rank",
                "max_model_len",
                "gpu_memory_utilization",
                "kv_cache_memory_bytes",
                "num_gpu_blocks_override",
                "kv_cache_dtype",
                "max_num_seqs",
            }
        ),
    ),
    "requests": (
        "the request options (set spec.inference)",
        frozenset({"tool_call_parser", "enable_auto_tool_choice", "override_generation_config"}),
    ),
    "serving": (
        "the serving options (host, port, TLS, CORS, API key, middleware: set spec.exposure "
        "and spec.auth)",
        frozenset(
            {
                "host",
                "port",
                "uds",
                "headless",
                "grpc",
                "tokens_only",
                "ssl_keyfile",
                "ssl_certfile",
                "middleware",
                "api_key",
                "allowed_origins",
                "allow_credentials",
                "allowed_local_media_path",
                "disable_access_log_for_endpoints",
                "shutdown_timeout",
                "help",
            }
        ),
    ),
}
_END = r"([=. \t\r\n]|$)"


def _exact_regex(names: Sequence[str], lead: str) -> str:
    alternatives = "|".join(re.escape(n).replace("\\-", "-").replace("-", "[-_]") for n in names)
    return f"^{lead}({alternatives}){_END}"


def _matches(x: str, regex: str) -> str:
    return x + ".matches(" + _cel_string(regex) + ")"


def _cel_checks() -> list[tuple[str, str]]:
    """(expression over {x}, message) pairs; {x} is one element.

    A refused long name's prefixes are refused, except the exact names of allowed options
    that happen to be such a prefix (`--tokenizer` of `--tokenizer-mode`): argparse takes an
    exact name before any abbreviation.
    """
    refused = refused_options()
    refused_dests = {o.dest for o in refused}
    allowed = sorted(
        {s for s, o in vllm_options().by_string.items() if o.dest not in refused_dests}
    )
    checks: list[tuple[str, str]] = []
    for description, dests in CEL_FAMILIES.values():
        options = [o for o in refused if o.dest in dests]
        long_names = sorted({s[2:] for o in options for s in o.strings if s.startswith("--")})
        exempt = [
            s[2:]
            for s in allowed
            if s.startswith("--") and any(n.startswith(s[2:]) for n in long_names)
        ]
        rule = "!" + _matches("{x}", "^--" + _trie_regex(long_names) + _END)
        if exempt:
            rule += " || " + _matches("{x}", _exact_regex(exempt, "--"))
        names = ", ".join(o.name for o in options)
        checks.append(
            (rule, f"sets one of {description}, in some spelling or abbreviation: {names}")
        )
    short = sorted({s[1:] for o in refused for s in o.strings if not s.startswith("--")})
    attached = "".join(s for s in short if len(s) == 1)  # `-qfp8`: the rest is the value
    exempt = [
        s[1:] for s in allowed if not s.startswith("--") and any(n.startswith(s[1:]) for n in short)
    ]
    rule = "!" + _matches("{x}", "^-([" + attached + "]|" + _trie_regex(short) + _END + ")")
    if exempt:
        rule += " || " + _matches("{x}", _exact_regex(exempt, "-"))
    checks.append(
        (
            rule,
            "sets a short option the operator manages or refuses: "
            + ", ".join(f"-{s}" for s in short),
        )
    )
    checks.append(("{x} != '--'", "is '--', which would end vLLM's options"))
    return checks


def _cel_rules() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    checks = _cel_checks()
    item_rules = [
        {"rule": rule.format(x="self"), "message": f"{FIELD}[*] {message}"}
        for rule, message in checks
    ]
    list_rules = [
        {
            "rule": "self.all(a, " + rule.format(x="a") + ")",
            "message": f"an element of {FIELD} {message}",
        }
        for rule, message in checks
    ]
    return item_rules, list_rules


# EXTRA_ARG_CEL_RULES go on the schema of one element (`self` is the string, and the API
# server's error names the index); EXTRA_ARGS_CEL_RULES are the same checks on the list
# (`self` is the list). Either set catches the same elements.
EXTRA_ARG_CEL_RULES, EXTRA_ARGS_CEL_RULES = _cel_rules()
