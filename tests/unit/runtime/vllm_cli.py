"""The `vllm serve` command line of a vLLM release, read from that release's source.

No vLLM install and no GPU: the release's sdist is downloaded once from PyPI (the simple
index's JSON form, PEP 691, with the index's sha256 checked) and its Python files are
cached under ~/.cache/magistral-operator/vllm-src. The flags are then read from the
source with `ast`, the way vLLM 0.33.0 defines them:

* `vllm/entrypoints/common/cli_args.py`: `make_arg_parser` adds a few flags with explicit
  `parser.add_argument("--flag", ...)` calls, then `FrontendArgs.add_cli_args` and
  `AsyncEngineArgs.add_cli_args`. `FrontendArgs` (and its base `BaseFrontendArgs`) are
  config dataclasses: every annotated field becomes `--<field name with _ as ->`.
* `vllm/engine/arg_utils.py`: `EngineArgs.add_cli_args` (and `AsyncEngineArgs`'s) call
  `group.add_argument("--flag", **x_kwargs["field"])`, where
  `x_kwargs = get_kwargs(SomeConfig)`: the flag's type comes from that config class's field
  annotation (`_compute_kwargs`: a bool field is a `--flag/--no-flag` switch, a
  `bool | str | None` field takes an optional value, everything else one value).
* the documented values of Literal-typed fields (`TokenizerMode`, `LoadFormats`, ...) and
  the tool and reasoning parser registries (`_TOOL_PARSERS_TO_REGISTER`,
  `_REASONING_PARSERS_TO_REGISTER`).

Anything that does not look like this any more raises `SourceLayoutError`, so a new
release that moves things around fails the tests instead of passing them unchecked.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

CACHE_ROOT = Path(
    os.environ.get("MAGISTRAL_VLLM_SRC_CACHE")
    or Path.home() / ".cache" / "magistral-operator" / "vllm-src"
)
INDEX = os.environ.get("MAGISTRAL_PYPI_SIMPLE", "https://pypi.org/simple")

Kind = Literal["switch", "value", "optional-value"]


class SourceLayoutError(AssertionError):
    """The release's source is not laid out the way this reader expects."""


class SourceUnavailableError(AssertionError):
    """The release's source could not be downloaded (offline?)."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: Kind
    value_type: str = "str"  # str | int | float | json
    choices: frozenset[str] | None = None  # documented values, when the source lists them
    origin: str = ""


# --------------------------------------------------------------------------------------
# Download and cache


def _sdist_url(version: str) -> tuple[str, str]:
    request = urllib.request.Request(
        f"{INDEX}/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        index = json.load(response)
    name = f"vllm-{version}.tar.gz"
    for entry in index["files"]:
        if entry["filename"] == name:
            return entry["url"], entry["hashes"]["sha256"]
    raise SourceUnavailableError(f"{name} is not on the package index {INDEX}")


def vllm_source(version: str) -> Path:
    """The `vllm/` package directory of the release's sdist (downloaded once, then cached)."""
    target = CACHE_ROOT / f"vllm-{version}"
    if (target / ".complete").exists():
        return target / "vllm"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    archive = CACHE_ROOT / f"vllm-{version}.tar.gz"
    try:
        if not archive.exists():
            url, sha256 = _sdist_url(version)
            partial = archive.with_suffix(".part")
            digest = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=300) as response, partial.open("wb") as out:
                while block := response.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != sha256:
                partial.unlink()
                raise SourceUnavailableError(f"sha256 mismatch for {url}")
            partial.rename(archive)
    except OSError as exc:
        raise SourceUnavailableError(
            f"cannot download the vLLM {version} sdist from {INDEX} ({exc}); this test reads "
            f"the pinned release's CLI definitions from its source and needs PyPI once "
            f"(cached under {CACHE_ROOT} afterwards)"
        ) from exc
    prefix = f"vllm-{version}/vllm/"
    staging = Path(tempfile.mkdtemp(dir=CACHE_ROOT))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        members = [m for m in members if m.name.endswith(".py")]
        tar.extractall(staging, members=members, filter="data")
    shutil.rmtree(target, ignore_errors=True)
    (staging / f"vllm-{version}").rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    (target / ".complete").write_text(version)
    archive.unlink()  # the extracted Python files are all the tests read
    return target / "vllm"


