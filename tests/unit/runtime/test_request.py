"""Chat request checks and defaults: system prompt, history, sampling, limits."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magistral_runtime.body import MAX_JSON_DEPTH, json_depth
from magistral_runtime.errors import RequestError
from magistral_runtime.fields import read_sampling
from magistral_runtime.history import apply_history_policy
from magistral_runtime.request import (
    ChatPolicy,
    prepare_batch_chat_request,
    prepare_chat_request,
    prompt_tokens_lower_bound,
)
from magistral_runtime.system_prompt import insert_system_prompt

POLICY = ChatPolicy(
    temperature=0.7,
    top_p=0.95,
    max_tokens=40960,
    max_model_len=40960,
    max_n=1,
    max_body_bytes=64 * 1024,
    history="strip",
    reasoning_format="think-text",
    system_prompt="SYSTEM",
)
USER = {"role": "user", "content": "What is 2+2?"}


def prepare(body: Any, policy: ChatPolicy = POLICY) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    result: dict[str, Any] = json.loads(prepare_chat_request(raw, policy=policy).body)
    return result


def error(body: Any, policy: ChatPolicy = POLICY) -> RequestError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(RequestError) as caught:
        prepare_chat_request(raw, policy=policy)
    return caught.value


# -- system prompt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected_first"),
    [
        ([USER], {"role": "system", "content": "P"}),
        ([{"role": "system", "content": "mine"}, USER], {"role": "system", "content": "mine"}),
        ([{"role": "developer", "content": "dev"}, USER], {"role": "developer", "content": "dev"}),
        ([USER, {"role": "system", "content": "late"}], USER),
    ],
)
def test_insert_system_prompt(messages: list[Any], expected_first: Any) -> None:
    assert insert_system_prompt(messages, prompt="P")[0] == expected_first


@given(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"])})))
def test_the_prompt_is_inserted_once_and_first(messages: list[Any]) -> None:
    once = insert_system_prompt(messages, prompt="P")
    assert once[0] == {"role": "system", "content": "P"}
    assert once[1:] == messages
    assert insert_system_prompt(once, prompt="P") == once


def test_mode_none_leaves_messages_alone() -> None:
    body = prepare({"messages": [USER]}, replace(POLICY, system_prompt=None))
    assert body["messages"] == [USER]


# -- history policy ------------------------------------------------------------------

EARLIER = {"role": "assistant", "content": "<think>\nsteps\n</think>\nFour.", "reasoning": "x"}


@pytest.mark.parametrize(
    ("policy", "message", "expected"),
    [
        ("strip", EARLIER, {"role": "assistant", "content": "Four."}),
        ("keep", {**EARLIER, "reasoning": None}, {k: EARLIER[k] for k in ("role", "content")}),
        (
            "keep",
            {"role": "assistant", "content": "Four.", "reasoning": "steps"},
            {"role": "assistant", "content": "<think>\nsteps\n</think>\nFour."},
        ),
        (
            "keep",
            {"role": "assistant", "content": "Four.", "reasoning_content": "steps"},
            {"role": "assistant", "content": "<think>\nsteps\n</think>\nFour."},
        ),
        (
            "strip",
            {"role": "assistant", "content": [{"type": "text", "text": "<think>s</think>A"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A"}]},
        ),
        (
            "strip",
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        ),
        ("strip", {"role": "assistant", "content": "No tags."}, None),
    ],
)
def test_history_policy(policy: Any, message: dict[str, Any], expected: Any) -> None:
    result = apply_history_policy(
        [USER, message, USER], policy=policy, reasoning_format="think-text"
    )
    assert result == [USER, expected or message, USER]


PARTS = [{"type": "text", "text": "Four."}]
IMAGE = {"type": "image_url", "image_url": {"url": "data:,"}}
THINKING = {"type": "thinking", "thinking": " steps "}


@pytest.mark.parametrize(
    ("message", "expected_content"),
    [
        # Our own response sent back, with content parts instead of a string.
        ({"content": PARTS, "reasoning": "steps"},
         [{"type": "text", "text": "<think>\nsteps\n</think>\nFour."}]),
        ({"content": PARTS, "reasoning_content": "steps"},
         [{"type": "text", "text": "<think>\nsteps\n</think>\nFour."}]),
        ({"content": [*PARTS, {"type": "text", "text": " More."}], "reasoning": "steps"},
         [{"type": "text", "text": "<think>\nsteps\n</think>\nFour."},
          {"type": "text", "text": " More."}]),
        # Content that starts with something other than text: the reasoning goes first.
        ({"content": [IMAGE, *PARTS], "reasoning": "steps"},
         [{"type": "text", "text": "<think>\nsteps\n</think>\n"}, IMAGE, *PARTS]),
        ({"content": [], "reasoning": "steps"},
         [{"type": "text", "text": "<think>\nsteps\n</think>\n"}]),
        # Thinking parts are reasoning too.
        ({"content": [THINKING, *PARTS]},
         [{"type": "text", "text": "<think>\nsteps\n</think>\nFour."}]),
        # Text that already holds its reasoning is left alone (no second <think>).
        ({"content": [{"type": "text", "text": "<think>own</think>Four."}], "reasoning": "x"},
         [{"type": "text", "text": "<think>own</think>Four."}]),
        ({"content": "<think>own</think>Four.", "reasoning_content": "x"},
         "<think>own</think>Four."),
        # Only blank reasoning: nothing to keep, the fields still go.
        ({"content": PARTS, "reasoning": "  ", "reasoning_content": None}, PARTS),
        ({"content": None, "reasoning": "steps"}, "<think>\nsteps\n</think>\n"),
    ],
)  # fmt: skip
def test_keep_puts_the_reasoning_in_front_of_any_content(
    message: dict[str, Any], expected_content: Any
) -> None:
    earlier = {"role": "assistant", **message}
    before = copy.deepcopy(earlier)
    [result] = apply_history_policy([earlier], policy="keep", reasoning_format="think-text")
    assert result == {"role": "assistant", "content": expected_content}
    assert earlier == before  # not mutated


@pytest.mark.parametrize(
    ("message", "expected_content"),
    [
        ({"content": [{"type": "text", "text": "<think>s</think>Four."}], "reasoning": "s"},
         PARTS),
        ({"content": [THINKING, *PARTS], "reasoning_content": "s"}, PARTS),
        ({"content": [IMAGE, {"type": "text", "text": "<think>s</think>Four."}]},
         [IMAGE, *PARTS]),
        ({"content": "<think>s</think>Four.", "reasoning": "s", "reasoning_content": "s"},
         "Four."),
    ],
)  # fmt: skip
def test_strip_removes_the_reasoning_from_any_content(
    message: dict[str, Any], expected_content: Any
) -> None:
    earlier = {"role": "assistant", **message}
    for reasoning_format in ("think-text", "think-tokens"):
        [result] = apply_history_policy(
            [earlier], policy="strip", reasoning_format=reasoning_format
        )
        assert result == {"role": "assistant", "content": expected_content}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # vLLM hands `reasoning` to mistral-common, which renders it as a [THINK] chunk.
        ({"content": "Four.", "reasoning": "steps"}, None),
        ({"content": PARTS, "reasoning": "steps"}, None),
        # vLLM drops `reasoning_content`: it is moved to `reasoning`.
        ({"content": "Four.", "reasoning_content": "steps"},
         {"content": "Four.", "reasoning": "steps"}),
        ({"content": PARTS, "reasoning": "steps", "reasoning_content": "steps"},
         {"content": PARTS, "reasoning": "steps"}),
        ({"content": "Four.", "reasoning": None, "reasoning_content": "steps"},
         {"content": "Four.", "reasoning": "steps"}),
    ],
)  # fmt: skip
def test_keep_leaves_the_reasoning_field_for_think_token_models(
    message: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    earlier = {"role": "assistant", **message}
    result = apply_history_policy([earlier], policy="keep", reasoning_format="think-tokens")
    assert result == [{"role": "assistant", **(expected or message)}]


def test_user_messages_are_never_touched() -> None:
    user = {"role": "user", "content": "<think>my own tags</think>"}
    assert apply_history_policy([user], policy="strip", reasoning_format="think-text") == [user]


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", "tool"]),
                "content": st.text(alphabet="<>/thinka \n", max_size=30),
            }
        ),
        max_size=6,
    )
)
def test_strip_is_idempotent_and_keeps_roles(messages: list[dict[str, Any]]) -> None:
    before_call = copy.deepcopy(messages)
    once = apply_history_policy(messages, policy="strip", reasoning_format="think-text")
    assert messages == before_call  # the input is not mutated
    assert [m["role"] for m in once] == [m["role"] for m in messages]
    assert apply_history_policy(once, policy="strip", reasoning_format="think-text") == once
    for before, after in zip(messages, once, strict=True):
        if before["role"] != "assistant":
            assert before is after


# -- sampling defaults and limits ----------------------------------------------------


def test_defaults_fill_what_the_request_leaves_out() -> None:
    body = prepare({"model": "m", "messages": [USER]})
    assert body["temperature"] == 0.7
    assert body["top_p"] == 0.95
    assert body["messages"][0] == {"role": "system", "content": "SYSTEM"}
    assert body["max_tokens"] == 40960 - prompt_tokens_lower_bound(body)


def test_explicit_sampling_is_kept() -> None:
    body = prepare({"messages": [USER], "temperature": 0, "top_p": 0.5, "max_tokens": 40960})
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0, 0.5, 40960)


def test_default_max_tokens_is_capped_to_the_room_left() -> None:
    policy = replace(POLICY, max_tokens=100, max_model_len=2048, max_body_bytes=1 << 20)
    assert prepare({"messages": [USER]}, policy)["max_tokens"] == 100
    long = {"role": "user", "content": "x" * 128 * 2000}
    body = prepare({"messages": [long]}, policy)
    assert body["max_tokens"] == 2048 - prompt_tokens_lower_bound(body)
    assert body["max_tokens"] < 100


def test_an_exact_token_counter_replaces_the_estimate() -> None:
    raw = json.dumps({"messages": [USER]}).encode()
    prepared = prepare_chat_request(raw, policy=POLICY, count_tokens=lambda body: 40000)
    assert json.loads(prepared.body)["max_tokens"] == 960


@given(st.text(max_size=300), st.integers(min_value=0, max_value=5))
def test_the_lower_bound_never_exceeds_the_bytes(text: str, turns: int) -> None:
    messages = [{"role": "user", "content": text}] * (turns + 1)
    bound = prompt_tokens_lower_bound({"messages": messages})
    # Tekken needs at least one token per 128 bytes of text, plus the control tokens.
    assert bound <= 1 + 2 * len(messages) + len(text.encode()) * len(messages)
    assert bound >= 1 + 2 * len(messages)


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        (b"{not json", None, 400),
        (b"\xff\xfe", None, 400),
        (b"[]", None, 400),
        ({"messages": "hi"}, "messages", 400),
        ({"messages": []}, "messages", 400),
        ({"messages": ["hi"]}, "messages[0]", 400),
        ({"messages": [{"content": "hi"}]}, "messages[0].role", 400),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", 400),
        ({"messages": [USER], "n": 2}, "n", 400),
        ({"messages": [USER], "n": 0}, "n", 400),
        ({"messages": [USER], "n": "one"}, "n", 400),
        ({"messages": [USER], "n": 1.5}, "n", 400),
        ({"messages": [USER], "n": [1]}, "n", 400),
        ({"messages": [USER], "temperature": "hot"}, "temperature", 400),
        ({"messages": [USER], "temperature": 3}, "temperature", 400),
        ({"messages": [USER], "temperature": float("inf")}, "temperature", 400),
        ({"messages": [USER], "top_p": float("nan")}, "top_p", 400),
        ({"messages": [USER], "top_p": 0}, "top_p", 400),
        ({"messages": [USER], "max_tokens": 40961}, "max_tokens", 400),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens", 400),
        ({"messages": [USER], "max_tokens": 1.5}, "max_tokens", 400),
        ({"messages": [USER], "max_tokens": "1e3"}, "max_tokens", 400),
        ({"messages": [USER], "max_completion_tokens": 10**6}, "max_completion_tokens", 400),
        # max_completion_tokens wins, but max_tokens must still be an integer, as in vLLM.
        ({"messages": [USER], "max_completion_tokens": 5, "max_tokens": 0.5}, "max_tokens", 400),
        ({"messages": [USER], "max_completion_tokens": 0, "max_tokens": 5}, "max_completion_tokens",
         400),
        ({"messages": [USER], "stream": "maybe"}, "stream", 400),
        ({"messages": [USER], "stream": 2}, "stream", 400),
        # Nested deeper than the middleware reads (json.loads itself gives up further on).
        (b'{"messages": ' + b"[" * 200 + b"]" * 200 + b"}", None, 400),
        (b"[" * 60_000, None, 400),  # RecursionError in json.loads
        ({"messages": [{"role": "user", "content": "x" * 70000}]}, None, 413),
    ],
)  # fmt: skip
def test_bad_requests_are_4xx_naming_the_field(body: Any, param: str | None, status: int) -> None:
    err = error(body)
    assert (err.param, err.status) == (param, status)
    shape = json.loads(err.body())
    assert shape == {
        "error": {
            "message": err.message,
            "type": "invalid_request_error",
            "param": param,
            "code": status,
        }
    }


@pytest.mark.parametrize(
    ("fields", "param", "effective"),
    [
        # vLLM reads these fields with pydantic's lax int/float/bool: what it serves, we do.
        ({"max_tokens": 100.0}, "max_tokens", 100),
        ({"max_tokens": "100"}, "max_tokens", 100),
        ({"max_completion_tokens": 100.0}, "max_completion_tokens", 100),
        # max_completion_tokens wins; max_tokens is then not range-checked (vLLM ignores it).
        ({"max_completion_tokens": 100, "max_tokens": 10**6}, "max_completion_tokens", 100),
        ({"max_completion_tokens": 100, "max_tokens": 0}, "max_completion_tokens", 100),
        ({"max_completion_tokens": None, "max_tokens": 7}, "max_tokens", 7),
        ({"n": 1.0, "stream": "true", "temperature": "0.5", "top_p": 1}, None, None),
        ({"n": True, "stream": 0}, None, None),
    ],
)
def test_fields_are_read_like_vllm_reads_them(
    fields: dict[str, Any], param: str | None, effective: int | None
) -> None:
    body = prepare({"messages": [USER], **fields})
    for name, value in fields.items():
        assert body[name] == value  # forwarded as sent; vLLM coerces it the same way
    if param is None:
        assert body["max_tokens"] > 40000  # the default was added
    assert read_sampling(body, max_n=1, max_model_len=40960).max_tokens == (
        effective or body["max_tokens"]
    )


def test_a_streamed_request_is_known_as_such_when_vllm_would_stream_it() -> None:
    for value, stream in (("true", True), (1, True), ("off", False), (None, False)):
        raw = json.dumps({"messages": [USER], "stream": value}).encode()
        assert prepare_chat_request(raw, policy=POLICY).stream is stream


def test_lone_surrogates_are_forwarded_as_sent() -> None:
    # vLLM keeps them (json.loads) and its Tekken tokenizer reads them as U+FFFD: served.
    raw = b'{"messages": [{"role": "user", "content": "a\\ud800b"}], "user": "\\udfff"}'
    forwarded = prepare_chat_request(raw, policy=POLICY).body
    forwarded.decode("utf-8")  # valid UTF-8: the surrogates are escaped
    body = json.loads(forwarded)
    assert body["messages"][-1]["content"] == "a\ud800b"
    assert body["user"] == "\udfff"


def test_json_depth() -> None:
    assert json_depth(1, limit=10) == 0
    assert json_depth({"a": [1, {"b": []}]}, limit=10) == 4
    deep: Any = []
    for _ in range(50):
        deep = [deep]
    assert json_depth(deep, limit=10) == 11  # counted only just past the limit


def test_the_depth_limit_is_exact() -> None:
    def nested(levels: int) -> bytes:  # the body is level 1, `messages` 2, a message 3
        inner = b"[" * (levels - 3) + b"]" * (levels - 3)
        return b'{"messages": [{"role": "user", "content": "x", "x": ' + inner + b"}]}"

    assert prepare(nested(MAX_JSON_DEPTH))
    assert error(nested(MAX_JSON_DEPTH + 1)).param is None


def test_a_prompt_that_cannot_fit_is_refused() -> None:
    policy = replace(POLICY, max_model_len=1024, max_body_bytes=1 << 20)
    err = error({"messages": [{"role": "user", "content": "x" * 128 * 1100}]}, policy)
    assert err.param == "messages"


def test_a_larger_n_is_allowed_up_to_the_configured_max() -> None:
    assert prepare({"messages": [USER], "n": 2}, replace(POLICY, max_n=2))["n"] == 2


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
FIELDS = [
    "messages",
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "tools",
    "model",
]


@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES))
def test_any_json_body_is_accepted_or_a_4xx(body: dict[str, Any]) -> None:
    outcome = outcome_of(json.dumps(body).encode())
    assert outcome is None or (
        outcome.status in (400, 413)
        and (outcome.param is None or outcome.param.split("[")[0] in FIELDS)
    )


@given(st.binary(max_size=50))
def test_any_bytes_are_accepted_or_a_4xx(raw: bytes) -> None:
    outcome = outcome_of(raw)
    assert outcome is None or outcome.status == 400


def outcome_of(raw: bytes) -> RequestError | None:
    """None when the request is accepted; the error otherwise (anything else propagates)."""
    try:
        prepare_chat_request(raw, policy=POLICY)
    except RequestError as err:
        return err
    return None


# -- /v1/chat/completions/batch ------------------------------------------------------


def prepare_batch(body: Any, policy: ChatPolicy = POLICY) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    result: dict[str, Any] = json.loads(prepare_batch_chat_request(raw, policy=policy).body)
    return result


def test_each_conversation_of_a_batch_is_prepared_like_a_chat() -> None:
    own = [{"role": "system", "content": "mine"}, USER]
    history = [USER, EARLIER, USER]
    body = prepare_batch({"messages": [[USER], own, history]})
    assert body["messages"] == [
        [{"role": "system", "content": "SYSTEM"}, USER],
        own,
        [{"role": "system", "content": "SYSTEM"}, USER, {"role": "assistant", "content": "Four."},
         USER],
    ]  # fmt: skip
    assert (body["temperature"], body["top_p"]) == (0.7, 0.95)
    # One max_tokens for all: the largest room, so that no conversation's room is cut.
    rooms = [40960 - prompt_tokens_lower_bound({"messages": m}) for m in body["messages"]]
    assert body["max_tokens"] == max(rooms)


def test_a_batch_keeps_what_the_request_sets() -> None:
    body = prepare_batch({"messages": [[USER]], "temperature": 0, "max_completion_tokens": 9})
    assert (body["temperature"], body["max_completion_tokens"]) == (0, 9)
    assert "max_tokens" not in body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [USER]}, "messages[0]"),  # a chat's messages, not conversations
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [[USER], []]}, "messages[1]"),
        ({"messages": [[USER], [{"content": "x"}]]}, "messages[1][0].role"),
        ({"messages": [[USER], [{"role": "user", "content": 1}]]}, "messages[1][0].content"),
        ({"messages": [[USER], [{"role": "user", "content": "x" * 128 * 1100}]]}, "messages[1]"),
        ({"messages": [[USER]], "n": 2}, "n"),
        ({"messages": [[USER]], "max_tokens": 2048}, "max_tokens"),
    ],
)
def test_bad_batches_are_400_naming_the_field(body: Any, param: str) -> None:
    policy = replace(POLICY, max_model_len=1024, max_body_bytes=1 << 20)
    with pytest.raises(RequestError) as caught:
        prepare_batch_chat_request(json.dumps(body).encode(), policy=policy)
    assert (caught.value.param, caught.value.status) == (param, 400)
