"""Draining on the real engine (vLLM 0.32.0 CPU): SIGTERM to an engine with streams in flight.

The options engine (conftest.py: shutdown_timeout_seconds 14, max_num_seqs 2) is taken from
the session and stopped here. vLLM drains its engine for up to `--shutdown-timeout` seconds;
the middleware ends whatever is still in flight 2 s before that (cutoff.py). Before the
cutoff, a stream that outlived the shutdown timeout could hang with no more bytes until the
client went away (issue 9: 2 of 3 trials, once for 9.5 minutes).

A request sent just before the SIGTERM races it: it is refused by the middleware (503), or
served or cut like the others, or it reaches vLLM's handler as vLLM starts shutting down, and
vLLM 0.32 then streams nothing but a role chunk and `[DONE]` (no finish reason, no error); the
middleware adds the cutoff's error event before that `[DONE]` (cutoff.py). Whichever way it
goes, the client can tell that it has to retry.
"""

from __future__ import annotations

import http.client
import json
import time

from e2e.real_engine.serve import SERVED_MODEL_NAME, RealEngine
from e2e.stalls import Heartbeat, run_delay_meter
from magistral_runtime.cutoff import cutoff_after
from tests.vllm.client import Background, call
from tests.vllm.conftest import OPTIONS_SHUTDOWN_TIMEOUT, Engines, record

HI = [{"role": "user", "content": "hi"}]
GRACE = OPTIONS_SHUTDOWN_TIMEOUT + 10
"""A pod's terminationGracePeriodSeconds must cover the shutdown timeout and a margin."""


SHORT_SECONDS = 6.0
"""How long the short stream's tokens take at the measured speed: it finishes during the drain
(the cutoff is 12 s after SIGTERM), not before the signal, even when this machine stalls for a
few seconds before the signal (1.5 s with a 4 s cutoff once left too little room)."""
LONG_TOKENS = 15_000
"""Over a minute at this machine's speed: the long stream is still running at the cutoff."""


def tokens_per_second(running: Background, seconds: float = 1.0) -> float:
    """The speed of a running stream (one token per event), over `seconds`."""
    first, started = len(running.events), time.monotonic()
    time.sleep(seconds)
    return (len(running.events) - first) / (time.monotonic() - started)


def kept_answer(connection: http.client.HTTPConnection, headers: dict[str, str]) -> float:
    """A request on ``connection`` (opened by the first), answered 200; when it ended."""
    connection.request("GET", "/v1/models", headers=headers)
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200
    return time.monotonic()


