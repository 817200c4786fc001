"""Fidelity on CPU: the prompts the middleware builds render to Magistral's chat format, and
the official `openai` client, used like the model card's example, sees clean answers.

Rendering uses mistral-common (the source of truth for the format) with a v7 Tekken
tokenizer made from the Tekken file mistral-common ships (REFERENCE.md): version set to
v7, image section dropped. Token ids differ from the real model's; the text is the format.

The client tests run the middleware in front of a fake vLLM app (fake_vllm.py) served by
uvicorn on 127.0.0.1, on a free port.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mistral_common
import openai
import pytest
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from openai.types.chat import ChatCompletionChunk

from magistral_runtime.config import RuntimeConfig
from magistral_runtime.middleware import MagistralMiddleware, Settings
from magistral_runtime.request import ChatPolicy, prepare_chat_request

from .fake_vllm import FakeVllm, with_app
from .http_server import serving

Tokenizer = MistralTokenizer[Any, Any, Any, Any, Any]
SYSTEM = "A user will ask you to solve a task. Think first, then answer."
KEY = "sk-fidelity"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    bundled = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
    data = json.loads(bundled.read_text())
    data["config"]["version"] = "v7"
    data.pop("image", None)
    path = tmp_path_factory.mktemp("tekken") / "tekken_v7.json"
    path.write_text(json.dumps(data))
    return MistralTokenizer.from_file(str(path))


def policy(history: Any = "strip", system_prompt: str | None = SYSTEM) -> ChatPolicy:
    return ChatPolicy(
        temperature=0.7,
        top_p=0.95,
        max_tokens=40960,
        max_model_len=40960,
        max_n=1,
        max_body_bytes=1 << 20,
        history=history,
        reasoning_format="think-text",
        system_prompt=system_prompt,
    )


def render(tokenizer: Tokenizer, messages: list[dict[str, Any]], **kw: Any) -> str:
    """The prompt text vLLM would build from what the middleware forwards."""
    raw = json.dumps({"messages": messages}).encode()
    forwarded = json.loads(prepare_chat_request(raw, policy=policy(**kw)).body)
    request = ChatCompletionRequest.from_openai(messages=forwarded["messages"])
    tokens = tokenizer.encode_chat_completion(request).tokens
    text: str = tokenizer.decode(tokens, special_token_policy=SpecialTokenPolicy.KEEP)
    return text


Q1 = {"role": "user", "content": "What is 2+2?"}
Q2 = {"role": "user", "content": "And 3+3?"}
ANSWERED = {"role": "assistant", "content": "<think>\nadd them\n</think>\nFour."}
# Our own response sent back as history: clean content plus the reasoning fields.
ROUND_TRIP = {"role": "assistant", "content": "Four.", "reasoning": "add them",
              "reasoning_content": "add them"}  # fmt: skip
# The same with content parts, as clients that always send parts do.
ROUND_TRIP_PARTS = {**ROUND_TRIP, "content": [{"type": "text", "text": "Four."}]}


def test_single_turn_gets_the_system_prompt(tokenizer: Tokenizer) -> None:
    assert render(tokenizer, [Q1]) == (
        f"<s>[SYSTEM_PROMPT]{SYSTEM}[/SYSTEM_PROMPT][INST]What is 2+2?[/INST]"
    )


def test_a_clients_own_system_prompt_wins(tokenizer: Tokenizer) -> None:
    mine = {"role": "system", "content": "Be terse."}
    assert render(tokenizer, [mine, Q1]) == (
        "<s>[SYSTEM_PROMPT]Be terse.[/SYSTEM_PROMPT][INST]What is 2+2?[/INST]"
    )


def test_mode_none_renders_no_system_prompt(tokenizer: Tokenizer) -> None:
    assert render(tokenizer, [Q1], system_prompt=None) == "<s>[INST]What is 2+2?[/INST]"


@pytest.mark.parametrize("earlier", [ANSWERED, ROUND_TRIP, ROUND_TRIP_PARTS])
def test_multi_turn_strip_keeps_only_answers(tokenizer: Tokenizer, earlier: dict[str, Any]) -> None:
    assert render(tokenizer, [Q1, earlier, Q2], history="strip") == (
        f"<s>[SYSTEM_PROMPT]{SYSTEM}[/SYSTEM_PROMPT]"
        "[INST]What is 2+2?[/INST]Four.</s>[INST]And 3+3?[/INST]"
    )


@pytest.mark.parametrize("earlier", [ANSWERED, ROUND_TRIP, ROUND_TRIP_PARTS])
def test_multi_turn_keep_keeps_the_reasoning_in_the_models_format(
    tokenizer: Tokenizer, earlier: dict[str, Any]
) -> None:
    assert render(tokenizer, [Q1, earlier, Q2], history="keep") == (
        f"<s>[SYSTEM_PROMPT]{SYSTEM}[/SYSTEM_PROMPT]"
        "[INST]What is 2+2?[/INST]<think>\nadd them\n</think>\nFour.</s>[INST]And 3+3?[/INST]"
    )


# -- the openai client against the middleware, over HTTP -----------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FakeVllm]]:
    folder = tmp_path_factory.mktemp("model")
    shutil.copy(Path(__file__), folder / "unused.py")  # a model dir with other files too
    (folder / "SYSTEM_PROMPT.txt").write_text(SYSTEM)
    config = RuntimeConfig(
        model=str(folder),
        served_model_name="magistral-small",
        tensor_parallel_size=1,
        max_model_len=40960,
        gpu_memory_utilization=0.9,
    )
    fake = FakeVllm(api_key=KEY)
    settings = Settings.from_config(config, env={"VLLM_API_KEY": KEY}, install_signal_handler=False)
    app = MagistralMiddleware(fake, settings=settings)
    with serving(with_app(app)) as base:
        yield f"{base}/v1", fake


@pytest.fixture
def client(server: tuple[str, FakeVllm]) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=server[0], max_retries=0)


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["magistral-small"]


def test_streamed_chat_like_the_model_card(
    client: openai.OpenAI, server: tuple[str, FakeVllm]
) -> None:
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model,
        messages=[Q1],  # type: ignore[list-item]
        stream=True,
        temperature=0.7,
        top_p=0.95,
        max_tokens=40_960,
    )
    content = reasoning = reasoning_content = ""
    for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning", None) or ""
        reasoning_content += getattr(delta, "reasoning_content", None) or ""
    assert content == "The answer is **4**."
    assert reasoning == reasoning_content == "The user asks 2+2. That is 4."
    forwarded = server[1].requests[-1][1]
    assert forwarded["messages"][0] == {"role": "system", "content": SYSTEM}
    assert (forwarded["temperature"], forwarded["top_p"], forwarded["max_tokens"]) == (
        0.7,
        0.95,
        40_960,
    )


def test_non_streamed_chat(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="magistral-small", messages=[Q1])  # type: ignore[list-item]
    message = response.choices[0].message
    assert message.content == "The answer is **4**."
    assert getattr(message, "reasoning", None) == "The user asks 2+2. That is 4."


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_a_tool_call(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="magistral-small",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = (choice.message.tool_calls or [])[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert not choice.message.content  # the reasoning is not left in the content
    assert getattr(choice.message, "reasoning", None) == "I need the weather tool for Paris."


def test_a_streamed_tool_call(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="magistral-small",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    names, content, reasoning = [], "", ""
    for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning", None) or ""
        names += [c.function.name for c in delta.tool_calls or [] if c.function]
    assert names == ["get_weather"]
    assert (content, reasoning) == ("", "I need the weather tool for Paris.")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [({"n": 2}, "n"), ({"max_tokens": 50_000}, "max_tokens"), ({"temperature": 9}, "temperature")],
)
def test_openai_shaped_errors(client: openai.OpenAI, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="magistral-small", messages=[Q1], **kwargs)  # type: ignore[list-item]
    error = caught.value
    assert error.status_code == 400
    assert (error.param, error.type, error.code) == (param, "invalid_request_error", "400")


def test_a_wrong_key_is_vllms_401(server: tuple[str, FakeVllm]) -> None:
    wrong = openai.OpenAI(api_key="nope", base_url=server[0], max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="magistral-small", messages=[Q1])  # type: ignore[list-item]


def test_deep_readiness_over_http(server: tuple[str, FakeVllm]) -> None:
    base = server[0].removesuffix("/v1")
    client = openai.OpenAI(api_key=KEY, base_url=base, max_retries=0)
    ready = client.get("/magistral/ready", cast_to=object)
    # 200 (get raises otherwise); "serving" when earlier tests' requests produced output.
    assert isinstance(ready, dict)
    assert ready["status"] in ("ready", "serving")
