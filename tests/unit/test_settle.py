"""tests/cluster/conftest.py `settle`: a snapshot counts as settled only once it has stayed the
same while the operator completed the asked-for passes; a change or a failed /metrics read
starts the count again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import settle


class FakeOperator:
    """Passes read from a script, one value per read (None: /metrics did not answer)."""

    metrics_port = 1

    def __init__(self, passes: list[float | None]) -> None:
        self._passes = iter(passes)
        self.reads = 0

    def passes(self, namespace: str, name: str) -> float | None:
        self.reads += 1
        return next(self._passes)


def script(values: list[Any]) -> Iterator[Any]:
    yield from values


def test_settled_after_the_passes_with_the_snapshot_unchanged() -> None:
    snapshots = script(["v1", "v2", "v2", "v2", "v2"])
    operator = FakeOperator([1, 2, 3, 4, 5])
    assert settle(operator, "n", "e", lambda: next(snapshots), passes=2, interval=0) == "v2"  # type: ignore[arg-type]
    # v1 at pass 1, v2 from pass 2: settled at pass 4.
    assert operator.reads == 4


def test_a_change_restarts_the_count() -> None:
    snapshots = script(["v1", "v1", "v2", "v2", "v2", "v2"])
    operator = FakeOperator([1, 2, 3, 4, 5, 6])
    assert settle(operator, "n", "e", lambda: next(snapshots), passes=2, interval=0) == "v2"  # type: ignore[arg-type]
    # v2 from pass 3: settled at pass 5. Without the restart, the count begun at pass 1 would
    # have ended at pass 3, as the snapshot changed.
    assert operator.reads == 5


def test_a_failed_metrics_read_is_no_pass() -> None:
    snapshots = script(["v1", "v1", "v1", "v1", "v1"])
    operator = FakeOperator([None, 1, None, 2])
    assert settle(operator, "n", "e", lambda: next(snapshots), passes=1, interval=0) == "v1"  # type: ignore[arg-type]
    # The count starts at pass 1 (the first read had none) and ends at pass 2.
    assert operator.reads == 4


def test_without_metrics_it_refuses_to_wait() -> None:
    operator = FakeOperator([])
    operator.metrics_port = 0
    with pytest.raises(AssertionError, match="no /metrics"):
        settle(operator, "n", "e", lambda: "v", interval=0)  # type: ignore[arg-type]