# --------------------------------------------------------------------------------------
# Reading the source


def _parse(path: Path) -> ast.Module:
    if not path.exists():
        raise SourceLayoutError(f"{path} is missing")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _class(module: ast.Module, name: str) -> ast.ClassDef | None:
    for node in module.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    return None


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise SourceLayoutError(f"class {cls.name} has no method {name}")


def _function(module: ast.Module, name: str) -> ast.FunctionDef:
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise SourceLayoutError(f"no function {name}")


def _fields(cls: ast.ClassDef) -> dict[str, str]:
    """Annotated fields of a class body: name -> annotation source."""
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def _union_parts(annotation: str) -> set[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for char in annotation:
        depth += char in "[("
        depth -= char in "])"
        if char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    unwrapped = {p[len("Optional[") : -1] if p.startswith("Optional[") else p for p in parts}
    return {p for p in unwrapped if p} | ({"None"} if len(unwrapped) < len(parts) else set())


def _literal_values(node: ast.expr) -> frozenset[str] | None:
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Literal"
    ):
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return frozenset(str(i.value) for i in items if isinstance(i, ast.Constant))
    return None


def _registry_keys(module: ast.Module, name: str) -> frozenset[str]:
    for node in module.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            if not isinstance(value, ast.Dict):
                raise SourceLayoutError(f"{name} is not a dict literal")
            return frozenset(str(k.value) for k in value.keys if isinstance(k, ast.Constant))
    raise SourceLayoutError(f"no registry {name}")


