"""Errors that carry a user-facing message naming the offending field."""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(ValueError):
    """Invalid operator config or endpoint spec; the message names the field."""


def field_path(loc: tuple[int | str, ...], *, prefix: str) -> str:
    """Turn a pydantic error location into a dotted path like `spec.gpu.pools[1]`."""
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        elif item.startswith("function-") or item in {"literal['auto']", "int"}:
            continue
        else:
            parts.append(item)
    return ".".join(parts) or "(root)"


def format_validation_error(exc: ValidationError, *, prefix: str, source: str) -> str:
    """One line per error: `<source>: <field path>: <message>`."""
    lines = []
    seen: set[str] = set()
    for err in exc.errors(include_url=False):
        path = field_path(tuple(err["loc"]), prefix=prefix)
        msg = str(err["msg"]).removeprefix("Value error, ")
        line = f"{path}: {msg}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return f"{source}: " + "; ".join(lines)
