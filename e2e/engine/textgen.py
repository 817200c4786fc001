"""What the simulated model "writes", and how many tokens a prompt has (pure).

Magistral-Small-2506 writes its reasoning as plain text: ``<think>\\n…\\n</think>\\n`` and then
the answer. The tags are emitted split over several tokens, as a real tokenizer splits them, so
a streaming reasoning splitter sees partial tags. With a reasoning parser (2507/2509's
``[THINK]`` tokens, ``--reasoning-parser mistral``) the tags are special tokens: they count as
generated tokens but are not part of the text, and the reasoning goes to its own field.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

CHARS_PER_TOKEN = 4.0
"""Tekken averages about four characters of English per token."""
MESSAGE_OVERHEAD_TOKENS = 4
"""Control tokens per chat message ([INST], [/INST], [SYSTEM_PROMPT] …)."""

_WORD_TEXT = """
the model request token cache batch queue latency answer question value result first second
next step check so then we need to consider which because means that it is a an of in on for
with as by from this these those each every number total case other time rate count sum half
double small large simple clear likely reason approach compute verify assume given let note
since therefore thus hence also but not only more less most least same different order part
whole point line set list user asks about how why what when where system engine replica scale
load spare
"""
_WORDS = tuple(_WORD_TEXT.split())
OPEN_TAG = ("<", "think", ">", "\n")
CLOSE_TAG = ("\n", "</", "think", ">", "\n")


class Kind(Enum):
    TAG = "tag"
    REASONING = "reasoning"
    CONTENT = "content"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: str


def estimate_text_tokens(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [str(part.get("text", "")) for part in content if isinstance(part, dict)]
        return " ".join(parts)
    return ""


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request, as the chat template would render it."""
    total = 1  # <s>
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(
            _content_text(message.get("content"))
        )
    return total


def completion_prompt_tokens(prompt: str) -> int:
    return 1 + estimate_text_tokens(prompt)  # <s>


def _words(rng: random.Random, *, count: int, kind: Kind) -> Iterator[Token]:
    sentence = 0
    for i in range(count):
        word = rng.choice(_WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        end = sentence > 6 and (rng.random() < 0.15 or i == count - 1)
        text = (" " if i else "") + word + ("." if end else "")
        if end:
            sentence = 0
        yield Token(kind, text)


def magistral_tokens(
    *, length: int, rng: random.Random, reasoning_fraction: float
) -> Iterator[Token]:
    """``length`` tokens of ``<think>\\n reasoning \\n</think>\\n answer`` (cut at ``length``)."""
    tags = len(OPEN_TAG) + len(CLOSE_TAG)
    if length <= tags + 1 or reasoning_fraction <= 0:
        yield from _words(rng, count=length, kind=Kind.CONTENT)
        return
    reasoning = max(1, min(length - tags - 1, round((length - tags) * reasoning_fraction)))
    answer = length - tags - reasoning
    for text in OPEN_TAG:
        yield Token(Kind.TAG, text)
    yield from _words(rng, count=reasoning, kind=Kind.REASONING)
    for text in CLOSE_TAG:
        yield Token(Kind.TAG, text)
    yield from _words(rng, count=answer, kind=Kind.CONTENT)
