"""e2e.stalls: the gaps a heartbeat records and the stall that overlaps a timed span."""

from __future__ import annotations

import threading

import pytest

from e2e.stalls import Heartbeat, overlap


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (0.0, 100.0, 3.0 + 10.0),  # both gaps inside
        (11.0, 12.0, 1.0),  # inside the first gap
        (9.0, 11.0, 1.0),  # the first gap's start
        (12.5, 20.0, 0.5),  # the first gap's end
        (13.0, 50.0, 0.0),  # between the gaps
        (55.0, 70.0, 5.0),  # the second gap's end
        (61.0, 62.0, 0.0),  # after both
    ],
)
def test_overlap_counts_the_gaps_inside_the_span(
    since: float, until: float, expected: float
) -> None:
    assert overlap([(10.0, 13.0), (50.0, 60.0)], since, until) == pytest.approx(expected)


class FakeTime:
    """A clock that moves only when the heartbeat sleeps: by the step, or by more when a
    stall is planted at that sleep."""

    def __init__(self, stalls: dict[int, float], stop_after: int) -> None:
        self.now = 100.0
        self.sleeps = 0
        self._stalls = stalls
        self._stop_after = stop_after
        self.done = threading.Event()
        self.release = threading.Event()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds + self._stalls.get(self.sleeps, 0.0)
        if self.sleeps >= self._stop_after:
            self.done.set()
            self.release.wait(10)  # park until the test has looked


def test_a_late_wake_up_is_recorded_as_a_gap_and_a_punctual_one_is_not() -> None:
    fake = FakeTime({3: 2.0, 5: 0.1, 8: 0.3}, stop_after=10)
    beat = Heartbeat(clock=fake.clock, sleep=fake.sleep, step=0.05, late=0.25).start()
    assert fake.done.wait(5)
    gaps = beat.gaps
    # Sleep 3 woke 2 s late, sleep 8 0.3 s late: recorded whole. Sleep 5's 0.1 s is noise.
    assert [(round(a - 100, 2), round(b - 100, 2)) for a, b in gaps] == [
        (0.1, 2.15),
        (2.45, 2.8),
    ]
    assert beat.stalled(100.0, 103.0) == pytest.approx(2.05 + 0.35)
    assert beat.stalled(102.1, 102.5) == pytest.approx(0.05 + 0.05)
    fake.release.set()
    beat.stop()