@dataclass
class VllmSource:
    root: Path  # the vllm/ package directory
    _modules: dict[Path, ast.Module] = field(default_factory=dict)

    def resolve(self, relative: str) -> Path:
        """`relative` in this release; a module that moved between releases is found by name.

        (0.32.0 keeps `entrypoints/common/cli_args.py` in `entrypoints/launchers/`, for one.)
        Among files of the same name, the one sharing the most directory names wins; a tie
        or none raises SourceLayoutError.
        """
        path = self.root / relative
        if path.exists():
            return path
        wanted = Path(relative)
        candidates = sorted(self.root.rglob(wanted.name))
        if not candidates:
            return path  # _parse raises SourceLayoutError naming it
        parts = set(wanted.parent.parts)

        def shared(candidate: Path) -> int:
            return len(parts & set(candidate.relative_to(self.root).parent.parts))

        best = max(map(shared, candidates))
        winners = [c for c in candidates if shared(c) == best]
        if len(winners) != 1:
            raise SourceLayoutError(f"{relative} is missing and {winners} all could be it")
        return winners[0]

    def module(self, relative: str) -> ast.Module:
        path = self.resolve(relative)
        if path not in self._modules:
            self._modules[path] = _parse(path)
        return self._modules[path]

    def text(self, relative: str) -> str:
        return self.resolve(relative).read_text(encoding="utf-8")

    def _typed_modules(self) -> Iterator[ast.Module]:
        for folder in ("config", "transformers_utils", "model_executor/model_loader"):
            for path in sorted((self.root / folder).glob("*.py")):
                yield self.module(str(path.relative_to(self.root)))
        yield self.module("entrypoints/common/cli_args.py")

    @cached_property
    def literal_aliases(self) -> dict[str, frozenset[str]]:
        """Module-level `Name = Literal[...]` aliases of the config modules."""
        aliases: dict[str, frozenset[str]] = {}
        for module in self._typed_modules():
            for node in module.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    values = _literal_values(node.value)
                    if isinstance(target, ast.Name) and values:
                        aliases.setdefault(target.id, values)
        return aliases

    @cached_property
    def classes(self) -> dict[str, ast.ClassDef]:
        found: dict[str, ast.ClassDef] = {}
        for module in self._typed_modules():
            for node in module.body:
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, node)
        return found

    def class_fields(self, name: str) -> dict[str, str]:
        cls = self.classes.get(name)
        if cls is None:
            raise SourceLayoutError(f"config class {name} not found")
        fields: dict[str, str] = {}
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id in self.classes:
                fields.update(self.class_fields(base.id))
        fields.update(_fields(cls))
        return fields

    def flag_from_annotation(self, name: str, annotation: str, *, origin: str) -> list[Flag]:
        """What `_compute_kwargs` makes of a field with this annotation."""
        parts = _union_parts(annotation)
        if parts == {"bool", "str", "None"}:
            return [Flag(name, "optional-value", origin=origin)]
        if "bool" in parts:
            # argparse.BooleanOptionalAction: --flag and --no-flag
            return [
                Flag(name, "switch", origin=origin),
                Flag("--no-" + name.removeprefix("--"), "switch", origin=origin),
            ]
        choices: set[str] = set()
        for part in parts:
            literal = _literal_values(ast.parse(part, mode="eval").body)
            choices |= literal or self.literal_aliases.get(part, frozenset())
        if choices:
            return [Flag(name, "value", choices=frozenset(choices), origin=origin)]
        value_type = "str"
        if "int" in parts:
            value_type = "int"
        elif "float" in parts:
            value_type = "float"
        elif any(p.startswith("dict") for p in parts):
            value_type = "json"
        return [Flag(name, "value", value_type=value_type, origin=origin)]

    def _add_argument_flags(self, function: ast.FunctionDef, *, origin: str) -> list[Flag]:
        """Flags of every `*.add_argument(...)` call in a function body."""
        # variable -> config class (x = get_kwargs(Cls)); variable -> (class, field)
        kwargs_of, field_of = _kwargs_variables(function)
        flags: list[Flag] = []
        for node, names in _add_argument_calls(function):
            long_names = [n for n in names if n.startswith("--")]
            if not long_names:
                continue  # positional arguments
            explicit = {k.arg: k.value for k in node.keywords if k.arg is not None}
            source = next((k.value for k in node.keywords if k.arg is None), None)
            if isinstance(source, ast.Dict):  # **{**x_kwargs["field"], "key": value}
                for dict_key, item in zip(source.keys, source.values, strict=True):
                    if isinstance(dict_key, ast.Constant) and isinstance(dict_key.value, str):
                        explicit[dict_key.value] = item
                source = next(
                    (v for k, v in zip(source.keys, source.values, strict=True) if k is None),
                    None,
                )
            for name in long_names:
                flags += self._flag_for_call(
                    name,
                    explicit=explicit,
                    source=source,
                    kwargs_of=kwargs_of,
                    field_of=field_of,
                    origin=origin,
                )
        return flags

    def _flag_for_call(
        self,
        name: str,
        *,
        explicit: dict[str, ast.expr],
        source: ast.expr | None,
        kwargs_of: dict[str, str],
        field_of: dict[str, tuple[str, str]],
        origin: str,
    ) -> list[Flag]:
        action = explicit.get("action")
        if action is not None:
            text = ast.unparse(action)
            if text.endswith("BooleanOptionalAction"):
                return [
                    Flag(name, "switch", origin=origin),
                    Flag("--no-" + name.removeprefix("--"), "switch", origin=origin),
                ]
            if text in ("'store_true'", "'store_false'"):
                return [Flag(name, "switch", origin=origin)]
        if source is not None:
            owner: tuple[str, str] | None = None
            if isinstance(source, ast.Subscript) and isinstance(source.value, ast.Name):
                key = source.slice
                if source.value.id in kwargs_of and isinstance(key, ast.Constant):
                    owner = (kwargs_of[source.value.id], str(key.value))
            elif isinstance(source, ast.Name) and source.id in field_of:
                owner = field_of[source.id]
            if owner is None:
                raise SourceLayoutError(f"{name}: cannot tell where its kwargs come from")
            cls, field_name = owner
            annotation = self.class_fields(cls).get(field_name)
            if annotation is None:
                raise SourceLayoutError(f"{name}: {cls} has no field {field_name}")
            return self.flag_from_annotation(name, annotation, origin=f"{cls}.{field_name}")
        value_type = "str"
        type_text = ast.unparse(explicit["type"]) if "type" in explicit else ""
        if type_text in ("int", "float"):
            value_type = type_text
        nargs = explicit.get("nargs")
        kind: Kind = "value"
        if isinstance(nargs, ast.Constant) and nargs.value == "?":
            kind = "optional-value"
        choices = explicit.get("choices")
        listed = None
        if isinstance(choices, ast.List | ast.Tuple):
            listed = frozenset(str(c.value) for c in choices.elts if isinstance(c, ast.Constant))
        return [Flag(name, kind, value_type=value_type, choices=listed, origin=origin)]

    def serve_flags(self) -> dict[str, Flag]:
        """Every long flag `vllm serve` accepts, by name."""
        cli_args = self.module("entrypoints/common/cli_args.py")
        make_parser = _function(cli_args, "make_arg_parser")
        make_source = ast.unparse(make_parser)
        for needed in ("FrontendArgs.add_cli_args(", "AsyncEngineArgs.add_cli_args("):
            if needed not in make_source:
                raise SourceLayoutError(f"make_arg_parser no longer calls {needed}...)")
        flags = self._add_argument_flags(make_parser, origin="make_arg_parser")

        base = _class(cli_args, "BaseFrontendArgs")
        frontend = _class(cli_args, "FrontendArgs")
        if base is None or frontend is None:
            raise SourceLayoutError("BaseFrontendArgs / FrontendArgs not found")
        if "--{key.replace('_', '-')}" not in ast.unparse(_method(base, "add_cli_args")):
            raise SourceLayoutError("frontend flags are no longer --<field with - for _>")
        for field_name, annotation in self.class_fields("FrontendArgs").items():
            flags += self.flag_from_annotation(
                "--" + field_name.replace("_", "-"), annotation, origin=f"FrontendArgs.{field_name}"
            )

        arg_utils = self.module("engine/arg_utils.py")
        for cls_name in ("EngineArgs", "AsyncEngineArgs"):
            cls = _class(arg_utils, cls_name)
            if cls is None:
                raise SourceLayoutError(f"{cls_name} not found in engine/arg_utils.py")
            flags += self._add_argument_flags(
                _method(cls, "add_cli_args"), origin=f"{cls_name}.add_cli_args"
            )
        by_name: dict[str, Flag] = {}
        for flag in flags:
            by_name.setdefault(flag.name, flag)
        return by_name

    def registered(self, kind: Literal["tool", "reasoning"]) -> frozenset[str]:
        if kind == "tool":
            return _registry_keys(
                self.module("tool_parsers/__init__.py"), "_TOOL_PARSERS_TO_REGISTER"
            )
        return _registry_keys(
            self.module("reasoning/__init__.py"), "_REASONING_PARSERS_TO_REGISTER"
        )

    def has_serve_subcommand(self) -> bool:
        """`vllm serve` exists and builds its parser with `make_arg_parser`."""
        module = self.module("entrypoints/cli/serve.py")
        for cls in (n for n in module.body if isinstance(n, ast.ClassDef)):
            names = {
                node.value.value
                for node in cls.body
                if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "name" for t in node.targets)
                and isinstance(node.value, ast.Constant)
            }
            if "serve" in names:
                return "make_arg_parser(" in ast.unparse(_method(cls, "subparser_init"))
        return False


