"""What earlier assistant turns keep of their reasoning before the prompt is built (pure).

The model card allows both: keep the reasoning traces of earlier turns, or only their final
answers. `strip` drops the `<think>…</think>` part of earlier assistant messages and any
`reasoning` / `reasoning_content` field. `keep` leaves messages as they are; a client that
sends back our own responses (clean `content` plus a `reasoning` field) gets the reasoning
put back in front of the answer in the model's format, for think-text models (2506), since
the model only sees `content`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .reasoning import THINK_OPEN, join_reasoning, split_reasoning

REASONING_FIELDS = ("reasoning", "reasoning_content")


def _strip_text(content: Any) -> Any:
    if isinstance(content, str):
        split = split_reasoning(content)
        return content if split.reasoning is None else split.content
    if isinstance(content, list):
        # Content parts: the reasoning can only open the first text part.
        parts = list(content)
        for i, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts[i] = {**part, "text": _strip_text(text)}
                break
        return parts
    return content


def _field_reasoning(message: dict[str, Any]) -> str | None:
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _keep(message: dict[str, Any], *, reasoning_format: str) -> dict[str, Any]:
    if not any(name in message for name in REASONING_FIELDS):
        return message
    reasoning = _field_reasoning(message)
    updated = {k: v for k, v in message.items() if k not in REASONING_FIELDS}
    content = message.get("content")
    if reasoning is None or reasoning_format != "think-text":
        return updated
    if content is None:
        content = ""
    if isinstance(content, str) and not content.lstrip().startswith(THINK_OPEN):
        updated["content"] = join_reasoning(reasoning=reasoning, content=content)
    return updated


def apply_history_policy(
    messages: Sequence[Any],
    *,
    policy: Literal["keep", "strip"],
    reasoning_format: Literal["think-text", "think-tokens"],
) -> list[Any]:
    """A copy of `messages` with earlier assistant turns' reasoning kept or stripped."""
    result: list[Any] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            result.append(message)
        elif policy == "keep":
            result.append(_keep(message, reasoning_format=reasoning_format))
        else:
            stripped = {k: v for k, v in message.items() if k not in REASONING_FIELDS}
            if "content" in stripped:
                stripped["content"] = _strip_text(stripped["content"])
            result.append(stripped)
    return result
