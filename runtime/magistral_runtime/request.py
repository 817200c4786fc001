"""Chat request checks and defaults, applied before vLLM sees the request (pure).

`prepare_chat_request` takes the raw body of POST /v1/chat/completions and returns the body
to forward, or raises `RequestError` (an OpenAI-style 4xx naming the field). Bad input
never becomes a 500: every field this module touches is type-checked first; everything else
is left to vLLM's own validation, which also answers 400.

Limits and vLLM 0.33.0's own behaviour (vllm/renderers/params.py, get_max_tokens in
vllm/entrypoints/serve/utils/api_utils.py): a `max_tokens` above `max_model_len` is an error
there too, while one that only overflows the room the prompt leaves is clamped to it. So:

* `max_tokens` / `max_completion_tokens` above `max_model_len`: 400 naming the field;
* no `max_tokens`: the configured default, capped to `max_model_len` minus the prompt's
  token count; without a tokenizer the count is a lower bound (UTF-8 bytes over the longest
  Tekken token, plus the control tokens), so the cap never cuts the model's real room and
  vLLM's exact clamp still applies;
* a prompt whose lower bound alone fills the context: 400 naming `messages`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .asgi import dumps
from .errors import RequestError
from .history import apply_history_policy
from .system_prompt import insert_system_prompt

# Longest token of mistral-common's Tekken vocabularies is 76 bytes; rounded up for margin.
MAX_TOKEN_BYTES = 128
# [INST]/[/INST] or [SYSTEM_PROMPT]/[/SYSTEM_PROMPT] around each message, </s> after answers.
CONTROL_TOKENS_PER_MESSAGE = 2
MESSAGE_CONTENT_TYPES = (str, list, type(None))

TokenCounter = Callable[[dict[str, Any]], int]


@dataclass(frozen=True, slots=True)
class ChatPolicy:
    """What the middleware applies to every chat request (from the runtime config)."""

    temperature: float
    top_p: float
    max_tokens: int
    max_model_len: int
    max_n: int
    max_body_bytes: int
    history: Literal["keep", "strip"]
    reasoning_format: Literal["think-text", "think-tokens"]
    system_prompt: str | None  # None: insert nothing (mode none)


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """The body to forward and what the response side needs to know."""

    body: bytes
    stream: bool
    n: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array of messages", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object", param=where)
        if not isinstance(message.get("role"), str):
            raise RequestError(f"'{where}.role' must be a string", param=f"{where}.role")
        if not isinstance(message.get("content"), MESSAGE_CONTENT_TYPES):
            raise RequestError(
                f"'{where}.content' must be a string, an array of content parts or null",
                param=f"{where}.content",
            )
    return messages


def _optional(
    body: dict[str, Any], name: str, *, check: Callable[[Any], bool], expected: str
) -> Any:
    value = body.get(name)
    if value is not None and not check(value):
        raise RequestError(f"'{name}' must be {expected}, got {value!r:.40}", param=name)
    return value


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the text in a message's content (strings and text parts)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_text_bytes(p.get("text")) for p in value if isinstance(p, dict))
    return 0


def prompt_tokens_lower_bound(body: dict[str, Any]) -> int:
    """A count the real prompt's token count is never below (no tokenizer needed)."""
    messages: Sequence[Any] = body.get("messages") or ()
    size = 0
    for message in messages:
        if isinstance(message, dict):
            size += _text_bytes(message.get("content"))
    tools = body.get("tools")
    if tools:
        size += len(dumps(tools))
    return 1 + CONTROL_TOKENS_PER_MESSAGE * len(messages) + math.ceil(size / MAX_TOKEN_BYTES)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}", param=None) from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", param=None)
    return body


def check_body_size(size: int, *, limit: int) -> None:
    """413 for bodies above the limit (checked while reading, before parsing)."""
    if size > limit:
        raise RequestError(
            f"the request body is larger than this endpoint's limit of {limit} bytes",
            param=None,
            status=413,
        )


def prepare_chat_request(
    raw: bytes, *, policy: ChatPolicy, count_tokens: TokenCounter | None = None
) -> PreparedChat:
    """Check a chat completion request and apply the endpoint's defaults.

    `count_tokens`, when given, counts the prompt's tokens exactly (with the model's
    tokenizer); otherwise a lower bound is used.
    """
    check_body_size(len(raw), limit=policy.max_body_bytes)
    body = parse_json_body(raw)
    messages = _check_messages(body.get("messages"))

    n = _optional(body, "n", check=_is_int, expected="an integer")
    if n is not None and n < 1:
        raise RequestError("'n' must be at least 1", param="n")
    if n is not None and n > policy.max_n:
        raise RequestError(
            f"'n' is {n}; this endpoint serves at most {policy.max_n} choice(s) per request",
            param="n",
        )
    stream = _optional(body, "stream", check=lambda v: isinstance(v, bool), expected="a boolean")
    temperature = _optional(body, "temperature", check=_is_number, expected="a number")
    if temperature is not None and not 0 <= temperature <= 2:
        raise RequestError("'temperature' must be between 0 and 2", param="temperature")
    top_p = _optional(body, "top_p", check=_is_number, expected="a number")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError("'top_p' must be above 0 and at most 1", param="top_p")
    requested: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = _optional(body, name, check=_is_int, expected="an integer")
        if value is None:
            continue
        if value < 1:
            raise RequestError(f"'{name}' must be at least 1", param=name)
        if value > policy.max_model_len:
            raise RequestError(
                f"'{name}' is {value}, above this model's context length of "
                f"{policy.max_model_len} tokens",
                param=name,
            )
        requested = value if requested is None else requested

    if policy.system_prompt is not None:
        messages = insert_system_prompt(messages, prompt=policy.system_prompt)
    messages = apply_history_policy(
        messages, policy=policy.history, reasoning_format=policy.reasoning_format
    )
    body["messages"] = messages

    prompt_tokens = count_tokens(body) if count_tokens else prompt_tokens_lower_bound(body)
    room = policy.max_model_len - prompt_tokens
    if room < 1:
        raise RequestError(
            f"the messages take at least {prompt_tokens} tokens, which leaves no room in "
            f"this model's context length of {policy.max_model_len} tokens",
            param="messages",
        )
    if temperature is None:
        body["temperature"] = policy.temperature
    if top_p is None:
        body["top_p"] = policy.top_p
    if requested is None:
        body["max_tokens"] = max(1, min(policy.max_tokens, room))
    return PreparedChat(body=dumps(body), stream=bool(stream), n=n or 1)
