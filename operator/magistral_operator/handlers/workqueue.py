"""A coalescing work queue of endpoint passes (controller-runtime's workqueue, in threads).

Child events come in bursts (a rollout changes a Deployment, its ReplicaSets and every pod
several times within a second). Each event only *adds* its endpoint's key here, due after a
short delay; a key already waiting keeps its earlier due time, so the burst becomes one pass.
A key is never run by two workers at once: added while its pass runs, it runs once more after
that pass (so a change seen mid-pass is never missed), however many times it was added.

A key added as `background` (the periodic resync's) runs only when no other key is due: the
resync is a safety net, and its 500 keys, due at once, queued ahead of a child's event, held
that endpoint's pass behind them (bench/scale.py, docs/scale.md). A background key added
again by an event is promoted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class PassQueue:
    """Keys due at a time; `workers` threads run `run(key)` when due, never twice at once."""

    def __init__(
        self,
        run: Callable[[Hashable], None],
        *,
        workers: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._workers = workers
        self._clock = clock
        self._due: dict[Hashable, float] = {}
        self._running: set[Hashable] = set()
        self._again: dict[Hashable, float] = {}
        # Keys of _due / _again whose every add was a background one.
        self._background: set[Hashable] = set()
        self._again_background: set[Hashable] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self.runs = 0
        self.adds = 0

    def add(self, key: Hashable, *, delay: float = 0.0, background: bool = False) -> None:
        """Run `key`'s pass `delay` seconds from now, or sooner if it is already due sooner;
        a `background` key only when no other key is due."""
        due = self._clock() + delay
        with self._cond:
            self.adds += 1
            if key in self._running:
                waiting, low = self._again, self._again_background
            else:
                waiting, low = self._due, self._background
            if background and key not in waiting:
                low.add(key)
            elif not background:
                low.discard(key)
            waiting[key] = min(due, waiting.get(key, due))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._due) + len(self._again)

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._work, name=f"passes-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for thread in threads:
            thread.start()
        return threads

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def take(self, *, block: bool = True) -> Hashable | None:
        """The next due key, marked running (None when stopped, or nothing due and not `block`)."""
        with self._cond:
            while not self._stopped:
                now = self._clock()
                ready = [(k in self._background, due, k) for k, due in self._due.items()]
                ready = [entry for entry in ready if entry[1] <= now]
                if ready:
                    _, _, key = min(ready, key=lambda entry: entry[:2])
                    del self._due[key]
                    self._background.discard(key)
                    self._running.add(key)
                    return key
                if not block:
                    return None
                wait = min(self._due.values(), default=now + 1.0) - now
                self._cond.wait(timeout=max(0.01, min(wait, 1.0)))
            return None

    def done(self, key: Hashable) -> None:
        """`key`'s pass ended: if it was added meanwhile, it is due again."""
        with self._cond:
            self._running.discard(key)
            again = self._again.pop(key, None)
            if again is not None:
                if key in self._again_background and key not in self._due:
                    self._background.add(key)
                self._again_background.discard(key)
                self._due[key] = min(again, self._due.get(key, again))
            self._cond.notify()

    def _work(self) -> None:
        while True:
            key = self.take()
            if key is None:
                return
            try:
                self.runs += 1
                self._run(key)
            except Exception:
                log.exception("pass of %s failed", key)
            finally:
                self.done(key)
