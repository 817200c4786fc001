"""Stable content hashes for revisions and applied-object fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(value: Any, *, length: int = 10) -> str:
    """Hex digest of the canonical JSON of `value`."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
