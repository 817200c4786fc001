"""The sampling fields the middleware reads, read the way vLLM 0.33.0 reads them (pure).

vLLM validates a chat request with pydantic in lax mode (`ChatCompletionRequest` in
vllm/entrypoints/openai/chat_completion/protocol.py: `n`, `max_tokens`,
`max_completion_tokens` are `int | None`, `temperature` and `top_p` `float | None`,
`stream` `bool | None`). So `max_tokens: 100.0` or `"100"` is 100 there, while `100.5`
is an error; `stream: "true"` is true. The middleware uses the same pydantic validators,
so it refuses only what vLLM would refuse as well (plus its own limits), and forwards the
values as sent.

Which output limit counts: `max_completion_tokens` when set, else `max_tokens`
(`build_tok_params` and `get_max_tokens` in vLLM); the other one is not looked at beyond
its type, so `max_completion_tokens: 100` with `max_tokens: 1000000` is served.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import RequestError

_INT: TypeAdapter[int | None] = TypeAdapter(int | None)
_FLOAT: TypeAdapter[float | None] = TypeAdapter(float | None)
_BOOL: TypeAdapter[bool | None] = TypeAdapter(bool | None)
OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens")  # the first one set wins


@dataclass(frozen=True, slots=True)
class Sampling:
    """What the request asks for (None: not set)."""

    n: int | None
    stream: bool
    temperature: float | None
    top_p: float | None
    max_tokens: int | None  # the output limit that counts (see OUTPUT_LIMITS)


def _lax(body: dict[str, Any], name: str, adapter: TypeAdapter[Any], expected: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError:
        raise RequestError(f"'{name}' must be {expected}, got {value!r:.40}", param=name) from None


def _number(body: dict[str, Any], name: str) -> float | None:
    value: float | None = _lax(body, name, _FLOAT, "a number")
    if value is not None and not math.isfinite(value):
        raise RequestError(f"'{name}' must be a finite number", param=name)
    return value


def read_sampling(body: dict[str, Any], *, max_n: int, max_model_len: int) -> Sampling:
    """The request's sampling fields, checked against vLLM's types and the endpoint's limits."""
    n: int | None = _lax(body, "n", _INT, "an integer")
    if n is not None and n < 1:
        raise RequestError("'n' must be at least 1", param="n")
    if n is not None and n > max_n:
        raise RequestError(
            f"'n' is {n}; this endpoint serves at most {max_n} choice(s) per request", param="n"
        )
    stream: bool | None = _lax(body, "stream", _BOOL, "a boolean")
    temperature = _number(body, "temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be between 0 and 2", param="temperature")
    top_p = _number(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError("'top_p' must be above 0 and at most 1", param="top_p")
    limits: dict[str, int | None] = {
        name: _lax(body, name, _INT, "an integer") for name in OUTPUT_LIMITS
    }
    name = next((k for k in OUTPUT_LIMITS if limits[k] is not None), None)
    max_tokens = limits[name] if name else None
    if name and max_tokens is not None:
        if max_tokens < 1:
            raise RequestError(f"'{name}' must be at least 1", param=name)
        if max_tokens > max_model_len:
            raise RequestError(
                f"'{name}' is {max_tokens}, above this model's context length of "
                f"{max_model_len} tokens",
                param=name,
            )
    return Sampling(
        n=n, stream=bool(stream), temperature=temperature, top_p=top_p, max_tokens=max_tokens
    )
