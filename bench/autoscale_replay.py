"""Replay a request trace through simulated replicas driven by the real autoscaling policy.

A discrete-event model in simulated time (no sleeping, no cluster): requests arrive as in the
trace, go to the ready replica with the fewest requests, pass the frontend (TTFT base), wait in
the replica's FIFO queue for one of `--max-num-seqs` slots, prefill and decode (figures from
docs/engine-simulator.md: TTFT 150 ms + 0.1 ms per prompt token, ITL 15 ms growing 1 % per
extra running sequence, fixed at admission). Every `--interval` seconds the operator's policy
(`magistral_operator.autoscale.policy.decide`) sees each ready replica's waiting/running
counts, exactly as it would scrape them; a new replica becomes ready after `--startup-seconds`,
a removed one stops taking requests and drains.

    .venv/bin/python bench/autoscale_replay.py ../shared/data/traces/azure-llm-2023-code.csv

Trace formats: the Azure CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`) or Mooncake JSONL
(`timestamp` in ms, `input_length`, `output_length`). `--speedup` compresses arrival times
(service times stay real) to load the replicas harder than the trace does.
Reported per targetQueueDepth: replica-minutes (starting and draining replicas included),
p50/p99 queue wait, and the scale events; a fixed maxReplicas fleet is the baseline.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from magistral_operator.api.spec import ScalingSpec
from magistral_operator.api.status import AutoscalerStatus
from magistral_operator.autoscale.policy import ReplicaSample, decide

FRONTEND_S = 0.150
PREFILL_S_PER_TOKEN = 0.0001
ITL_S = 0.015
ITL_BATCH_FACTOR = 0.01
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    arrival: float
    prompt: int
    output: int


def load_trace(path: Path) -> list[Request]:
    """Requests with arrivals in seconds from the first one."""
    rows: list[tuple[float, int, int]] = []
    if path.suffix in (".jsonl", ".json"):
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append(
                    (float(r["timestamp"]) / 1000, int(r["input_length"]), int(r["output_length"]))
                )
    else:
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                stamp = r["TIMESTAMP"].strip()
                head, _, frac = stamp.partition(".")
                when = datetime.strptime(head, "%Y-%m-%d %H:%M:%S")
                seconds = when.timestamp() + (float(f"0.{frac}") if frac else 0.0)
                rows.append((seconds, int(r["ContextTokens"]), int(r["GeneratedTokens"])))
    rows.sort()
    t0 = rows[0][0]
    return [Request(arrival=t - t0, prompt=p, output=max(1, o)) for t, p, o in rows]


@dataclass
class Replica:
    ident: int
    created_at: float
    ready_at: float
    running: int = 0
    queue: deque[tuple[float, Request]] = field(default_factory=deque)
    draining: bool = False
    removed_at: float | None = None

    def load(self) -> int:
        return self.running + len(self.queue)


@dataclass
class Result:
    label: str
    replica_minutes: float
    waits: list[float]
    events: list[str]
    peak: int


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(
    requests: list[Request],
    *,
    scaling: ScalingSpec,
    max_num_seqs: int,
    startup_s: float,
    interval_s: float,
    speedup: float,
    label: str,
) -> Result:
    seq = itertools.count()
    heap: list[tuple[float, int, str, object]] = []
    for r in requests:
        heapq.heappush(heap, (r.arrival / speedup, next(seq), "arrive", r))
    end_arrivals = requests[-1].arrival / speedup
    heapq.heappush(heap, (0.0, next(seq), "tick", None))
    ids = itertools.count()
    replicas = [
        Replica(next(ids), created_at=0.0, ready_at=0.0) for _ in range(scaling.min_replicas)
    ]
    desired = scaling.min_replicas
    state: AutoscalerStatus | None = None
    waits: list[float] = []
    events: list[str] = []
    pending_work = len(requests)
    peak = desired

    def admit(rep: Replica, now: float) -> None:
        while rep.queue and rep.running < max_num_seqs:
            enq, req = rep.queue.popleft()
            waits.append(now - enq)
            rep.running += 1
            itl = ITL_S * (1 + ITL_BATCH_FACTOR * (rep.running - 1))
            done = now + req.prompt * PREFILL_S_PER_TOKEN + req.output * itl
            heapq.heappush(heap, (done, next(seq), "finish", rep))

    def active() -> list[Replica]:
        return [r for r in replicas if not r.draining]

    now = 0.0
    while heap:
        now, _, kind, obj = heapq.heappop(heap)
        if kind == "arrive":
            assert isinstance(obj, Request)
            heapq.heappush(heap, (now + FRONTEND_S, next(seq), "enqueue", obj))
        elif kind == "enqueue":
            assert isinstance(obj, Request)
            ready = [r for r in active() if r.ready_at <= now] or active() or replicas
            rep = min(ready, key=lambda r: (r.load(), r.ident))
            rep.queue.append((now, obj))
            admit(rep, max(now, rep.ready_at))
            if rep.ready_at > now:
                heapq.heappush(heap, (rep.ready_at, next(seq), "ready", rep))
        elif kind == "ready":
            assert isinstance(obj, Replica)
            admit(obj, now)
        elif kind == "finish":
            assert isinstance(obj, Replica)
            obj.running -= 1
            pending_work -= 1
            admit(obj, now)
            if obj.draining and obj.load() == 0 and obj.removed_at is None:
                obj.removed_at = now
        elif kind == "tick":
            samples = [
                ReplicaSample(waiting=len(r.queue), running=r.running)
                for r in active()
                if r.ready_at <= now
            ]
            decision = decide(
                current=desired,
                samples=samples,
                scaling=scaling,
                state=state,
                now=EPOCH + timedelta(seconds=now),
            )
            state = decision.state
            if decision.desired_replicas != desired:
                events.append(
                    f"t={now / 60:6.1f} min {decision.scaled or 'bounds'} "
                    f"{desired}->{decision.desired_replicas} (queue {state.observed_queue})"
                )
            while len(active()) < decision.desired_replicas:
                replicas.append(Replica(next(ids), created_at=now, ready_at=now + startup_s))
            while len(active()) > decision.desired_replicas:
                # The least loaded goes (a starting one first), and drains what it holds.
                victim = min(active(), key=lambda r: (r.ready_at <= now, r.load(), -r.ident))
                victim.draining = True
                for enq, req in list(victim.queue):  # queued requests move (clients retry)
                    victim.queue.remove((enq, req))
                    heapq.heappush(heap, (now, next(seq), "requeue", (enq, req)))
                if victim.load() == 0:
                    victim.removed_at = now
            desired = decision.desired_replicas
            peak = max(peak, desired)
            if pending_work > 0 or now < end_arrivals:
                heapq.heappush(heap, (now + interval_s, next(seq), "tick", None))
        elif kind == "requeue":
            enq, req = obj  # type: ignore[misc]
            ready = [r for r in active() if r.ready_at <= now] or active()
            rep = min(ready, key=lambda r: (r.load(), r.ident))
            rep.queue.appendleft((enq, req))
            admit(rep, max(now, rep.ready_at))
    # A replica costs GPUs from its creation (start-up included) until it has drained.
    minutes = sum(((r.removed_at or now) - r.created_at) for r in replicas) / 60
    return Result(label=label, replica_minutes=minutes, waits=waits, events=events, peak=peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--targets", default="1,2,5,10", help="targetQueueDepth values")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=8)
    parser.add_argument("--max-num-seqs", type=int, default=4)
    parser.add_argument("--startup-seconds", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=15.0, help="policy pass period (s)")
    parser.add_argument("--up-window", type=int, default=30)
    parser.add_argument("--down-window", type=int, default=360)
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--events", type=int, default=6, help="scale events to print per run")
    args = parser.parse_args(argv)

    started = time.monotonic()
    requests = load_trace(args.trace)
    span = requests[-1].arrival / args.speedup
    print(
        f"trace {args.trace.name}: {len(requests)} requests over {span / 60:.1f} min "
        f"(speedup {args.speedup:g}); max-num-seqs {args.max_num_seqs}, start-up "
        f"{args.startup_seconds:g}s, pass every {args.interval:g}s, windows "
        f"up {args.up_window}s / down {args.down_window}s, replicas "
        f"{args.min_replicas}..{args.max_replicas}"
    )
    runs = []
    common = {
        "maxReplicas": args.max_replicas,
        "scaleUpWindowSeconds": args.up_window,
        "scaleDownWindowSeconds": args.down_window,
    }
    for target in (float(t) for t in args.targets.split(",")):
        spec = ScalingSpec.model_validate(
            {**common, "minReplicas": args.min_replicas, "targetQueueDepth": target}
        )
        runs.append((f"targetQueueDepth {target:g}", spec))
    fixed = ScalingSpec.model_validate({**common, "minReplicas": args.max_replicas})
    runs.append((f"fixed {args.max_replicas} replicas", fixed))
    print(
        f"\n{'policy':<24} {'replica-min':>11} {'peak':>5} {'wait p50 s':>11} "
        f"{'wait p99 s':>11} {'scale events':>13}"
    )
    results = []
    for label, spec in runs:
        res = simulate(
            requests,
            scaling=spec,
            max_num_seqs=args.max_num_seqs,
            startup_s=args.startup_seconds,
            interval_s=args.interval,
            speedup=args.speedup,
            label=label,
        )
        results.append(res)
        print(
            f"{label:<24} {res.replica_minutes:>11.1f} {res.peak:>5} "
            f"{percentile(res.waits, 0.5):>11.3f} {percentile(res.waits, 0.99):>11.3f} "
            f"{len(res.events):>13}"
        )
    for res in results:
        if res.events:
            print(f"\n{res.label}: first scale events")
            for line in res.events[: args.events]:
                print(f"  {line}")
    print(f"\n(simulated in {time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
