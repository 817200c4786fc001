"""Leader election on a coordination.k8s.io Lease: the I/O around `leadership` (pure).

`LeaseElector.run()` reads the Lease every retry period and creates, takes or renews it as
`leadership.decide` says. `term()` answers the current leadership term, or None: it checks
the renew deadline against the clock on every call, so a leader whose renewals stall (a hung
API server, a partition) stops acting at the deadline even while its renewal thread is stuck.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..leadership import (
    Decision,
    LeaseRecord,
    LeaseTiming,
    Observation,
    decide,
    lease_spec,
    observe,
    release_spec,
    still_leading,
)
from .client import Kube, KubeError

log = logging.getLogger(__name__)


def lease_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{name}" if name else base


def rfc3339_micro(moment: datetime) -> str:
    """A Lease's MicroTime."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AlwaysLeader:
    """Leadership of a standalone operator (no election): always leader, in term 0."""

    def term(self) -> int | None:
        return 0

    def is_leader(self) -> bool:
        return True

    def stop(self) -> None:
        return None


class LeaseElector:
    """One candidate for the Lease `namespace/name` under `identity`."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.wall = wall
        self._lock = threading.Lock()
        self._observation: Observation | None = None
        self._renewed_at: float | None = None  # when the last successful write started
        self._term = 0
        self._leading = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the rest of the operator asks --------------------------------------------------

    def term(self) -> int | None:
        """The current term while leader (before the renew deadline), else None."""
        with self._lock:
            if self._leading and still_leading(self._renewed_at, self.clock(), self.timing):
                return self._term
            return None

    def is_leader(self) -> bool:
        return self.term() is not None

    # -- the loop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the election in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop acting at once, then give the Lease up so that a standby takes over quickly."""
        self._stop.set()
        with self._lock:
            was_leading = self._leading and self._renewed_at is not None
            self._leading = False
        if self._thread is not None:
            self._thread.join(timeout=self.timing.retry_period + 5)
        if release and was_leading:
            self.release()

    def run(self) -> None:
        while not self._stop.is_set():
            self.try_once()
            self._stop.wait(self.timing.retry_period)

    def try_once(self) -> Decision | None:
        """One read-decide-write step; the decision taken, or None when it failed."""
        started = self.clock()
        try:
            lease = self._get()
            record = LeaseRecord.from_lease(lease) if lease is not None else None
            with self._lock:
                self._observation = observe(self._observation, record, started) if record else None
                observation = self._observation
            decision = decide(self.identity, observation, started, self.timing)
            if decision is Decision.WAIT:
                self._lost(f"the Lease is held by {record.holder if record else None}")
                return decision
            if self._stop.is_set():
                return None
            wall_now = rfc3339_micro(self.wall())
            spec = lease_spec(self.identity, decision, record, wall_now, self.timing)
            if decision is Decision.CREATE:
                self._create(spec)
            else:
                assert record is not None
                self._update(spec, record.resource_version)
        except (KubeError, OSError, ValueError) as exc:
            # Conflict (another candidate wrote first) or the API server is unreachable: the
            # term, if any, ends by itself at the renew deadline.
            log.info("leader election: %s", exc)
            return None
        except Exception:
            log.exception("leader election step failed")
            return None
        with self._lock:
            if self._stop.is_set():
                return None
            new_term = not (self._leading and still_leading(self._renewed_at, started, self.timing))
            if new_term:
                self._term += 1
                log.info("leader election: %s leads (term %d)", self.identity, self._term)
            self._leading = True
            self._renewed_at = started
        return decision

    def _lost(self, why: str) -> None:
        with self._lock:
            if self._leading:
                log.warning("leader election: %s stops leading: %s", self.identity, why)
            self._leading = False

    def release(self) -> None:
        """Empty the holder, so a standby acquires at its next try instead of after expiry."""
        try:
            lease = self._get()
            if lease is None:
                return
            record = LeaseRecord.from_lease(lease)
            if record.holder != self.identity:
                return
            self._update(release_spec(record, rfc3339_micro(self.wall())), record.resource_version)
            log.info("leader election: %s released the Lease", self.identity)
        except Exception as exc:  # best effort: the Lease expires anyway
            log.warning("leader election: cannot release the Lease: %s", exc)

    # -- I/O -----------------------------------------------------------------------------------

    def _get(self) -> dict[str, Any] | None:
        try:
            return self.kube.request("GET", lease_path(self.namespace, self.name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, spec: dict[str, object]) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }
        self.kube.request("POST", lease_path(self.namespace), body=body)

    def _update(self, spec: dict[str, object], resource_version: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": resource_version,
            },
            "spec": spec,
        }
        self.kube.request("PUT", lease_path(self.namespace, self.name), body=body)