def _add_argument_calls(function: ast.FunctionDef) -> Iterator[tuple[ast.Call, list[str]]]:
    """Every `*.add_argument(...)` call in a function body, with its literal option strings."""
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            names = [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
            yield node, names


def _is_get_kwargs(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "get_kwargs"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Name)
    )


def _get_kwargs_class(node: ast.expr) -> str:
    assert isinstance(node, ast.Call)
    assert isinstance(node.args[0], ast.Name)
    return node.args[0].id


# --------------------------------------------------------------------------------------
# Checking an argv


def argv_problems(
    argv: list[str],
    *,
    flags: dict[str, Flag],
    registries: dict[str, frozenset[str]],
) -> list[str]:
    """Problems of a `vllm serve MODEL --flag value ...` argv against the release's flags."""
    problems: list[str] = []
    if argv[:2] != ["vllm", "serve"] or len(argv) < 3 or argv[2].startswith("-"):
        return [f"not `vllm serve MODEL ...`: {argv[:3]}"]
    i = 3
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=")
        flag = flags.get(name)
        if flag is None:
            problems.append(f"{name}: not a flag of this vLLM release")
            i += 1
            continue
        if flag.kind == "switch":
            if eq:
                problems.append(f"{name}: a switch takes no value")
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        elif flag.kind == "optional-value":
            i += 1
            continue
        else:
            problems.append(f"{name}: needs a value")
            i += 1
            continue
        problems += _value_problems(flag, value, registries=registries)
    return problems


