"""Children the API server refused, held back with bounded exponential back-off.

A refused child (an invalid object the spec produced) is not sent again on every pass: the
same content is retried after 10 s, 20 s, ... 300 s; a change of its content (the user fixed
the spec) is tried at once. The book lives in the operator's memory: a restart retries
everything once, which is what a restart should do.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..kube.children import ApplyReport, ChildRefused

MIN_BACKOFF_SECONDS = 10.0
MAX_BACKOFF_SECONDS = 300.0


def refusal_backoff(attempts: int) -> float:
    """Seconds before the `attempts`-th refusal of the same content is retried (1-based)."""
    return float(min(MAX_BACKOFF_SECONDS, MIN_BACKOFF_SECONDS * 2 ** max(0, min(attempts - 1, 10))))


@dataclass(frozen=True)
class _Held:
    refusal: ChildRefused
    attempts: int
    retry_at: float


class RefusalBook:
    """Per endpoint: which children are refused, how often, and when to try them again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], dict[str, _Held]] = {}

    def held(self, endpoint: tuple[str, str], *, now: float) -> dict[str, ChildRefused]:
        """Refusals of `endpoint` still in back-off at `now`, by child label."""
        with self._lock:
            book = self._held.get(endpoint, {})
            return {label: h.refusal for label, h in book.items() if h.retry_at > now}

    def record(
        self, endpoint: tuple[str, str], report: ApplyReport, *, now: float
    ) -> list[ChildRefused]:
        """Take a pass's outcome; return the refusals that are new (or new content)."""
        fresh: list[ChildRefused] = []
        with self._lock:
            book = self._held.setdefault(endpoint, {})
            for label in report.applied + report.unchanged:
                book.pop(label, None)
            for refused in report.refused:
                before = book.get(refused.label)
                if before is not None and before.retry_at > now:
                    continue  # held this pass, not retried
                same = before is not None and before.refusal.digest == refused.digest
                attempts = before.attempts + 1 if same and before is not None else 1
                if not same:
                    fresh.append(refused)
                book[refused.label] = _Held(
                    refusal=refused, attempts=attempts, retry_at=now + refusal_backoff(attempts)
                )
            if not book:
                self._held.pop(endpoint, None)
        return fresh

    def forget(self, endpoint: tuple[str, str]) -> None:
        """Drop an endpoint's refusals (it was deleted)."""
        with self._lock:
            self._held.pop(endpoint, None)