def stream(engine: RealEngine, max_tokens: int) -> Background:
    body = {
        "model": SERVED_MODEL_NAME,
        "messages": HI,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    return Background(engine, "/v1/chat/completions", body).start()


def test_draining_on_the_real_engine(engines: Engines, heartbeat: Heartbeat) -> None:
    engine = engines.take("options")
    try:
        host, port = engine.url.removeprefix("http://").split(":")
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {engine.api_key}"}
        chat = json.dumps({"model": SERVED_MODEL_NAME, "messages": HI})
        # A client's connection, kept alive from before the SIGTERM (the options engine's
        # keep-alive is OPTIONS_KEEP_ALIVE, so a stall of this machine does not close it).
        kept = http.client.HTTPConnection(host, int(port), timeout=30)
        kept_answer(kept, auth)

        long = stream(engine, LONG_TOKENS)  # outlives the shutdown timeout
        long.wait_for_events(2)
        # About SHORT_SECONDS left when SIGTERM comes, at the speed the engine runs now
        # (100-250 tokens/s here: 40 tokens once ended before the signal).
        rate = tokens_per_second(long)
        short = stream(engine, max(20, round(rate * SHORT_SECONDS)))
        short.wait_for_events(2)
        short_began = time.monotonic()
        racing = stream(engine, 30)
        last_answer = kept_answer(kept, auth)
        time.sleep(0.05)
        assert engine.pid is not None
        server_waited = run_delay_meter(engine.pid)
        sent = engine.terminate()

        time.sleep(0.3)
        try:
            kept.request("POST", "/v1/chat/completions", chat, auth)
            refused = kept.getresponse()
        except OSError as error:
            raise AssertionError(
                f"the kept-alive connection failed {time.monotonic() - sent:.2f} s after "
                f"SIGTERM, {time.monotonic() - last_answer:.2f} s after its last answer "
                f"({heartbeat.stalled(last_answer, time.monotonic()):.2f} s of it stalled): "
                f"{error!r}"
            ) from error
        body = json.loads(refused.read())
        assert refused.status == 503
        assert refused.getheader("Retry-After") == "1"
        assert body["error"]["type"] == "service_unavailable"
        fresh = call(engine, "/v1/chat/completions", {"model": SERVED_MODEL_NAME, "messages": HI})
        assert (fresh.status, fresh.headers.get("retry-after")) == (503, "1")
        readiness = call(engine, "/magistral/ready", key=None)
        assert (readiness.status, readiness.json()["status"]) == (503, "draining")

        short.join(30)
        assert short.error is None
        assert short.payloads[-1] == "[DONE]"
        finishes = [c["choices"][0]["finish_reason"] for c in short.payloads[:-1] if c["choices"]]
        assert finishes[-1] == "length"
        assert not [c for c in short.payloads[:-1] if "error" in c]
        assert short.ended is not None
        # In flight at SIGTERM, finished by the drain before the cutoff (seen by this process:
        # not counting its stalls, e2e/stalls.py).
        short_stall = heartbeat.stalled(sent, short.ended)
        assert sent < short.ended, (
            f"the short stream ({len(short.payloads)} events at {rate:.0f} tokens/s) ended "
            f"{sent - short.ended:.2f} s before SIGTERM; this process stalled "
            f"{heartbeat.stalled(short_began, sent):.2f} s between its start and the signal"
        )
        assert short.ended - short_stall < sent + cutoff_after(OPTIONS_SHUTDOWN_TIMEOUT), (
            f"short stream of {len(short.payloads)} events at {rate:.0f} tokens/s ended "
            f"{short.ended - sent:.2f} s after SIGTERM ({short_stall:.2f} s of it stalled)"
        )

        long.join(30)
        assert long.error is None
        *_, error, done = long.payloads
        assert done == "[DONE]"
        assert error["error"]["type"] == "service_unavailable"
        assert error["error"]["code"] == 503
        assert long.ended is not None
        cut = long.ended - sent
        # The cut comes from the engine's event loop: not counting this process's stalls nor
        # the time that loop waited for a CPU (e2e.stalls.run_delay_meter; 0 once the process is
        # gone), whichever is larger (they may overlap).
        server_stall = server_waited()
        stall = max(heartbeat.stalled(sent, long.ended), server_stall)
        assert cutoff_after(OPTIONS_SHUTDOWN_TIMEOUT) - 0.5 < cut, cut
        assert cut - stall < OPTIONS_SHUTDOWN_TIMEOUT, (
            cut,
            heartbeat.stalled(sent, long.ended),
            server_stall,
        )

        racing.join(30)
        outcome = raced(racing)

        now = time.monotonic()
        code = engine.wait_exit(GRACE - (now - sent - heartbeat.stalled(sent, now)))
        exited = time.monotonic() - sent
        assert code is not None, f"still running {GRACE} s after SIGTERM"
        # The engine core and worker follow the API server within 10 s (not counting stalls).
        left = time.monotonic()
        while (
            engine.pids()
            and time.monotonic() - heartbeat.stalled(left, time.monotonic()) < left + 10
        ):
            time.sleep(0.1)
        assert engine.pids() == [], "engine core or worker outlived the API server"
        record(
            f"drain (shutdown timeout {OPTIONS_SHUTDOWN_TIMEOUT} s)",
            f"{len(long.payloads) - 2} chunks of the long stream, then its error event and "
            f"[DONE] {cut:.2f} s after SIGTERM; the short stream ({len(short.payloads) - 1} "
            f"chunks at {rate:.0f} tokens/s) finished {short.ended - sent:.2f} s after; "
            f"the process exited (code {code}) "
            f"{exited:.2f} s after SIGTERM (grace period {GRACE} s); a stream sent 50 ms "
            f"before SIGTERM: {outcome}",
        )
    finally:
        engine.stop()


def raced(request: Background) -> str:
    """How a request that raced the SIGTERM ended; fails unless a client can tell."""
    assert request.error is None
    if request.status == 503:
        assert request.headers.get("retry-after") == "1"
        return "503 with Retry-After (refused by the middleware)"
    assert request.status == 200
    payloads = request.payloads
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    if chunks and "error" in chunks[-1]:
        assert chunks[-1]["error"]["type"] == "service_unavailable"
        return f"{len(chunks) - 1} chunks, then the error event and [DONE]"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
    assert finishes[-1] in ("stop", "length"), payloads
    return f"served to the end (finish_reason {finishes[-1]})"
