"""Retries of unservable specs back off, bounded: never a hot loop, never forever silent."""

from __future__ import annotations

import itertools

from magistral_operator.handlers.operator import MAX_BACKOFF_SECONDS, backoff_seconds


def test_backoff_grows_and_is_bounded() -> None:
    delays = [backoff_seconds(retry) for retry in range(20)]
    assert delays[0] == 10
    assert all(b >= a for a, b in itertools.pairwise(delays))
    assert max(delays) == MAX_BACKOFF_SECONDS
    assert min(delays) >= 10
