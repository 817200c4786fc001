"""The engine simulator (e2e/engine) calibrated against the real engine (vLLM 0.32.0, CPU).

Both run behind our middleware with the same `vllm serve` argv, runtime config and API key
(tests/vllm/simulator.py). Each test sends the same requests to both and compares what a
client or the operator can rely on: the `vllm:` metric families (names, types, label names),
the finish reasons, the error shapes (status, `type`, `param`) and the keys of the response
objects. Where the simulator differs on purpose, the difference is named here and in
docs/engine-simulator.md ("Calibrated against vLLM").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from e2e.real_engine.serve import SERVED_MODEL_NAME, RealEngine
from tests.vllm.client import Server, call, families, stream_events
from tests.vllm.conftest import Engines
from tests.vllm.simulator import SimulatorLike

HI = [{"role": "user", "content": "hi"}]

# Real families the simulator does not model (docs/engine-simulator.md): the per-reason
# queue, sleep mode, roofline estimates, external (KV-connector) and multimodal caches,
# cached-prompt accounting, admission control, tool-parser counters and a few histograms.
NOT_SIMULATED = frozenset(
    {
        "vllm:num_requests_waiting_by_reason",
        "vllm:engine_sleep_state",
        "vllm:estimated_flops_per_gpu",
        "vllm:estimated_read_bytes_per_gpu",
        "vllm:estimated_write_bytes_per_gpu",
        "vllm:external_prefix_cache_queries",
        "vllm:external_prefix_cache_hits",
        "vllm:mm_cache_queries",
        "vllm:mm_cache_hits",
        "vllm:prompt_tokens_by_source",
        "vllm:prompt_tokens_cached",
        "vllm:prompt_tokens_cached_by_source",
        "vllm:admission_rejections",
        "vllm:tool_call_parser_invocations",
        "vllm:request_max_num_generation_tokens",
        "vllm:request_params_n",
        "vllm:request_num_preemptions",
        "vllm:request_prefill_kv_computed_tokens",
    }
)
INFO_GAUGES = frozenset({"vllm:cache_config_info"})
"""Info gauges: the simulator sets a subset of the real labels (the ones it can know)."""


@pytest.fixture(scope="module")
def simulator(
    engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimulatorLike]:
    real = engines.get("default")
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    with SimulatorLike(real, log_path=log) as sim:
        yield sim


def vllm_families(server: Server) -> dict[str, tuple[str, frozenset[str]]]:
    """`vllm:` family name -> (type, label names), the `_created` series left out."""
    out = {}
    for name, family in families(server).items():
        if not name.startswith("vllm:") or name.endswith("_created"):
            continue
        labels = frozenset(k for s in family.samples for k in s.labels if k not in ("le",))
        out[name] = (family.type, labels)
    return out


def test_metric_names_types_and_labels(engine: RealEngine, simulator: SimulatorLike) -> None:
    # Some traffic first, so that every family has its samples.
    for server in (engine, simulator):
        assert call(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 4}).status == 200
    real = vllm_families(engine)
    sim = vllm_families(simulator)
    assert sorted(set(sim) - set(real)) == [], "simulated families vLLM does not have"
    assert sorted(set(real) - set(sim) - NOT_SIMULATED) == [], "real families not simulated"
    assert sorted(NOT_SIMULATED - set(real)) == [], "NOT_SIMULATED names vLLM does not have"
    for name, (kind, labels) in sim.items():
        real_kind, real_labels = real[name]
        assert kind == real_kind, name
        if name in INFO_GAUGES:
            assert labels <= real_labels, f"{name}: {sorted(labels - real_labels)}"
        else:
            assert labels == real_labels, name


def finish_reasons(server: Server) -> list[str]:
    family = families(server)["vllm:request_success"]
    return sorted(
        {s.labels["finished_reason"] for s in family.samples if s.name.endswith("_total")}
    )


def test_finish_reasons(engine: RealEngine, simulator: SimulatorLike) -> None:
    """The counter's label values, and what responses say for a natural end and a cut."""
    assert finish_reasons(simulator) == finish_reasons(engine)
    assert finish_reasons(engine) == ["abort", "error", "length", "repetition", "stop"]
    for server in (engine, simulator):
        cut = call(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 3}).json()
        assert cut["choices"][0]["finish_reason"] == "length"
        whole = call(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 2000}).json()
        assert whole["choices"][0]["finish_reason"] == "stop"


