"""What earlier assistant turns keep of their reasoning before the prompt is built (pure).

The model card allows both: keep the reasoning traces of earlier turns, or only their final
answers. An assistant turn carries reasoning in three places: `<think>…</think>` at the
start of its text (of `content`, a string, or of its first text part), a `reasoning` /
`reasoning_content` field (how we and vLLM return it; vLLM reads `reasoning`), and
`{"type": "thinking"}` content parts.

* `strip` removes all three, whatever the content's form; only the answer is left.
* `keep`, for think-text models (2506), which only see the text: the reasoning of the
  fields and thinking parts is put back in front of the answer in the model's format
  (`<think>\\n…\\n</think>\\n`), in the string or in the first text part (a new one when
  the content starts with something else); text that already opens with `<think>` is
  left as it is. The fields are removed.
* `keep`, for think-token models (2507, 2509): the reasoning stays in the `reasoning` field,
  which vLLM hands to mistral-common as a `[THINK]` chunk; a `reasoning_content`-only
  message gets it moved to `reasoning`, since vLLM drops `reasoning_content`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .reasoning import THINK_OPEN, join_reasoning, split_reasoning

REASONING_FIELDS = ("reasoning", "reasoning_content")
THINKING_PART = "thinking"


def _is_part(part: Any, kind: str) -> bool:
    return isinstance(part, dict) and part.get("type") == kind


def _first_text(parts: list[Any]) -> int | None:
    """Index of the first text part whose text is a string."""
    for i, part in enumerate(parts):
        if _is_part(part, "text") and isinstance(part.get("text"), str):
            return i
    return None


def _strip_content(content: Any) -> Any:
    if isinstance(content, str):
        split = split_reasoning(content)
        return content if split.reasoning is None else split.content
    if not isinstance(content, list):
        return content
    parts = [p for p in content if not _is_part(p, THINKING_PART)]
    i = _first_text(parts)
    if i is not None:  # the reasoning can only open the first text part
        parts[i] = {**parts[i], "text": _strip_content(parts[i]["text"])}
    return parts


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """The reasoning of the fields and thinking parts, stripped (None: none)."""
    pieces: list[str] = []
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            pieces.append(value.strip())
            break  # both fields carry the same reasoning
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            text = part.get(THINKING_PART) if _is_part(part, THINKING_PART) else None
            if isinstance(text, str) and text.strip():
                pieces.append(text.strip())
    return "\n\n".join(pieces) if pieces else None


def _opens_with_think(text: str) -> bool:
    return text.lstrip().startswith(THINK_OPEN)


def _inline(content: Any, reasoning: str) -> Any:
    """`content` with `reasoning` in front of its text, in the model's format."""
    if content is None:
        content = ""
    if isinstance(content, str):
        if _opens_with_think(content):
            return content
        return join_reasoning(reasoning=reasoning, content=content)
    if not isinstance(content, list):
        return content  # not a valid content: vLLM refuses it
    parts = [p for p in content if not _is_part(p, THINKING_PART)]
    if parts and _is_part(parts[0], "text") and isinstance(parts[0].get("text"), str):
        text = parts[0]["text"]
        if not _opens_with_think(text):
            parts[0] = {**parts[0], "text": join_reasoning(reasoning=reasoning, content=text)}
        return parts
    return [{"type": "text", "text": join_reasoning(reasoning=reasoning, content="")}, *parts]


def _without_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k not in REASONING_FIELDS}


def _keep_text(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = _reasoning_of(message)
    has_thinking = isinstance(message.get("content"), list) and any(
        _is_part(p, THINKING_PART) for p in message["content"]
    )
    if not has_thinking and not any(name in message for name in REASONING_FIELDS):
        return message
    kept = _without_fields(message)
    if reasoning is not None:
        kept["content"] = _inline(message.get("content"), reasoning)
    elif has_thinking:
        kept["content"] = [p for p in message["content"] if not _is_part(p, THINKING_PART)]
    return kept


def _keep_tokens(message: dict[str, Any]) -> dict[str, Any]:
    if "reasoning_content" not in message:
        return message
    kept = _without_fields(message)
    reasoning = message.get("reasoning")
    if reasoning is None:
        reasoning = message["reasoning_content"]
    if reasoning is not None:
        kept["reasoning"] = reasoning
    return kept


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
        elif policy == "strip":
            stripped = _without_fields(message)
            if "content" in stripped:
                stripped["content"] = _strip_content(stripped["content"])
            result.append(stripped)
        elif reasoning_format == "think-text":
            result.append(_keep_text(message))
        else:
            result.append(_keep_tokens(message))
    return result
