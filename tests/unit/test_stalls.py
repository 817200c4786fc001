"""e2e.stalls: the gaps a heartbeat records and the stall that overlaps a timed span."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from e2e.stalls import Heartbeat, Waited, overlap, poll, run_delay, run_delay_meter


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


class Clock:
    """A clock that moves by each sleep, and by a stall planted before a given check: one the
    heartbeat records (`stall_before_check`), or a delay it does not (`late_before_check`: a
    stall under its threshold, or one of another process)."""

    def __init__(
        self,
        stall_before_check: dict[int, float] | None = None,
        late_before_check: dict[int, float] | None = None,
    ) -> None:
        self.now = 0.0
        self.checks = 0
        self.gaps: list[tuple[float, float]] = []
        self._stalls = stall_before_check or {}
        self._late = late_before_check or {}

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self._late.get(self.checks + 1, 0.0)
        stall = self._stalls.get(self.checks + 1, 0.0)
        if stall:
            self.gaps.append((self.now, self.now + stall))
            self.now += stall

    def stalled(self, since: float, until: float) -> float:
        return overlap(self.gaps, since, until)


def polled(clock: Clock, met_at: float | None, timeout: float = 10.0) -> Waited:
    def check() -> str | None:
        clock.checks += 1
        return "met" if met_at is not None and clock.now >= met_at else None

    return poll(
        check,
        timeout=timeout,
        interval=1.0,
        stalls=clock.stalled,
        clock=lambda: clock.now,
        sleep=clock.sleep,
    )


def test_poll_returns_the_check_once_met() -> None:
    clock = Clock()
    waited = polled(clock, met_at=3.0)
    assert waited == Waited("met", 3.0, 0.0)
    assert clock.checks == 4


def test_poll_gives_up_after_the_timeout_when_nothing_stalls() -> None:
    clock = Clock()
    waited = polled(clock, met_at=None)
    assert waited == Waited(None, 10.0, 0.0)
    assert clock.checks == 11


def test_a_stall_does_not_use_up_the_timeout() -> None:
    # 20 s stalled before the 3rd check: 10 s of waiting are still left after it.
    clock = Clock({3: 20.0})
    waited = polled(clock, met_at=28.0)
    assert waited.value == "met"
    assert waited.stalled == 20.0
    assert waited.seconds == 28.0
    clock = Clock({3: 20.0})
    assert polled(clock, met_at=None) == Waited(None, 30.0, 20.0)


def test_the_check_runs_once_more_after_the_last_sleep() -> None:
    # The last sleep ran 5 s late (not counted as a stall) past the deadline, and the condition
    # came true meanwhile: the check after that sleep sees it.
    clock = Clock(late_before_check={10: 5.0})
    waited = polled(clock, met_at=12.0, timeout=8.5)
    assert waited == Waited("met", 14.0, 0.0)
    assert clock.checks == 10


def schedstat(proc: Path, pid: int, tid: int, text: str) -> None:
    path = proc / str(pid) / "task" / str(tid) / "schedstat"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_run_delay_reads_the_second_schedstat_field_in_seconds(tmp_path: Path) -> None:
    # on-CPU ns, run-queue wait ns, time slices: the wait is the second field.
    schedstat(tmp_path, 40, 40, "9000000000 2500000000 17\n")
    schedstat(tmp_path, 40, 41, "1 750000000 3\n")
    assert run_delay(40, proc=tmp_path) == pytest.approx(2.5)
    assert run_delay(40, 41, proc=tmp_path) == pytest.approx(0.75)


@pytest.mark.parametrize("text", ["", "123", "123 abc 4"])
def test_run_delay_is_none_for_a_counter_it_cannot_read(tmp_path: Path, text: str) -> None:
    schedstat(tmp_path, 40, 40, text)
    assert run_delay(40, proc=tmp_path) is None
    assert run_delay(41, proc=tmp_path) is None  # no such process


def test_run_delay_of_this_process_is_readable_and_never_goes_back() -> None:
    """This machine's kernel keeps the counter: it is readable and never goes back."""
    first = run_delay(os.getpid())
    assert first is not None
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        pass
    second = run_delay(os.getpid())
    assert second is not None
    assert second >= first


def test_run_delay_meter_gives_the_growth_since_it_started(tmp_path: Path) -> None:
    schedstat(tmp_path, 40, 40, "1 2500000000 1\n")
    waited = run_delay_meter(40, proc=tmp_path)
    schedstat(tmp_path, 40, 40, "1 3750000000 2\n")
    assert waited() == pytest.approx(1.25)
    (tmp_path / "40" / "task" / "40" / "schedstat").unlink()  # the process has exited
    assert waited() == 0.0
