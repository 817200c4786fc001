"""Magistral-Small-2506's reasoning: plain text between `<think>` and `</think>` (pure).

The 2506 model opens its answer with `<think>`, writes its reasoning, closes it with
`</think>` and then writes the answer. vLLM's `mistral` reasoning parser only knows the
`[THINK]` special tokens of 2507/2509, so the split is done here, once for a whole message
(`split_reasoning`) and incrementally for streams (`ReasoningSplitter`). Both follow one
definition, which the property tests hold them to:

* the reasoning starts only if the text, after leading whitespace, starts with `<think>`;
  otherwise the text is content, unchanged;
* the reasoning ends at the first `</think>`, or at the end of the text when the tag is
  missing (a truncated answer: everything is reasoning);
* whitespace around the reasoning is dropped, and so is whitespace between `</think>` and
  the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

THINK_OPEN: Final = "<think>"
THINK_CLOSE: Final = "</think>"


@dataclass(frozen=True, slots=True)
class ReasoningSplit:
    """A message's content split into reasoning (None: there was no `<think>`) and answer."""

    reasoning: str | None
    content: str


def split_reasoning(text: str) -> ReasoningSplit:
    """Split a whole message."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN):
        return ReasoningSplit(reasoning=None, content=text)
    body = stripped[len(THINK_OPEN) :]
    end = body.find(THINK_CLOSE)
    if end < 0:
        return ReasoningSplit(reasoning=body.strip(), content="")
    return ReasoningSplit(
        reasoning=body[:end].strip(), content=body[end + len(THINK_CLOSE) :].lstrip()
    )


def join_reasoning(*, reasoning: str, content: str) -> str:
    """The message text the model wrote (the model card's format), for reasoning kept in history."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n{content}"


def _partial_close_len(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `</think>`.

    A prefix of the tag holds a single '<' (its first character), so the only candidate
    is the suffix starting at the last '<' among the last len(tag) - 1 characters.
    """
    start = text.rfind("<", max(0, len(text) - len(THINK_CLOSE) + 1))
    if start < 0:
        return 0
    tail = text[start:]
    return len(tail) if THINK_CLOSE.startswith(tail) else 0


_START: Final = 0  # deciding whether the text opens with <think>
_REASONING: Final = 1  # inside <think>…
_AFTER: Final = 2  # after </think>, dropping whitespace before the answer
_PASS: Final = 3  # content, passed through as is


class ReasoningSplitter:
    """Incremental `split_reasoning` for a stream of content deltas of one choice.

    `feed` returns the (reasoning, content) text that can be emitted now. Text is held back
    only while it may still be part of a tag (`<think>` at the start, `</think>` inside
    the reasoning) or whitespace that the one-shot split would drop; `flush` releases it at
    the end of the stream. Once `passthrough` is true every later delta is content as is.
    """

    __slots__ = ("_held", "_started", "_state")

    def __init__(self) -> None:
        self._state = _START
        self._held = ""
        self._started = False  # some reasoning text has been emitted

    @property
    def passthrough(self) -> bool:
        return self._state == _PASS

    def feed(self, text: str) -> tuple[str, str]:
        """Consume one delta; return (reasoning, content) to emit now."""
        state = self._state
        if state == _PASS:
            return "", text
        if state == _START:
            buffer = self._held + text
            rest = buffer.lstrip()
            if rest.startswith(THINK_OPEN):
                self._held = ""
                self._state = _REASONING
                return self._reasoning(rest[len(THINK_OPEN) :])
            if THINK_OPEN.startswith(rest):
                self._held = buffer
                return "", ""
            self._held = ""
            self._state = _PASS
            return "", buffer
        if state == _REASONING:
            buffer = self._held + text
            self._held = ""
            return self._reasoning(buffer)
        return "", self._after(text)

    def flush(self) -> tuple[str, str]:
        """End of stream: release what is held back."""
        held, self._held = self._held, ""
        state = self._state
        self._state = _PASS
        if state == _START:
            return "", held
        if state == _REASONING:
            reasoning = held.rstrip()
            return (reasoning if self._started else reasoning.lstrip()), ""
        return "", ""

    def _reasoning(self, buffer: str) -> tuple[str, str]:
        end = buffer.find(THINK_CLOSE)
        if end >= 0:
            reasoning = buffer[:end].rstrip()
            if not self._started:
                reasoning = reasoning.lstrip()
            self._started = True
            self._state = _AFTER
            return reasoning, self._after(buffer[end + len(THINK_CLOSE) :])
        keep = _partial_close_len(buffer)
        body = buffer[: len(buffer) - keep]
        emit = body.rstrip()
        # Trailing whitespace may be the end of the reasoning: hold it with the partial tag.
        self._held = buffer[len(emit) :]
        if not self._started:
            emit = emit.lstrip()
            if emit:
                self._started = True
        return emit, ""

    def _after(self, text: str) -> str:
        answer = text.lstrip()
        if answer:
            self._state = _PASS
        return answer
