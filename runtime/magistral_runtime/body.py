"""Reading a request body as JSON, with its size and nesting bounded (pure).

`json.loads` recurses once per nested array or object: a body of a thousand `[` raises
RecursionError, which would become a 500. vLLM 0.33.0 (FastAPI parses the body with
`json.loads` too) answers such bodies 400 ("There was an error parsing the body"). Here any
body nested deeper than `MAX_JSON_DEPTH` levels gets a 400, whether `json.loads` gave up or
not, so everything the middleware does later with the parsed value (its own walks,
`json.dumps`) stays far from the interpreter's recursion limit. Real requests nest a few
levels (a tool's JSON schema a few more); 128 leaves ample room.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import RequestError

MAX_JSON_DEPTH = 128


def check_body_size(size: int, *, limit: int) -> None:
    """413 for bodies above the limit (checked while reading, before parsing)."""
    if size > limit:
        raise RequestError(
            f"the request body is larger than this endpoint's limit of {limit} bytes",
            param=None,
            status=413,
        )


def check_declared_size(declared: bytes | None, *, limit: int) -> None:
    """413 when a Content-Length header already says the body is too large."""
    if declared is None or not declared.isdigit():
        return  # absent or malformed: the size is checked while reading
    # A very long number is too large without converting it (int() limits its digits).
    check_body_size(limit + 1 if len(declared) > 18 else int(declared), limit=limit)


def _too_deep() -> RequestError:
    return RequestError(
        f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
        param=None,
    )


def json_depth(value: Any, *, limit: int) -> int:
    """The nesting depth of a parsed JSON value (a scalar: 0), counted up to `limit` + 1."""
    if not isinstance(value, dict | list):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}", param=None) from None
    # Depth first: whether json.loads gives up on a deep body depends on the interpreter's
    # recursion limit and the stack already in use, so a parsed deep array must say the same.
    # Fewer brackets than the limit cannot nest deeper: most bodies skip the walk.
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_DEPTH and json_depth(body, limit=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _too_deep()
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", param=None)
    return body
