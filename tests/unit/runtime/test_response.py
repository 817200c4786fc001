"""Chat responses: reasoning moved out of content, non-streamed and streamed (SSE)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from magistral_runtime.reasoning import split_reasoning
from magistral_runtime.response import ChatStreamRewriter, rewrite_chat_completion


def completion(content: str | None, **message: Any) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
    }
    return json.dumps(body).encode()


def message_of(body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(body)["choices"][0]["message"]
    return result


def test_non_streamed_reasoning_is_moved() -> None:
    out = message_of(rewrite_chat_completion(completion("<think>\nhmm\n</think>\n4")))
    assert out["content"] == "4"
    assert out["reasoning"] == out["reasoning_content"] == "hmm"


def test_non_streamed_without_reasoning_is_byte_identical() -> None:
    for body in (completion("4"), completion(None, tool_calls=[{"id": "c"}]), b"not json"):
        assert rewrite_chat_completion(body) is body


def test_existing_reasoning_from_vllms_parser_is_left_alone() -> None:
    body = completion("<think>x</think>y", reasoning="from vllm")
    assert rewrite_chat_completion(body) is body


def chunk(
    content: str | None = None,
    *,
    finish: str | None = None,
    index: int = 0,
    role: str | None = None,
) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def events(body: bytes) -> list[dict[str, Any]]:
    out = []
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {") and event != b"data: {bad json":
            out.append(json.loads(event[6:]))
    return out


def collect(body: bytes) -> dict[int, tuple[str, str, str]]:
    """Per choice: (reasoning, reasoning_content, content) concatenated over the stream."""
    acc: dict[int, list[str]] = {}
    for event in events(body):
        for choice in event["choices"]:
            parts = acc.setdefault(choice["index"], ["", "", ""])
            delta = choice["delta"]
            parts[0] += delta.get("reasoning") or ""
            parts[1] += delta.get("reasoning_content") or ""
            parts[2] += delta.get("content") or ""
    return {i: (p[0], p[1], p[2]) for i, p in acc.items()}


def rewrite(pieces: list[bytes], *, choices: int = 1) -> bytes:
    rewriter = ChatStreamRewriter(choices=choices)
    return b"".join(rewriter.feed(p) for p in pieces) + rewriter.close()


def test_streamed_reasoning_is_moved() -> None:
    stream = [
        chunk("", role="assistant"),
        chunk("<think>"),
        chunk("\nfirst"),
        chunk(" second\n"),
        chunk("</think>"),
        chunk("\n\nAnswer"),
        chunk(" done", finish="stop"),
        DONE,
    ]
    out = rewrite(stream)
    assert collect(out) == {0: ("first second", "first second", "Answer done")}
    assert out.endswith(DONE)


def test_streams_without_reasoning_pass_through_untouched() -> None:
    stream = [chunk("", role="assistant"), chunk("Hello"), chunk(" world", finish="stop"), DONE]
    rewriter = ChatStreamRewriter(choices=1)
    outs = [rewriter.feed(p) for p in stream]
    assert outs == stream  # byte for byte, chunk for chunk
    assert rewriter.passthrough


def test_chunks_after_the_answer_starts_are_not_re_encoded() -> None:
    rewriter = ChatStreamRewriter(choices=1)
    rewriter.feed(chunk("<think>x</think>A"))
    assert rewriter.passthrough
    later = chunk("B")
    assert rewriter.feed(later) is later


def test_truncated_reasoning_without_a_finish_chunk_is_flushed_before_done() -> None:
    out = rewrite([chunk("<think>still thinking</thi"), DONE])
    assert collect(out) == {0: ("still thinking</thi", "still thinking</thi", "")}
    assert out.endswith(DONE)


def test_several_choices_are_split_independently() -> None:
    stream = [
        chunk("<think>a</think>A", index=0),
        chunk("B plain", index=1),
        chunk("", index=0, finish="stop"),
        chunk("", index=1, finish="stop"),
        DONE,
    ]
    assert collect(rewrite(stream, choices=2)) == {0: ("a", "a", "A"), 1: ("", "", "B plain")}


def test_comments_usage_and_garbage_pass_through() -> None:
    usage = b'data: {"id":"c1","choices":[],"usage":{"total_tokens":3}}\n\n'
    stream = [
        b": keep-alive\n\n",
        chunk("<think>r"),
        usage,
        b"data: {bad json\n\n",
        chunk("</think>ok", finish="stop"),
        DONE,
    ]
    out = rewrite(stream)
    assert b": keep-alive\n\n" in out
    assert usage in out
    assert b"data: {bad json\n\n" in out
    assert collect(out) == {0: ("r", "r", "ok")}


CONTENTS = st.lists(
    st.sampled_from(["<think>", "</think>", "<", "</th", "ink>", " ", "\n", "a", "é", "b c"]),
    max_size=10,
)


@given(
    deltas=CONTENTS,
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6),
)
def test_any_byte_split_of_the_stream_gives_the_one_shot_split(
    deltas: list[str], cuts: list[int]
) -> None:
    body = b"".join(
        [chunk("", role="assistant"), *(chunk(d) for d in deltas), chunk("", finish="stop"), DONE]
    )
    bounds = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *bounds], [*bounds, len(body)], strict=True)]
    got = collect(rewrite(pieces)).get(0, ("", "", ""))
    one_shot = split_reasoning("".join(deltas))
    assert got == (one_shot.reasoning or "", one_shot.reasoning or "", one_shot.content)