def _value_problems(flag: Flag, value: str, *, registries: dict[str, frozenset[str]]) -> list[str]:
    allowed = registries.get(flag.name) or flag.choices
    if allowed is not None and value not in allowed:
        return [f"{flag.name} {value}: not one of {sorted(allowed)} ({flag.origin})"]
    try:
        if flag.value_type == "int":
            int(value)
        elif flag.value_type == "float":
            float(value)
        elif flag.value_type == "json" and not isinstance(json.loads(value), dict):
            return [f"{flag.name}: expects a JSON object"]
    except ValueError:
        return [f"{flag.name} {value}: not a valid {flag.value_type}"]
    return []


# --------------------------------------------------------------------------------------
# Every argparse action of `vllm serve`: its option strings and how many values it takes.
#
# `serve_flags` above answers "does this flag exist, does this value fit"; `serve_options`
# answers what argparse needs to split a command line: every option string an action
# registers (long names, `-tp`-style short names, aliases such as
# `--device-memory-utilization`, the `--no-x` of a BooleanOptionalAction and the
# `--enable-x`/`--disable-x` pair vLLM's EnableDisableAction adds, see
# vllm/utils/argparse_utils.py), its dest and its nargs, following
# vllm/engine/arg_utils.py:_compute_kwargs and the kwargs edits in `add_cli_args` and
# `_customize_cli_kwargs`.

Nargs = Literal["switch", "value", "optional-value", "list"]

_BUILTIN_SCALARS = frozenset(
    {"str", "int", "float", "dict", "Any", "object", "type", "Path", "None"}
)
_SWITCH_ACTIONS = frozenset({"'store_true'", "'store_false'", "'store_const'", "'count'"})
_ENABLE_DISABLE = {"--enable-": "--disable-", "--disable-": "--enable-"}


@dataclass(frozen=True)
class Option:
    dest: str
    strings: tuple[str, ...]  # every option string argparse registers for the action
    nargs: Nargs
    origin: str = ""


def _defined_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    if type(node).__name__ == "TypeAlias":
        return str(node.name.id)  # type: ignore[attr-defined]
    return None


def _switch_strings(names: list[str]) -> list[str]:
    """Option strings of vLLM's EnableDisableAction (it replaces BooleanOptionalAction)."""
    strings = list(names)
    strings += ["--no-" + n[2:] for n in names if n.startswith("--")]
    for name in names:
        for prefix, inverse in _ENABLE_DISABLE.items():
            if name.startswith(prefix):
                strings.append(inverse + name.removeprefix(prefix))
    return strings


def _nargs_of(text: str) -> Nargs:
    """argparse's nargs (as source text) as one of our kinds."""
    if text in ("None", "1"):
        return "value"
    if text == "'?'":
        return "optional-value"
    if text in ("'+'", "'*'") or text.isdigit():
        return "list" if text not in ("0",) else "switch"
    raise SourceLayoutError(f"unknown nargs {text}")


@dataclass(frozen=True)
class _Kwargs:
    """What `_compute_kwargs` gives one field, as far as splitting argv goes."""

    nargs: Nargs
    boolean_optional: bool = False


