"""Splitting 2506's `<think>` reasoning from the answer: one-shot and streamed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from magistral_runtime.reasoning import (
    THINK_CLOSE,
    THINK_OPEN,
    ReasoningSplit,
    ReasoningSplitter,
    join_reasoning,
    split_reasoning,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nplan\n</think>\nAnswer.", ReasoningSplit("plan", "Answer.")),
        ("<think>a</think>b", ReasoningSplit("a", "b")),
        ("\n  <think>a</think>\n\nb c\n", ReasoningSplit("a", "b c\n")),
        ("<think>\nno end, truncated", ReasoningSplit("no end, truncated", "")),
        ("<think></think>", ReasoningSplit("", "")),
        ("Plain answer.", ReasoningSplit(None, "Plain answer.")),
        ("  Plain answer.", ReasoningSplit(None, "  Plain answer.")),
        ("", ReasoningSplit(None, "")),
        ("Answer <think>x</think> later", ReasoningSplit(None, "Answer <think>x</think> later")),
        ("<thinking>x</thinking>", ReasoningSplit(None, "<thinking>x</thinking>")),
        ("<think>a</think>b</think>c", ReasoningSplit("a", "b</think>c")),
        ("<think>1 < 2 </thin k></think>ok", ReasoningSplit("1 < 2 </thin k>", "ok")),
    ],
)
def test_split_reasoning(text: str, expected: ReasoningSplit) -> None:
    assert split_reasoning(text) == expected


def stream(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = ReasoningSplitter()
    outputs = [splitter.feed(piece) for piece in pieces]
    outputs.append(splitter.flush())
    return "".join(r for r, _ in outputs), "".join(c for _, c in outputs), outputs


@pytest.mark.parametrize(
    ("pieces", "reasoning", "content"),
    [
        (["<th", "ink>", "\nwhy", "\n</", "think", ">\n", "Yes."], "why", "Yes."),
        (["<think>a</thi"], "a</thi", ""),  # truncated inside the closing tag
        (["<", "t", "h", "i", "n", "k", ">", "x", "<", "/", "think", ">", "y"], "x", "y"),
        (["Hello", " world"], "", "Hello world"),
        (["<thi"], "", "<thi"),  # a tag prefix and then nothing: content, unchanged
        (["  ", "\n"], "", "  \n"),
    ],
)
def test_streamed_split(pieces: list[str], reasoning: str, content: str) -> None:
    got_reasoning, got_content, _ = stream(pieces)
    assert (got_reasoning, got_content) == (reasoning, content)


def test_no_reasoning_passes_through_without_lag() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<") == ("", "")  # could still be <think>
    assert splitter.feed("b>bold") == ("", "<b>bold")
    assert splitter.passthrough
    assert splitter.feed("more") == ("", "more")


def test_reasoning_is_emitted_as_it_comes() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\nStep one") == ("Step one", "")
    assert splitter.feed(". Step two\n") == (". Step two", "")  # trailing newline held
    assert splitter.feed("</think>") == ("", "")
    assert splitter.feed("\n\nAnswer") == ("", "Answer")
    assert splitter.passthrough


# Text made of pieces that stress the tags: fragments, whitespace, look-alikes.
FRAGMENTS = st.sampled_from(
    [
        THINK_OPEN,
        THINK_CLOSE,
        "<",
        "</",
        "<th",
        "<thi",
        "think>",
        ">",
        "/",
        " ",
        "\n",
        "\t",
        "a",
        "b c",
        "é",
        "<think",
        "</think",
        "x\n\ny",
    ]
)
TEXTS = st.lists(FRAGMENTS, max_size=12).map("".join) | st.text(max_size=40)


@given(text=TEXTS, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_any_chunking_gives_the_one_shot_split(text: str, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    reasoning, content, _ = stream(pieces)
    one_shot = split_reasoning(text)
    assert reasoning == (one_shot.reasoning or "")
    assert content == one_shot.content


@given(text=TEXTS, cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_content_without_reasoning_lags_at_most_a_tag_prefix(text: str, cuts: list[int]) -> None:
    if split_reasoning(text).reasoning is not None:
        return
    bounds = sorted({min(c, len(text)) for c in cuts})
    splitter = ReasoningSplitter()
    consumed, emitted = 0, ""
    for end in [*bounds, len(text)]:
        emitted += splitter.feed(text[consumed:end])[1]
        consumed = end
        assert text[:consumed].startswith(emitted)
        pending = text[len(emitted) : consumed]
        # What is not out yet can only be the start of a possible `<think>`.
        assert pending == "" or (emitted == "" and THINK_OPEN.startswith(pending.lstrip()))


@given(reasoning=st.text(min_size=1).map(str.strip).filter(bool), content=st.text())
def test_join_then_split_round_trips(reasoning: str, content: str) -> None:
    if THINK_CLOSE in reasoning:
        return
    split = split_reasoning(join_reasoning(reasoning=reasoning, content=content))
    assert split == ReasoningSplit(reasoning, content.lstrip())