BAD_REQUESTS: list[tuple[str, str, Any]] = [
    # (id, path, body: a dict, or bytes sent as they are)
    ("unknown-model-chat", "/v1/chat/completions", {"model": "nope", "messages": HI}),
    ("unknown-model-completion", "/v1/completions", {"model": "nope", "prompt": "hi"}),
    ("negative-temperature", "/v1/completions", {"prompt": "hi", "temperature": -1}),
    ("top-p-above-1", "/v1/completions", {"prompt": "hi", "top_p": 1.5}),
    ("max-tokens-above-context", "/v1/completions", {"prompt": "hi", "max_tokens": 100000}),
    ("max-tokens-zero", "/v1/completions", {"prompt": "hi", "max_tokens": 0}),
    ("max-tokens-not-a-number", "/v1/completions", {"prompt": "hi", "max_tokens": "abc"}),
    ("no-prompt", "/v1/completions", {}),
    ("not-json", "/v1/completions", b"notjson"),
]


def error_shape(resp: Any) -> dict[str, Any]:
    body = resp.json()
    if isinstance(body.get("error"), dict):
        error = body["error"]
        return {
            "status": resp.status,
            "type": error.get("type"),
            "param": error.get("param"),
            "code": error.get("code"),
            "keys": sorted(error),
        }
    return {"status": resp.status, "body": body}


@pytest.mark.parametrize(
    ("path", "body"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_error_shapes(engine: RealEngine, simulator: SimulatorLike, path: str, body: Any) -> None:
    shapes = []
    for server in (engine, simulator):
        if isinstance(body, bytes):
            resp = call(server, path, raw=body)
        else:
            resp = call(server, path, {"model": SERVED_MODEL_NAME, **body})
        shapes.append(error_shape(resp))
    assert shapes[1] == shapes[0]


def test_plain_http_errors(engine: RealEngine, simulator: SimulatorLike) -> None:
    """401 without a key, 404 for an unknown path, 405 for a wrong method."""
    for check in (
        lambda s: call(s, "/v1/models", key=None),
        lambda s: call(s, "/v1/nothing"),
        lambda s: call(s, "/v1/completions", method="GET"),
    ):
        real, sim = check(engine), check(simulator)
        assert (sim.status, sim.json()) == (real.status, real.json())


def keys(obj: Any) -> list[str]:
    return sorted(obj) if isinstance(obj, dict) else []


def chat_shape(data: dict[str, Any]) -> dict[str, list[str]]:
    choice = data["choices"][0]
    return {
        "top": keys(data),
        "choice": keys(choice),
        "message": keys(choice["message"]),
        "usage": keys(data["usage"]),
    }


def completion_shape(data: dict[str, Any]) -> dict[str, list[str]]:
    return {"top": keys(data), "choice": keys(data["choices"][0]), "usage": keys(data["usage"])}


def stream_shape(events: list[Any]) -> dict[str, list[str]]:
    """Key unions over a stream's chunks: first, middle, finish and usage chunks apart."""
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    out: dict[str, set[str]] = {}

    def add(kind: str, obj: Any) -> None:
        out.setdefault(kind, set()).update(keys(obj))

    for i, chunk in enumerate(chunks):
        if not chunk["choices"]:
            add("usage-chunk", chunk)
            add("usage", chunk["usage"])
            continue
        choice = chunk["choices"][0]
        kind = "first" if i == 0 else "finish" if choice.get("finish_reason") else "middle"
        add(f"{kind}-chunk", chunk)
        add(f"{kind}-choice", choice)
        if "delta" in choice:
            add(f"{kind}-delta", choice["delta"])
    return {k: sorted(v) for k, v in out.items()}


def test_response_fields(engine: RealEngine, simulator: SimulatorLike) -> None:
    """Keys of chat and text completions, streamed and not, and of the model list."""
    chat = {"messages": HI, "max_tokens": 2000}
    text = {"prompt": "Hello there", "max_tokens": 8}
    usage = {"stream_options": {"include_usage": True}}
    shapes = []
    for server in (engine, simulator):
        shapes.append(
            {
                "chat": chat_shape(call(server, "/v1/chat/completions", chat).json()),
                "completion": completion_shape(call(server, "/v1/completions", text).json()),
                "chat-stream": stream_shape(
                    stream_events(server, "/v1/chat/completions", {**chat, **usage})
                ),
                "completion-stream": stream_shape(
                    stream_events(server, "/v1/completions", {**text, **usage})
                ),
                "models": {
                    "top": keys(models := call(server, "/v1/models").json()),
                    "model": keys(models["data"][0]),
                    "permission": keys(models["data"][0]["permission"][0]),
                },
            }
        )
    real, sim = shapes
    for name in real:
        assert sim[name] == real[name], name
