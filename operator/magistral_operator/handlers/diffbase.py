"""kopf's "last handled configuration", kept as a digest instead of the whole object.

kopf stores the essence of the last handled object (its spec, labels and annotations) as JSON
in an annotation, so it can tell an update from a status change. With ASCII escapes, a spec
the CRD allows (a 32,768-character system prompt of emoji is 393 KB as escaped JSON) does not
fit in the 256 KiB the API server allows for all of an object's annotations: kopf's own patch
would be refused and the endpoint would never be handled. The operator never reads the diff
(every pass derives everything from the current object), so a digest is enough: when it
matches, kopf sees no change; when it does not, kopf sees a changed spec and runs the update
handler.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import kopf


def essence_digest(essence: Any) -> str:
    """A stable digest of an essence (canonical JSON, sorted keys)."""
    canonical = json.dumps(essence, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Stores `sha256:<hex>` of the essence; answers the current essence when it matches.

    `may_write` (leader election): a standby stores nothing, so kopf has nothing to patch and
    the standby never writes; the leader stores it when it handles the object.
    """

    def __init__(
        self, *, prefix: str, key: str, may_write: Callable[[], bool] = lambda: True
    ) -> None:
        super().__init__(prefix=prefix, key=key)
        self.may_write = may_write

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        for full_key in self.make_keys(self.key, body=body):
            stored = body.metadata.annotations.get(full_key)
            if stored is None:
                continue
            stored = stored.strip()
            current = self.build(body=body)
            if stored.startswith("sha256:"):
                return current if stored == essence_digest(current) else _CHANGED
            # An annotation written by an earlier version: the whole essence as JSON.
            try:
                decoded: kopf.BodyEssence = json.loads(stored)
            except ValueError:
                return _CHANGED
            return decoded
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if not self.may_write():
            return
        for full_key in self.make_keys(self.key, body=body):
            patch.metadata.annotations[full_key] = essence_digest(essence)
        self._store_marker(prefix=self.prefix, patch=patch, body=body)


class LeaderOnlyProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's handler progress in annotations, written only while `may_write()` (the leader)."""

    def __init__(self, *, prefix: str, may_write: Callable[[], bool]) -> None:
        super().__init__(prefix=prefix)
        self.may_write = may_write

    def store(self, *, key: Any, record: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        if self.may_write():
            super().store(key=key, record=record, body=body, patch=patch)

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        if self.may_write():
            super().purge(key=key, body=body, patch=patch)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        if self.may_write():
            super().touch(body=body, patch=patch, value=value)


# What a changed object looked like before, as far as kopf needs to know: no spec at all.
_CHANGED: kopf.BodyEssence = {}
