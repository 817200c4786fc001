"""The simulator's HTTP API, driven by the official ``openai`` client and by raw HTTP."""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable

import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e_engine.conftest import ThreadedSimulator, fetch, metrics, value

SimFactory = Callable[..., ThreadedSimulator]
MAGISTRAL_2506 = re.compile(r"^<think>\n.+\n</think>\n.+", re.DOTALL)
MESSAGES = [{"role": "user", "content": "How many GPUs does a 24B model need?"}]


def client(sim: ThreadedSimulator, key: str = "none") -> OpenAI:
    return OpenAI(base_url=f"{sim.url}/v1", api_key=key, max_retries=0, timeout=30)


def post(
    sim: ThreadedSimulator, path: str, payload: dict[str, object], **headers: str
) -> tuple[int, bytes]:
    return fetch(sim.url + path, method="POST", body=json.dumps(payload).encode(), headers=headers)


# ------------------------------------------------------------------------------- formats


def test_models_lists_the_served_name(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    models = client(sim).models.list()
    assert [m.id for m in models.data] == ["magistral-test"]
    assert models.data[0].owned_by == "vllm"


def test_chat_stream_with_the_openai_client(sim_factory: SimFactory) -> None:
    sim = sim_factory(output_tokens_min=60, output_tokens_max=60)
    stream = client(sim).chat.completions.create(
        model="magistral-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert MAGISTRAL_2506.match(content), content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert usage is not None
    assert not chunks[-1].choices
    assert usage.completion_tokens == 60
    assert usage.total_tokens == usage.prompt_tokens + 60
    assert len({c.id for c in chunks}) == 1


def test_raw_sse_framing(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({"messages": MESSAGES, "stream": True, "max_tokens": 10}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    events = resp.read().decode().split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"  # 10 < 16 natural tokens
    conn.close()


def test_chat_not_streamed(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    reply = client(sim).chat.completions.create(
        model="magistral-test",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert MAGISTRAL_2506.match(choice.message.content or "")
    assert reply.usage is not None
    assert 16 <= reply.usage.completion_tokens <= 32


def test_completions_streamed_and_not(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    api = client(sim)
    whole = api.completions.create(model="magistral-test", prompt="Once upon", max_tokens=5)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 5
    parts = list(api.completions.create(model="magistral-test", prompt=[1, 2, 3], stream=True))
    assert "".join(p.choices[0].text for p in parts).startswith("<think>")
    assert parts[-1].choices[0].finish_reason == "stop"


def test_reasoning_parser_moves_reasoning_to_its_own_field(sim_factory: SimFactory) -> None:
    sim = sim_factory(reasoning_parser="mistral")
    reply = client(sim).chat.completions.create(
        model="magistral-test",
        messages=MESSAGES,  # type: ignore[arg-type]
    )
    message = reply.choices[0].message
    assert message.content
    assert "<think>" not in message.content
    assert (message.model_extra or {}).get("reasoning")
    chunks = list(
        client(sim).chat.completions.create(
            model="magistral-test",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
        )
    )
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning") or "" for c in chunks
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert reasoning
    assert content
    assert "think>" not in content


def test_request_errors_look_like_vllm(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    api = client(sim)
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="other", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="cannot be greater than max_model_len"):
        api.chat.completions.create(
            model="magistral-test",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=5000,
        )
    with pytest.raises(openai.BadRequestError, match="context length is only 4096"):
        api.completions.create(model="magistral-test", prompt=list(range(4096)))
    clamped = api.completions.create(
        model="magistral-test",
        prompt=list(range(4090)),
        max_tokens=100,
        extra_body={"ignore_eos": True},
    )
    assert clamped.usage is not None
    assert clamped.usage.completion_tokens == 6  # the room the prompt leaves
    assert clamped.choices[0].finish_reason == "length"
    status, body = post(sim, "/v1/chat/completions", {"messages": "nope"})
    assert status == 400
    assert json.loads(body)["error"]["type"] == "BadRequestError"
    status, _ = fetch(sim.url + "/v1/nothing")
    assert status == 404
    status, _ = fetch(sim.url + "/v1/chat/completions")
    assert status == 405


# --------------------------------------------------------------------------------- auth


def test_api_key_guards_v1_only(sim_factory: SimFactory) -> None:
    sim = sim_factory(api_keys=("sk-sim",))
    for path in ("/v1/models", "/v1/chat/completions"):
        status, body = fetch(sim.url + path, method="GET" if "models" in path else "POST")
        assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})
    status, _ = fetch(sim.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        client(sim, "wrong").models.list()
    assert [m.id for m in client(sim, "sk-sim").models.list().data] == ["magistral-test"]
    assert fetch(sim.url + "/health")[0] == 200
    assert fetch(sim.url + "/metrics")[0] == 200


# ------------------------------------------------------------------- queueing and metrics


def test_waiting_queue_builds_beyond_max_num_seqs(sim_factory: SimFactory) -> None:
    """max_num_seqs=2 and 6 slow requests: /metrics shows 2 running and 4 waiting."""
    sim = sim_factory(max_num_seqs=2, itl_ms=20.0)
    results: list[int] = []
    # 5 s each: all six must be in before the first two end (0.8 s was little, and 2 s leaves
    # little room for a stall of this process, which runs the simulator too)
    tokens = 250

    def one() -> None:
        status, _ = post(
            sim,
            "/v1/chat/completions",
            {"messages": MESSAGES, "max_tokens": tokens, "ignore_eos": True},
        )
        results.append(status)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    seen: set[tuple[float, float]] = set()
    while (2.0, 4.0) not in seen:
        assert any(t.is_alive() for t in threads), f"never saw 2 running + 4 waiting: {seen}"
        samples = metrics(sim.url)
        running = value(samples, "vllm:num_requests_running")
        waiting = value(samples, "vllm:num_requests_waiting")
        assert running <= 2
        seen.add((running, waiting))
    for t in threads:
        t.join(timeout=60)
    assert results == [200] * 6
    samples = metrics(sim.url)
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 6
    assert value(samples, "vllm:request_queue_time_seconds_count") == 6
    assert value(samples, "vllm:generation_tokens_total") == 6 * tokens
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:num_requests_waiting") == 0


def test_metrics_exposition_is_vllm_shaped(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    api = client(sim)
    usage = [
        api.chat.completions.create(
            model="magistral-test",
            messages=MESSAGES,  # type: ignore[arg-type]
        ).usage
        for _ in range(3)
    ]
    status, body = fetch(sim.url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    expected = {
        "vllm:num_requests_running": "gauge",
        "vllm:num_requests_waiting": "gauge",
        "vllm:kv_cache_usage_perc": "gauge",
        "vllm:prompt_tokens": "counter",
        "vllm:generation_tokens": "counter",
        "vllm:request_success": "counter",
        "vllm:num_preemptions": "counter",
        "vllm:time_to_first_token_seconds": "histogram",
        "vllm:inter_token_latency_seconds": "histogram",
        "vllm:e2e_request_latency_seconds": "histogram",
        "vllm:request_queue_time_seconds": "histogram",
    }
    for name, kind in expected.items():
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert sample.labels["model_name"] == "magistral-test"
            assert sample.labels["engine"] == "0"
    samples = metrics(sim.url)
    assert all(u is not None for u in usage)
    completion = sum(u.completion_tokens for u in usage if u)
    prompt = sum(u.prompt_tokens for u in usage if u)
    assert value(samples, "vllm:generation_tokens_total") == completion
    assert value(samples, "vllm:prompt_tokens_total") == prompt
    assert value(samples, "vllm:request_success_total", finished_reason="stop") == 3
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 3
    assert value(samples, "vllm:e2e_request_latency_seconds_count") == 3
    assert value(samples, "vllm:inter_token_latency_seconds_count") == completion - 3
    assert value(samples, "vllm:kv_cache_usage_perc") == 0


def test_client_disconnect_aborts_the_request(sim_factory: SimFactory) -> None:
    sim = sim_factory(itl_ms=20.0)
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(
            {"messages": MESSAGES, "stream": True, "max_tokens": 2000, "ignore_eos": True}
        ),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: {")  # generating
    conn.close()
    while value(metrics(sim.url), "vllm:request_success_total", finished_reason="abort") < 1:
        pass
    samples = metrics(sim.url)
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:kv_cache_usage_perc") == 0


def test_keep_alive_serves_many_requests_on_one_connection(sim_factory: SimFactory) -> None:
    sim = sim_factory()
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=30)
    for _ in range(3):
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["object"] == "list"
        conn.request(
            "POST",
            "/v1/completions",
            body=json.dumps({"prompt": "a", "stream": True, "max_tokens": 3}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.read().endswith(b"data: [DONE]\n\n")
    conn.close()
