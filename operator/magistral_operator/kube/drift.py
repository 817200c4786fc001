"""Drift detection (pure): does a live object still hold every field the operator applies?

The API server adds defaults and other managers' fields, so the test is "desired is contained
in live", not equality: a dict must carry every desired key with a contained value, a list must
have the same length with contained items, and scalars must be equal.
"""

from __future__ import annotations

from typing import Any


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is present and equal in `live`."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def drifted(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether someone changed a field the operator owns (labels, annotations, spec, data)."""
    wanted = {k: v for k, v in desired.items() if k not in {"apiVersion", "kind"}}
    meta = wanted.get("metadata", {})
    wanted["metadata"] = {
        k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta
    }
    return not contains(live, wanted)