class _Edits:
    """`kwargs["field"]["nargs" | "action"] = ...` / `del ...` edits made before add_argument."""

    def __init__(self) -> None:
        self.by_field: dict[tuple[str, str], dict[str, str | None]] = {}

    def scan(
        self,
        function: ast.FunctionDef,
        *,
        kwargs_of: dict[str, str],
        field_of: dict[str, tuple[str, str]],
    ) -> None:
        for node in ast.walk(function):
            targets: list[ast.expr] = []
            value: str | None = None
            if isinstance(node, ast.Assign):
                targets, value = list(node.targets), ast.unparse(node.value)
            elif isinstance(node, ast.Delete):
                targets = list(node.targets)
            for target in targets:
                if not (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value in ("nargs", "action", "flags")
                ):
                    continue
                key = str(target.slice.value)
                owner = target.value
                where: tuple[str, str] | None = None
                if (
                    isinstance(owner, ast.Subscript)
                    and isinstance(owner.value, ast.Name)
                    and isinstance(owner.slice, ast.Constant)
                    and owner.value.id in kwargs_of
                ):
                    where = (kwargs_of[owner.value.id], str(owner.slice.value))
                elif isinstance(owner, ast.Name) and owner.id in field_of:
                    where = field_of[owner.id]
                if where is None or key == "flags":
                    raise SourceLayoutError(f"cannot follow the kwargs edit {ast.unparse(node)}")
                self.by_field.setdefault(where, {})[key] = value


