"""Chat request checks and defaults, applied before vLLM sees the request (pure).

`prepare_chat_request` takes the raw body of POST /v1/chat/completions and
`prepare_batch_chat_request` that of POST /v1/chat/completions/batch (`messages` is a list
of conversations there, each prepared like a chat's); both return the body to forward, or
raise `RequestError` (an OpenAI-style 4xx naming the field). Bad input never becomes a 500:
the body's size and nesting are bounded (`body.py`), every field this module touches is
type-checked first, the way vLLM reads it (`fields.py`); everything else is left to vLLM's
own validation, which also answers 400.

Limits and vLLM 0.33.0's own behaviour (vllm/renderers/params.py, get_max_tokens in
vllm/entrypoints/serve/utils/api_utils.py): a `max_tokens` above `max_model_len` is an error
there too, while one that only overflows the room the prompt leaves is clamped to it. So:

* `max_completion_tokens` (or, when it is not set, `max_tokens`) above `max_model_len`:
  400 naming the field;
* neither set: the configured default, capped to `max_model_len` minus the prompt's
  token count; without a tokenizer the count is a lower bound (UTF-8 bytes over the longest
  Tekken token, plus the control tokens), so the cap never cuts the model's real room and
  vLLM's exact clamp still applies (a batch's one `max_tokens` is capped to the largest
  room any of its conversations leaves, so it cuts none of them);
* a prompt whose lower bound alone fills the context: 400 naming `messages`
  (`messages[i]` in a batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .asgi import dumps
from .body import check_body_size, parse_json_body
from .errors import RequestError
from .fields import Sampling, read_sampling
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


def _check_messages(messages: Any, *, where: str = "messages") -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"'{where}' must be a non-empty array of messages", param=where)
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{at}' must be an object", param=at)
        if not isinstance(message.get("role"), str):
            raise RequestError(f"'{at}.role' must be a string", param=f"{at}.role")
        if not isinstance(message.get("content"), MESSAGE_CONTENT_TYPES):
            raise RequestError(
                f"'{at}.content' must be a string, an array of content parts or null",
                param=f"{at}.content",
            )
    return messages


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the text in a message's content (strings and text parts)."""
    if isinstance(value, str):
        # A lone surrogate (3 bytes here) reaches the tokenizer as U+FFFD (3 bytes too).
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list):
        texts = (p.get("text") for p in value if isinstance(p, dict))
        return sum(_text_bytes(text) for text in texts if isinstance(text, str))
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


def _conversation(messages: list[dict[str, Any]], policy: ChatPolicy) -> list[Any]:
    """The messages with the default system prompt and the history policy applied."""
    if policy.system_prompt is not None:
        messages = insert_system_prompt(messages, prompt=policy.system_prompt)
    return apply_history_policy(
        messages, policy=policy.history, reasoning_format=policy.reasoning_format
    )


def _room(prompt_tokens: int, policy: ChatPolicy, *, param: str) -> int:
    """The output tokens the context leaves at most; 400 when it leaves none."""
    room = policy.max_model_len - prompt_tokens
    if room < 1:
        raise RequestError(
            f"the messages take at least {prompt_tokens} tokens, which leaves no room in "
            f"this model's context length of {policy.max_model_len} tokens",
            param=param,
        )
    return room


def _read(raw: bytes, policy: ChatPolicy) -> dict[str, Any]:
    check_body_size(len(raw), limit=policy.max_body_bytes)
    return parse_json_body(raw)


def _sampling(body: dict[str, Any], policy: ChatPolicy) -> Sampling:
    return read_sampling(body, max_n=policy.max_n, max_model_len=policy.max_model_len)


def _finish(body: dict[str, Any], sampling: Sampling, policy: ChatPolicy, room: int) -> bytes:
    """The body to forward, with the sampling defaults the request leaves out."""
    if sampling.temperature is None:
        body["temperature"] = policy.temperature
    if sampling.top_p is None:
        body["top_p"] = policy.top_p
    if sampling.max_tokens is None:
        body["max_tokens"] = max(1, min(policy.max_tokens, room))
    return dumps(body)


def prepare_chat_request(
    raw: bytes, *, policy: ChatPolicy, count_tokens: TokenCounter | None = None
) -> PreparedChat:
    """Check a chat completion request and apply the endpoint's defaults.

    `count_tokens`, when given, counts the prompt's tokens exactly (with the model's
    tokenizer); otherwise a lower bound is used.
    """
    body = _read(raw, policy)
    _check_messages(body.get("messages"))
    sampling = _sampling(body, policy)
    body["messages"] = _conversation(body["messages"], policy)
    prompt_tokens = count_tokens(body) if count_tokens else prompt_tokens_lower_bound(body)
    room = _room(prompt_tokens, policy, param="messages")
    return PreparedChat(
        body=_finish(body, sampling, policy, room), stream=sampling.stream, n=sampling.n or 1
    )


def prepare_batch_chat_request(raw: bytes, *, policy: ChatPolicy) -> PreparedChat:
    """Check a batch chat completion request (one conversation per choice) likewise."""
    body = _read(raw, policy)
    conversations = body.get("messages")
    if not isinstance(conversations, list) or not conversations:
        raise RequestError(
            "'messages' must be a non-empty array of conversations (arrays of messages)",
            param="messages",
        )
    for i, conversation in enumerate(conversations):
        _check_messages(conversation, where=f"messages[{i}]")
    sampling = _sampling(body, policy)
    prepared: list[list[Any]] = []
    rooms: list[int] = []
    for i, conversation in enumerate(conversations):
        where = f"messages[{i}]"
        messages = _conversation(conversation, policy)
        prepared.append(messages)
        bound = prompt_tokens_lower_bound({"messages": messages, "tools": body.get("tools")})
        rooms.append(_room(bound, policy, param=where))
    body["messages"] = prepared
    return PreparedChat(
        body=_finish(body, sampling, policy, max(rooms)), stream=False, n=len(prepared)
    )
