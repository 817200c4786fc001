"""Arrival rates from the routers' request counters (pure): level and trend.

Each router pod's front counts the requests it received since it started (`arrivalsTotal`,
with its `startTime`). The operator reads every router pod each pass and records the increase
since its previous reading here; a restarted front (a new start time, or a smaller count) counts
from zero. Rates are increases over a window divided by the window (or by the time recorded
so far when that is shorter, but never less than `MIN_SPAN_SECONDS`).

- `rate()`: requests per second over the last `rate_window` seconds (60 s): the level the
  fleet is sized for.
- `trend()`: the rates over the two `trend_window` windows (300 s each) ending now, once the
  record covers both; None before that (after an operator restart): the policy then uses no
  trend rather than a made-up one.

The record lives in the operator's memory (one per endpoint); it is not persisted: after a
restart the level is rebuilt within a minute and the trend within ten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .demand import ArrivalTrend

MIN_SPAN_SECONDS = 5.0


@dataclass(frozen=True)
class CounterReading:
    """One router pod's request counter: the count since it started, and when it started."""

    start_time: float
    total: int


@dataclass
class ArrivalRecord:
    """Per-endpoint record of router counter increases (see the module docstring)."""

    rate_window: float = 60.0
    trend_window: float = 300.0
    began: float | None = None
    last: dict[str, CounterReading] = field(default_factory=dict)
    increases: deque[tuple[float, int]] = field(default_factory=deque)

    def observe(self, now: float, readings: Mapping[str, CounterReading]) -> None:
        """Record the routers' counters read at `now` (keys: router pod uids)."""
        if self.began is None:
            self.began = now
        added = 0
        for key, reading in readings.items():
            before = self.last.get(key)
            if before is None:
                # First sight: its past count arrived before the record (unless the record
                # began with this pod: then nothing is known of when it arrived either).
                continue
            restarted = reading.start_time != before.start_time or reading.total < before.total
            added += reading.total if restarted else reading.total - before.total
        self.last = dict(readings)
        if added:
            self.increases.append((now, added))
        horizon = now - 2 * max(self.trend_window, self.rate_window)
        while self.increases and self.increases[0][0] < horizon:
            self.increases.popleft()

    def _sum(self, start: float, end: float) -> int:
        return sum(n for t, n in self.increases if start < t <= end)

    def span(self, now: float) -> float:
        """Seconds the record covers."""
        return 0.0 if self.began is None else now - self.began

    def rate(self, now: float) -> float:
        """Requests per second over the last rate window (0 until MIN_SPAN_SECONDS recorded)."""
        span = min(self.rate_window, self.span(now))
        if span < MIN_SPAN_SECONDS:
            return 0.0
        return self._sum(now - span, now) / span

    def trend(self, now: float) -> ArrivalTrend | None:
        """Rates over the two trend windows ending now; None until the record covers both."""
        w = self.trend_window
        if self.span(now) < 2 * w:
            return None
        return ArrivalTrend(
            earlier_rate=self._sum(now - 2 * w, now - w) / w,
            recent_rate=self._sum(now - w, now) / w,
            window_seconds=w,
        )