def _kwargs_variables(
    function: ast.FunctionDef, *, implicit: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    kwargs_of: dict[str, str] = dict(implicit or {})
    field_of: dict[str, tuple[str, str]] = {}
    assignments = [
        (node.targets[0].id, node.value)
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ]
    for target, value in assignments:
        if _is_get_kwargs(value):
            kwargs_of[target] = _get_kwargs_class(value)
    for target, value in assignments:
        if not isinstance(value, ast.Subscript) or not isinstance(value.slice, ast.Constant):
            continue
        key = str(value.slice.value)
        if _is_get_kwargs(value.value):
            field_of[target] = (_get_kwargs_class(value.value), key)
        elif isinstance(value.value, ast.Name) and value.value.id in kwargs_of:
            field_of[target] = (kwargs_of[value.value.id], key)
    return kwargs_of, field_of


class _OptionReader:
    def __init__(self, source: VllmSource) -> None:
        self.source = source
        self.edits = _Edits()

    # -- annotations -------------------------------------------------------------------

    @cached_property
    def _index(self) -> dict[str, list[Path]]:
        """Where each module-level class or assignment of the package is (by a text scan)."""
        pattern = re.compile(r"^(?:class (\w+)\b|(\w+)(?:: TypeAlias)? = |type (\w+) = )", re.M)
        index: dict[str, list[Path]] = {}
        for path in sorted(self.source.root.rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for match in pattern.finditer(text):
                for name in match.groups():
                    if name:
                        index.setdefault(name, []).append(path)
        return index

    def _definition(self, name: str) -> ast.stmt | None:
        for path in self._index.get(name, []):
            module = self.source.module(str(path.relative_to(self.source.root)))
            for node in module.body:
                if _defined_name(node) == name:
                    return node
        return None

    def _alias(self, name: str) -> ast.expr | None:
        node = self._definition(name)
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            return node.value
        if type(node).__name__ == "TypeAlias":  # `type X = ...` (Python 3.12)
            return node.value  # type: ignore[attr-defined,no-any-return]
        return None

    def _is_dataclass(self, name: str) -> bool:
        node = self._definition(name)
        if not isinstance(node, ast.ClassDef):
            return False
        decorators = {ast.unparse(d).split("(")[0].split(".")[-1] for d in node.decorator_list}
        return bool(decorators & {"config", "dataclass"})

    def _parts(self, node: ast.expr, depth: int = 0) -> list[ast.expr]:
        """The members of a union annotation, aliases and Annotated[...] unwrapped."""
        if depth > 10:
            raise SourceLayoutError(f"alias loop at {ast.unparse(node)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return self._parts(ast.parse(node.value, mode="eval").body, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return self._parts(node.left, depth + 1) + self._parts(node.right, depth + 1)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            head = node.value.id
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if head in ("Optional",):
                return [*self._parts(items[0], depth + 1), ast.Constant(None)]
            if head == "Union":
                return [p for item in items for p in self._parts(item, depth + 1)]
            if head == "Annotated":
                return self._parts(items[0], depth + 1)
        if isinstance(node, ast.Name) and node.id not in _BUILTIN_SCALARS:
            alias = self._alias(node.id)
            if alias is not None:
                return self._parts(alias, depth + 1)
        return [node]

    def kwargs_for_annotation(self, annotation: str) -> _Kwargs:
        """`_compute_kwargs`'s branches, in its order, as far as nargs goes."""
        parts = self._parts(ast.parse(annotation, mode="eval").body)
        heads: set[str] = set()
        for part in parts:
            if isinstance(part, ast.Constant) and part.value is None:
                heads.add("None")
            elif isinstance(part, ast.Subscript):
                heads.add(ast.unparse(part.value).removeprefix("typing."))
            elif isinstance(part, ast.Name | ast.Attribute):
                heads.add(ast.unparse(part).split(".")[-1])
            else:
                raise SourceLayoutError(f"cannot read the annotation {annotation}")
        if any(self._is_dataclass(h) for h in heads - _BUILTIN_SCALARS):
            return _Kwargs("value")
        if heads == {"bool", "str", "None"}:
            return _Kwargs("optional-value")
        if "bool" in heads:
            return _Kwargs("switch", boolean_optional=True)
        if "Literal" in heads:
            return _Kwargs("value")
        if heads & {"tuple", "Tuple", "list", "List", "set", "Set"}:
            return _Kwargs("list")
        # Anything else is one value (`type=str` for non-builtins, json.loads for dicts);
        # a name we cannot find could alias bool or list, so it must be one we know.
        unknown = {
            h
            for h in heads - _BUILTIN_SCALARS - {"Callable", "Dict"}
            if self._definition(h) is None
        }
        if unknown:
            raise SourceLayoutError(f"{annotation}: unknown types {sorted(unknown)}")
        return _Kwargs("value")

    # -- add_argument calls ------------------------------------------------------------

    def options_of(
        self,
        function: ast.FunctionDef,
        *,
        origin: str,
        implicit: dict[str, str] | None = None,
    ) -> list[Option]:
        kwargs_of, field_of = _kwargs_variables(function, implicit=implicit)
        self.edits.scan(function, kwargs_of=kwargs_of, field_of=field_of)
        options: list[Option] = []
        for node, names in _add_argument_calls(function):
            if any(isinstance(a, ast.Starred) for a in node.args):
                continue  # the frontend's `*extra_flags, f"--{key}"`: read from the fields
            if not names or not names[0].startswith("-"):
                continue  # positional (model_tag)
            explicit = {k.arg: k.value for k in node.keywords if k.arg is not None}
            source = next((k.value for k in node.keywords if k.arg is None), None)
            if isinstance(source, ast.Dict):
                for key, item in zip(source.keys, source.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        explicit[key.value] = item
                source = next(
                    (v for k, v in zip(source.keys, source.values, strict=True) if k is None),
                    None,
                )
            owner: tuple[str, str] | None = None
            if isinstance(source, ast.Subscript) and isinstance(source.value, ast.Name):
                if source.value.id in kwargs_of and isinstance(source.slice, ast.Constant):
                    owner = (kwargs_of[source.value.id], str(source.slice.value))
            elif isinstance(source, ast.Name) and source.id in field_of:
                owner = field_of[source.id]
            elif source is not None:
                raise SourceLayoutError(f"{names[0]}: cannot tell where its kwargs come from")
            options.append(self._option(names, explicit=explicit, owner=owner, origin=origin))
        return options

    def _option(
        self,
        names: list[str],
        *,
        explicit: dict[str, ast.expr],
        owner: tuple[str, str] | None,
        origin: str,
    ) -> Option:
        long_names = [n for n in names if n.startswith("--")]
        dest = (long_names or names)[0].lstrip("-").replace("-", "_")
        if "dest" in explicit:
            dest_node = explicit["dest"]
            if not isinstance(dest_node, ast.Constant):
                raise SourceLayoutError(f"{names[0]}: dest is not a literal")
            dest = str(dest_node.value)
        base = _Kwargs("value")
        edits: dict[str, str | None] = {}
        if owner is not None:
            cls, field_name = owner
            annotation = self.source.class_fields(cls).get(field_name)
            if annotation is None:
                raise SourceLayoutError(f"{names[0]}: {cls} has no field {field_name}")
            base = self.kwargs_for_annotation(annotation)
            edits = self.edits.by_field.get(owner, {})
            origin = f"{cls}.{field_name}"
        action = ast.unparse(explicit["action"]) if "action" in explicit else None
        if "action" in edits:
            action = edits["action"]
        nargs: Nargs = base.nargs
        if "nargs" in edits:
            nargs = _nargs_of(edits["nargs"] or "None")
        if "nargs" in explicit:
            nargs = _nargs_of(ast.unparse(explicit["nargs"]))
        boolean_optional = base.boolean_optional and action is None
        if action is not None:
            if action.endswith("BooleanOptionalAction"):
                boolean_optional = True
            elif action in _SWITCH_ACTIONS:
                nargs = "switch"
            elif action == "'append'":
                nargs = "value" if "nargs" not in edits and "nargs" not in explicit else nargs
            elif action[:1] in "'\"":
                raise SourceLayoutError(f"{names[0]}: unknown action {action}")
            # A custom Action class keeps the nargs of its kwargs.
        if boolean_optional:
            return Option(dest, tuple(_switch_strings(names)), "switch", origin)
        if nargs == "switch" and action is None:
            raise SourceLayoutError(f"{names[0]}: a switch without an action")
        return Option(dest, tuple(names), nargs, origin)


def serve_options(source: VllmSource) -> list[Option]:
    """Every option of `vllm serve`, as argparse will register it."""
    reader = _OptionReader(source)
    cli_args = source.module("entrypoints/common/cli_args.py")
    options = reader.options_of(_function(cli_args, "make_arg_parser"), origin="make_arg_parser")

    for cls_name in ("BaseFrontendArgs", "FrontendArgs"):
        cls = _class(cli_args, cls_name)
        if cls is None:
            raise SourceLayoutError(f"{cls_name} not found")
        customize = _method(cls, "_customize_cli_kwargs")
        reader.options_of(customize, origin=cls_name, implicit={"frontend_kwargs": "FrontendArgs"})
    add_cli_args = ast.unparse(_method(_class(cli_args, "BaseFrontendArgs"), "add_cli_args"))  # type: ignore[arg-type]
    if 'value.pop("flags", [])' not in add_cli_args.replace("'", '"'):
        raise SourceLayoutError("BaseFrontendArgs.add_cli_args no longer takes extra flags")
    for field_name in source.class_fields("FrontendArgs"):
        name = "--" + field_name.replace("_", "-")
        options.append(
            reader._option(
                [name], explicit={}, owner=("FrontendArgs", field_name), origin="FrontendArgs"
            )
        )

    arg_utils = source.module("engine/arg_utils.py")
    for cls_name in ("EngineArgs", "AsyncEngineArgs"):
        cls = _class(arg_utils, cls_name)
        if cls is None:
            raise SourceLayoutError(f"{cls_name} not found in engine/arg_utils.py")
        options += reader.options_of(
            _method(cls, "add_cli_args"), origin=f"{cls_name}.add_cli_args"
        )
    seen: dict[str, Option] = {}
    for option in options:
        for string in option.strings:
            if string in seen:
                raise SourceLayoutError(f"{string} is registered twice (argparse would refuse)")
            seen[string] = option
    return options
