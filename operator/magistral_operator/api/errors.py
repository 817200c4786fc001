"""Errors that carry a user-facing message naming the offending field."""

from __future__ import annotations

from pydantic import ValidationError

from . import k8s_rules

# What a pattern means, for messages a person can act on.
PATTERN_MEANINGS = {
    k8s_rules.QUANTITY: "a Kubernetes quantity such as 8, 500m or 64Gi (never negative)",
    k8s_rules.DNS1123_SUBDOMAIN: "a Kubernetes object name (lower-case letters, digits, '-' "
    "and '.', starting and ending with a letter or digit)",
    k8s_rules.DNS1123_LABEL: "a DNS label (lower-case letters, digits and '-', starting and "
    "ending with a letter or digit)",
    k8s_rules.CONFIG_KEY: "a ConfigMap or Secret key (letters, digits, '-', '_' and '.')",
    k8s_rules.GIT_REVISION: "a commit sha or a branch or tag name (not starting with '-')",
    k8s_rules.IMAGE_REFERENCE: "an image reference ([registry/]repository[:tag][@sha256:digest])",
    f"^$|{k8s_rules.RELATIVE_PATH}": "a relative path inside the volume (no leading '/', "
    "no '.' or '..' segment)",
}


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
        pattern = (err.get("ctx") or {}).get("pattern")
        if err["type"] == "string_pattern_mismatch" and pattern in PATTERN_MEANINGS:
            msg = f"{err['input']!r} is not {PATTERN_MEANINGS[pattern]}"
        # Validators that check a whole list name the element themselves (`<path>[i]: ...`).
        line = msg if msg.startswith(f"{path}[") else f"{path}: {msg}"
        if line not in seen:
            seen.add(line)
            lines.append(line)
    return f"{source}: " + "; ".join(lines)
