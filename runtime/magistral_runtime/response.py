"""Chat responses with 2506's `<think>` reasoning moved out of `content` (pure).

The reasoning goes to `reasoning` (vLLM's current field) and `reasoning_content` (the older
name some clients still read). Non-streamed responses are rewritten whole; streamed ones
(server-sent events, one `data: {chunk}` per event) chunk by chunk with a
`ReasoningSplitter` per choice.

Overhead: a stream is parsed only while a choice may still be in or before its reasoning.
Once every choice's splitter is in pass-through (no `<think>` at the start, or the answer
after `</think>` has begun), the bytes are forwarded as they come, without decoding.
"""

from __future__ import annotations

import json
from typing import Any

from .asgi import dumps
from .reasoning import ReasoningSplitter, split_reasoning

REASONING_KEYS = ("reasoning", "reasoning_content")
_EVENT_END = b"\n\n"
_DATA = b"data: "
_DONE = b"data: [DONE]"


def split_message_reasoning(message: dict[str, Any]) -> bool:
    """Move a message's `<think>` part into the reasoning fields; True when it changed."""
    content = message.get("content")
    if not isinstance(content, str) or message.get("reasoning") is not None:
        return False
    split = split_reasoning(content)
    if split.reasoning is None:
        return False
    message["content"] = split.content
    for key in REASONING_KEYS:
        message[key] = split.reasoning
    return True


def rewrite_chat_completion(body: bytes) -> bytes:
    """A non-streamed chat completion response with reasoning split out (unchanged if none)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return body
    changed = False
    for choice in data["choices"]:
        if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
            changed |= split_message_reasoning(choice["message"])
    return dumps(data) if changed else body


class ChatStreamRewriter:
    """Rewrites the SSE body of a streamed chat completion, fed in arbitrary byte pieces."""

    __slots__ = ("_buffer", "_choices", "_raw", "_splitters", "_template")

    def __init__(self, *, choices: int) -> None:
        self._choices = choices
        self._splitters: dict[int, ReasoningSplitter] = {}
        self._buffer = b""
        self._template: dict[str, Any] = {}
        self._raw = False  # every choice passes through: forward bytes untouched

    @property
    def passthrough(self) -> bool:
        """True once the rest of the stream is forwarded without parsing."""
        return self._raw

    def feed(self, data: bytes) -> bytes:
        """Consume a piece of the body; return the bytes to send now."""
        if self._raw:
            return data
        buffer = self._buffer + data
        end = buffer.rfind(_EVENT_END)
        if end < 0:
            self._buffer = buffer
            return b""
        complete, self._buffer = buffer[: end + 2], buffer[end + 2 :]
        out: list[bytes] = []
        for event in complete.split(_EVENT_END)[:-1]:
            if self._raw:
                out.append(event + _EVENT_END)
            else:
                out.append(self._event(event))
        if self._raw and self._buffer:
            out.append(self._buffer)
            self._buffer = b""
        return b"".join(out)

    def close(self) -> bytes:
        """End of body: whatever is still held, as a last event, and any partial event."""
        tail, self._buffer = self._buffer, b""
        return self._flush_all() + tail

    def _event(self, event: bytes) -> bytes:
        if event.startswith(_DONE):
            return self._flush_all() + event + _EVENT_END
        if not event.startswith(_DATA) or b"\n" in event:
            return event + _EVENT_END  # comments, keep-alives, multi-line events: untouched
        try:
            chunk = json.loads(event[len(_DATA) :])
        except ValueError:
            return event + _EVENT_END
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return event + _EVENT_END
        changed = False
        for choice in chunk["choices"]:
            if isinstance(choice, dict):
                changed |= self._choice(choice)
        self._template = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        self._update_raw()
        return _DATA + dumps(chunk) + _EVENT_END if changed else event + _EVENT_END

    def _choice(self, choice: dict[str, Any]) -> bool:
        index = choice.get("index", 0)
        splitter = self._splitters.get(index)
        if splitter is None:
            splitter = self._splitters[index] = ReasoningSplitter()
        delta = choice.get("delta")
        finished = choice.get("finish_reason") is not None
        if splitter.passthrough or not isinstance(delta, dict):
            return False
        content = delta.get("content")
        if not isinstance(content, str):
            content = ""
        if not content and not finished:
            return False
        reasoning, answer = splitter.feed(content)
        if finished:
            more_reasoning, more_answer = splitter.flush()
            reasoning += more_reasoning
            answer += more_answer
        if answer == content and not reasoning:
            return False
        _set_delta(delta, reasoning=reasoning, content=answer, had_content="content" in delta)
        return True

    def _update_raw(self) -> None:
        splitters = self._splitters
        self._raw = len(splitters) >= self._choices and all(
            s.passthrough for s in splitters.values()
        )

    def _flush_all(self) -> bytes:
        """Release held text of choices that never finished, as one extra chunk."""
        choices = []
        for index, splitter in sorted(self._splitters.items()):
            reasoning, answer = splitter.flush()
            if reasoning or answer:
                delta: dict[str, Any] = {}
                _set_delta(delta, reasoning=reasoning, content=answer, had_content=False)
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        self._update_raw()
        if not choices:
            return b""
        return _DATA + dumps({**self._template, "choices": choices}) + _EVENT_END


def _set_delta(delta: dict[str, Any], *, reasoning: str, content: str, had_content: bool) -> None:
    if content or (had_content and not reasoning):
        delta["content"] = content
    else:
        delta.pop("content", None)
    if reasoning:
        for key in REASONING_KEYS:
            delta[key] = reasoning
