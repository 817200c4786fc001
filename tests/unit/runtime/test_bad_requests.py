"""Bad and unusual requests over HTTP: the middleware in front of a fake vLLM, served by a
real uvicorn on 127.0.0.1. Every answer is the vLLM-served one or a 4xx JSON error from
the middleware, never a 500 (which is what uvicorn makes of an exception that escapes)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from magistral_runtime.config import RuntimeConfig
from magistral_runtime.middleware import MagistralMiddleware, Settings

from .fake_vllm import FakeVllm, with_app
from .http_server import Answer, request, serving

KEY = "sk-bad-requests"
SYSTEM = "SYSTEM PROMPT"
USER = {"role": "user", "content": "What is 2+2?"}
REASONING = "The user asks 2+2. That is 4."
SPLIT = {"content": "The answer is **4**.", "reasoning": REASONING, "reasoning_content": REASONING}


class Endpoint:
    def __init__(self, base: str, fake: FakeVllm) -> None:
        self.base = base
        self.fake = fake

    def post(self, path: str, body: bytes | dict[str, Any], *, key: str | None = KEY) -> Answer:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return request(self.base, path, body=raw, key=key)

    def chat(self, body: bytes | dict[str, Any]) -> Answer:
        return self.post("/v1/chat/completions", body)

    def forwarded(self, count: int) -> list[dict[str, Any]]:
        """What vLLM got since `count` requests."""
        return [body for _, body in self.fake.requests[count:]]


def endpoint(tmp_path: Path, history: str) -> Iterator[Endpoint]:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(SYSTEM)
    config = RuntimeConfig(
        model="mistralai/Magistral-Small-2506",
        served_model_name="magistral-small",
        tensor_parallel_size=1,
        max_model_len=40960,
        gpu_memory_utilization=0.9,
        system_prompt={"mode": "custom", "path": str(prompt)},
        reasoning_history=history,
    )
    fake = FakeVllm(api_key=KEY)
    settings = Settings.from_config(config, env={"VLLM_API_KEY": KEY}, install_signal_handler=False)
    with serving(with_app(MagistralMiddleware(fake, settings=settings))) as base:
        yield Endpoint(base, fake)


@pytest.fixture(scope="module")
def strip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    yield from endpoint(tmp_path_factory.mktemp("strip"), "strip")


@pytest.fixture(scope="module")
def keep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    yield from endpoint(tmp_path_factory.mktemp("keep"), "keep")


def assert_error(answer: Answer, *, status: int, param: str | None, says: str) -> None:
    """An OpenAI-shaped JSON error from the middleware."""
    assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, status)
    assert error["type"] == "invalid_request_error"
    assert says in error["message"]


# -- 1. deeply nested JSON -----------------------------------------------------------

OBJECTS_129 = b'{"a": ' * 129 + b"1" + b"}" * 129  # in a body: 130 levels, 2 over the limit


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"messages": ' + b"[" * 300 + b"]" * 300 + b"}",  # json.loads reads it: too deep for us
        b'{"messages": [{"role": "user", "content": "x"}], "x": ' + OBJECTS_129 + b"}",
        b"[" * 500_000,  # json.loads gives up with RecursionError
    ],
)
def test_deeply_nested_bodies_are_400(strip: Endpoint, body: bytes) -> None:
    count = len(strip.fake.requests)
    answer = strip.chat(body)
    assert_error(answer, status=400, param=None, says="more than 128 levels deep")
    assert strip.forwarded(count) == []


def test_nesting_within_the_limit_is_served(strip: Endpoint) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(50):  # a tool whose JSON schema nests 101 levels (the body: 105 of 128)
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    answer = strip.chat({"messages": [USER], "tools": [tool], "tool_choice": "none"})
    assert answer.status == 200, answer.body[:300]
    assert strip.fake.requests[-1][1]["tools"] == [tool]


# -- 2. lone UTF-16 surrogates -------------------------------------------------------


def test_lone_surrogates_are_passed_to_vllm_as_sent(strip: Endpoint) -> None:
    # What vLLM does with them: json.loads keeps them, pydantic accepts them and its
    # Tekken tokenizer reads them as U+FFFD, so it serves the request. So do we.
    body = (
        b'{"messages": [{"role": "user", "content": "a\\ud800b"},'
        b' {"role": "assistant", "content": "<think>\\udfff</think>ok", "reasoning": "\\udc00"},'
        b' {"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}],'
        b' "user": "\\udbff", "\\ud800key": 1}'
    )
    answer = strip.chat(body)
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["choices"][0]["message"]["content"] == SPLIT["content"]
    forwarded = strip.fake.requests[-1][1]
    assert forwarded["messages"][1:] == [
        {"role": "user", "content": "a\ud800b"},
        {"role": "assistant", "content": "ok"},  # stripped (strip policy)
        {"role": "user", "content": [{"type": "text", "text": "\ud83d"}]},
    ]
    assert (forwarded["user"], forwarded["\ud800key"]) == ("\udbff", 1)


def test_a_lone_surrogate_in_a_refused_field_is_named_in_the_error(strip: Endpoint) -> None:
    answer = strip.chat(b'{"messages": [{"role": "user", "content": "x"}], "n": "\\ud800"}')
    assert_error(answer, status=400, param="n", says="'n' must be an integer, got '\\ud800'")


# -- 3. reasoning history with content parts -----------------------------------------

PARTS_TURN = {"role": "assistant", "content": [{"type": "text", "text": "Four."}],
              "reasoning": "add them", "reasoning_content": "add them"}  # fmt: skip
THINKING_TURN = {"role": "assistant",
                 "content": [{"type": "thinking", "thinking": "add them"},
                             {"type": "text", "text": "Four."}]}  # fmt: skip
TEXT_TURN = {"role": "assistant", "content": "Four.", "reasoning_content": "add them"}


@pytest.mark.parametrize("turn", [PARTS_TURN, THINKING_TURN, TEXT_TURN])
def test_keep_keeps_the_reasoning_of_any_content(keep: Endpoint, turn: dict[str, Any]) -> None:
    answer = keep.chat({"messages": [USER, turn, USER]})
    assert answer.status == 200, answer.body[:300]
    [earlier] = [m for m in keep.fake.requests[-1][1]["messages"] if m["role"] == "assistant"]
    text = "<think>\nadd them\n</think>\nFour."
    expected = text if isinstance(turn["content"], str) else [{"type": "text", "text": text}]
    assert earlier == {"role": "assistant", "content": expected}


@pytest.mark.parametrize("turn", [PARTS_TURN, THINKING_TURN, TEXT_TURN])
def test_strip_strips_the_reasoning_of_any_content(strip: Endpoint, turn: dict[str, Any]) -> None:
    answer = strip.chat({"messages": [USER, turn, USER]})
    assert answer.status == 200, answer.body[:300]
    [earlier] = [m for m in strip.fake.requests[-1][1]["messages"] if m["role"] == "assistant"]
    expected = "Four." if isinstance(turn["content"], str) else [{"type": "text", "text": "Four."}]
    assert earlier == {"role": "assistant", "content": expected}


# -- 4. output limits and numbers, read as vLLM reads them ---------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"max_completion_tokens": 100, "max_tokens": 50_000},  # vLLM: max_completion_tokens
        {"max_tokens": 100.0},  # pydantic's lax int: 100
        {"max_completion_tokens": "100"},
        {"n": 1.0, "stream": "false", "temperature": "0.5"},
    ],
)
def test_what_vllm_serves_is_served(strip: Endpoint, fields: dict[str, Any]) -> None:
    answer = strip.chat({"messages": [USER], **fields})
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["choices"][0]["message"]["content"] == SPLIT["content"]
    forwarded = strip.fake.requests[-1][1]
    assert {k: forwarded[k] for k in fields} == fields  # as sent: vLLM reads them itself


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"max_tokens": 100.5}, "max_tokens", "'max_tokens' must be an integer, got 100.5"),
        ({"max_completion_tokens": 50_000, "max_tokens": 100}, "max_completion_tokens",
         "above this model's context length of 40960 tokens"),
        ({"max_completion_tokens": 100, "max_tokens": "lots"}, "max_tokens", "an integer"),
    ],
)  # fmt: skip
def test_what_vllm_refuses_is_400_naming_the_field(
    strip: Endpoint, fields: dict[str, Any], param: str, says: str
) -> None:
    count = len(strip.fake.requests)
    answer = strip.chat({"messages": [USER], **fields})
    assert_error(answer, status=400, param=param, says=says)
    assert strip.forwarded(count) == []


# -- 5. /v1/responses and /v1/chat/completions/batch ---------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/responses"), ("GET", "/v1/responses/resp_1"),
     ("POST", "/v1/responses/resp_1/cancel")],
)  # fmt: skip
def test_the_responses_api_is_refused(strip: Endpoint, method: str, path: str) -> None:
    count = len(strip.fake.requests)
    body = json.dumps({"model": "magistral-small", "input": "What is 2+2?"}).encode()
    answer = request(strip.base, path, body=body if method == "POST" else None, method=method,
                     key=KEY)  # fmt: skip
    assert_error(answer, status=404, param=None, says="/v1/responses is not served")
    assert "use /v1/chat/completions" in answer.json()["error"]["message"]
    assert strip.forwarded(count) == []


def test_the_responses_api_without_the_key_is_vllms_401(strip: Endpoint) -> None:
    answer = strip.post("/v1/responses", {"input": "hi"}, key="wrong")
    assert (answer.status, answer.json()) == (401, {"error": "Unauthorized"})


def test_a_batch_gets_the_system_prompt_defaults_and_the_reasoning_split(strip: Endpoint) -> None:
    own = [{"role": "system", "content": "Be brief."}, USER]
    answer = strip.post("/v1/chat/completions/batch", {"messages": [[USER], own]})
    assert answer.status == 200, answer.body[:300]
    choices = answer.json()["choices"]
    assert [c["message"] for c in choices] == [{"role": "assistant", **SPLIT}] * 2
    path, forwarded = strip.fake.requests[-1]
    assert path == "/v1/chat/completions/batch"
    assert forwarded["messages"] == [[{"role": "system", "content": SYSTEM}, USER], own]
    assert (forwarded["temperature"], forwarded["top_p"]) == (0.7, 0.95)
    assert 40000 < forwarded["max_tokens"] <= 40960


def test_a_bad_batch_is_400_naming_the_conversation(strip: Endpoint) -> None:
    count = len(strip.fake.requests)
    answer = strip.post("/v1/chat/completions/batch", {"messages": [[USER], [{"role": 1}]]})
    assert_error(answer, status=400, param="messages[1][0].role", says="must be a string")
    assert strip.forwarded(count) == []
