"""`MagistralMiddleware`: the pure ASGI middleware vLLM loads with `--middleware`.

vLLM 0.33.0 (vllm/entrypoints/serve/middleware/register.py) imports each `--middleware`
path and, for a class, calls `app.add_middleware(cls)`: Starlette then builds it as
`cls(app)`. It is added after vLLM's own middlewares (CORS, API-key authentication), so it
is the outermost one and sees every request first.

What it does:

* POST /v1/chat/completions and /v1/chat/completions/batch (one conversation per choice):
  checks and defaults the request (`request.py`: limits, sampling defaults, system prompt,
  history policy) and, for think-text models (2506), moves the `<think>` reasoning out of
  the response's content, streamed or not (`response.py`).
* /v1/responses and /v1/messages (and their sub-paths): refused with 404; the Responses
  API's and Anthropic's Messages API's items and events are not rewritten, so they would
  bypass the system prompt, the sampling defaults and the reasoning split.
* /invocations (SageMaker's route into the same handlers): refused with 404, key or not;
  vLLM's API-key check does not guard it (seen on the real engine: a chat completion
  without a key).
* Requests whose API key is wrong are passed on untouched, so vLLM answers them 401
  without learning anything from our checks.
* GET /magistral/ready and /magistral/live: deep readiness and liveness (`health.py`), with
  a one-token generation sent to vLLM's app in-process (no network hop) using the API key.
  When it times out (a saturated engine queues it), vLLM's generated-token counter, read
  from the process's Prometheus registry, tells a busy engine from a wedged one.
* SIGTERM: draining (`drain.py`): readiness fails, new requests get 503, requests in flight
  go on until shortly before `--shutdown-timeout`, when those still running are ended
  cleanly (`cutoff.py`: a final SSE error event and `[DONE]`, or 503 with Retry-After).

The config comes from the file named by MAGISTRAL_RUNTIME_CONFIG.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .asgi import ASGIApp, Message, Receive, Scope, Send, dumps, header, send_json, with_header
from .body import check_body_size, check_declared_size
from .config import API_KEY_ENV, CONFIG_ENV, CONFIG_PATH, RuntimeConfig, load_runtime_config
from .cutoff import InFlight, Tracker, cutoff_after, end_if_cut
from .drain import DrainController, install_sigterm_handler
from .errors import RequestError, error_body
from .health import HealthMonitor, HealthReport, ProbeError
from .request import ChatPolicy, PreparedChat, prepare_batch_chat_request, prepare_chat_request
from .response import ChatStreamRewriter, rewrite_chat_completion
from .system_prompt import SystemPromptError, load_system_prompt

log = logging.getLogger("magistral_runtime.middleware")

READY_PATH = "/magistral/ready"
LIVE_PATH = "/magistral/live"
CHAT_PATH = "/v1/chat/completions"
BATCH_PATH = "/v1/chat/completions/batch"
RESPONSES_PATH = "/v1/responses"
MESSAGES_PATH = "/v1/messages"
INVOCATIONS_PATH = "/invocations"
PROBE_PATH = "/v1/completions"
# vLLM's counter of generated tokens (vllm/v1/metrics/loggers.py), in this process's default
# Prometheus registry: it grows every engine step, streamed requests or not.
GENERATION_TOKENS = "vllm:generation_tokens_total"
# How long an abandoned (timed-out) readiness generation may take to hear the disconnect.
PROBE_ABANDON_SECONDS = 1.0
# Paths that keep answering while draining (monitoring); everything else gets 503.
DRAIN_EXEMPT = frozenset({"/health", "/metrics", "/ping", "/version", READY_PATH, LIVE_PATH})
# vLLM's API-key middleware guards these prefixes (serve/middleware/authenticate.py).
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
# Successful answers on these show the engine generating (readiness and liveness count them).
GENERATION_PATHS = frozenset({CHAT_PATH, BATCH_PATH, PROBE_PATH})
RETRY_AFTER = ((b"retry-after", b"1"), (b"connection", b"close"))


def _refusal(path: str, why: str) -> bytes:
    return error_body(
        message=f"{path} is not served by this endpoint: {why}; use {CHAT_PATH}",
        param=None,
        status=404,
        error_type="invalid_request_error",
    )


_POLICY = (
    f"its runtime applies the system prompt, the sampling defaults and the reasoning split to "
    f"{CHAT_PATH} and {BATCH_PATH} only"
)
RESPONSES_REFUSAL = _refusal(RESPONSES_PATH, _POLICY)
# Refused on /v1 paths once the key is checked (vLLM answers 401 without it).
REFUSED = {RESPONSES_PATH: RESPONSES_REFUSAL, MESSAGES_PATH: _refusal(MESSAGES_PATH, _POLICY)}
INVOCATIONS_REFUSAL = _refusal(
    INVOCATIONS_PATH, f"vLLM does not check the API key there, and {_POLICY}"
)

Preparer = Callable[[bytes], PreparedChat]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the middleware needs, resolved once."""

    config: RuntimeConfig
    policy: ChatPolicy
    api_key: str | None
    system_prompt_error: str | None = None
    install_signal_handler: bool = True

    @classmethod
    def from_config(
        cls, config: RuntimeConfig, *, env: Mapping[str, str], install_signal_handler: bool = True
    ) -> Settings:
        problem: str | None = None
        try:
            prompt = load_system_prompt(config, env=env)
        except SystemPromptError as exc:
            prompt, problem = None, str(exc)
            log.error("%s; chat requests get no default system prompt", exc)
        policy = ChatPolicy(
            temperature=config.sampling.temperature,
            top_p=config.sampling.top_p,
            max_tokens=config.sampling.max_tokens,
            max_model_len=config.max_model_len,
            max_n=config.limits.max_n,
            max_body_bytes=config.limits.max_body_bytes,
            history=config.reasoning_history,
            reasoning_format=config.reasoning_format,
            system_prompt=prompt,
        )
        return cls(
            config=config,
            policy=policy,
            api_key=env.get(API_KEY_ENV) or None,
            system_prompt_error=problem,
            install_signal_handler=install_signal_handler,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        path = Path(env.get(CONFIG_ENV) or CONFIG_PATH)
        return cls.from_config(load_runtime_config(path), env=env)


class MagistralMiddleware:
    """Pure ASGI middleware; `MagistralMiddleware(app)` is how vLLM builds it."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.settings = settings if settings is not None else Settings.from_env(os.environ)
        config = self.settings.config
        self.in_flight = InFlight()
        self.drain = DrainController(
            clock=clock,
            cutoff_seconds=cutoff_after(config.shutdown_timeout_seconds),
            on_cutoff=self.in_flight.cut_all,
        )
        self.health = HealthMonitor(
            clock=clock,
            probe=self._generate_one_token,
            timeout_seconds=config.health.generation_timeout_seconds,
            cache_seconds=config.health.cache_seconds,
            liveness_budget_seconds=config.health.liveness_budget_seconds,
            is_draining=lambda: self.drain.draining,
            blocker=lambda: self.settings.system_prompt_error,
            engine_tokens=engine_generation_tokens,
        )
        self._split = config.reasoning_format == "think-text"
        key = self.settings.api_key
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self._lifespan_state: dict[str, Any] | None = None
        # Starlette puts the application object in every scope before the middlewares run
        # (vLLM's handlers reach the engine through it): the probe's scope needs it too.
        self._asgi_app: Any = None
        self._restore_signal: Callable[[], None] | None = None
        policy = self.settings.policy
        self._preparers: dict[str, Preparer] = {
            CHAT_PATH: lambda raw: prepare_chat_request(raw, policy=policy),
            BATCH_PATH: lambda raw: prepare_batch_chat_request(raw, policy=policy),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi_app is None:
            self._asgi_app = scope.get("app")
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
            return
        if kind == "lifespan":
            self._on_lifespan(scope)
        await self.app(scope, receive, send)

    def _on_lifespan(self, scope: Scope) -> None:
        self.drain.bind_loop()
        state = scope.get("state")
        if isinstance(state, dict):
            self._lifespan_state = state
        if self.settings.install_signal_handler and self._restore_signal is None:
            self._restore_signal = install_sigterm_handler(self.drain.begin)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root = scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in (READY_PATH, LIVE_PATH):
            report = await self.health.readiness() if path == READY_PATH else self.health.liveness()
            await self._report(send, report)
            return
        if self.drain.draining and path not in DRAIN_EXEMPT:
            body = error_body(
                message="this replica is shutting down; retry on another",
                param=None,
                status=503,
                error_type="service_unavailable",
            )
            await send_json(send, status=503, body=body, extra_headers=RETRY_AFTER)
            return
        if not path.startswith(GUARDED_PREFIXES):
            if _under(path, INVOCATIONS_PATH):
                await send_json(send, status=404, body=INVOCATIONS_REFUSAL)
                return
            await self.app(scope, receive, send)
            return
        self.drain.enter()
        tracker = Tracker(send)
        token = self.in_flight.add(tracker)
        try:
            await self._guarded(scope, receive, tracker.send, path)
        except asyncio.CancelledError:
            if not await end_if_cut(tracker):
                raise
        finally:
            self.in_flight.discard(token)
            self.drain.leave()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        prepare = self._preparers.get(path) if scope.get("method") == "POST" else None
        if prepare is not None and self._authorized(scope):
            await self._chat(scope, receive, send, prepare)
        elif (refusal := _refused(path)) is not None and self._authorized(scope):
            await send_json(send, status=404, body=refusal)
        else:
            wrapped = self._progress_send(send) if path in GENERATION_PATHS else send
            await self.app(scope, receive, wrapped)

    async def _report(self, send: Send, report: HealthReport) -> None:
        await send_json(send, status=200 if report.ok else 503, body=report.body())

    def _authorized(self, scope: Scope) -> bool:
        """Same check as vLLM's API-key middleware (which still runs after us)."""
        if self._key_digest is None:
            return True
        value = header(scope, b"authorization") or b""
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token).digest(), self._key_digest)

    def _progress_send(self, send: Send) -> Send:
        """`send`, noting engine progress on the body of a 200 answer."""
        health = self.health
        ok = False

        async def wrapped(message: Message) -> None:
            nonlocal ok
            if message["type"] == "http.response.start":
                ok = message.get("status") == 200
            elif ok and message["type"] == "http.response.body" and message.get("body"):
                health.note_progress()
            await send(message)

        return wrapped

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body (None: the client went away); 413 above the limit."""
        limit = self.settings.policy.max_body_bytes
        check_declared_size(header(scope, b"content-length"), limit=limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            check_body_size(size, limit=limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _chat(self, scope: Scope, receive: Receive, send: Send, prepare: Preparer) -> None:
        try:
            raw = await self._read_body(scope, receive)
            if raw is None:
                return
            prepared = prepare(raw)
        except RequestError as exc:
            await send_json(send, status=exc.status, body=exc.body())
            return
        forwarded = dict(scope)
        forwarded["headers"] = with_header(
            list(scope.get("headers", ())), b"content-length", str(len(prepared.body)).encode()
        )
        await self.app(forwarded, _replay(prepared.body, receive), self._chat_send(send, prepared))

    def _chat_send(self, send: Send, prepared: PreparedChat) -> Send:
        health = self.health
        if not self._split:
            return self._progress_send(send)
        mode: str | None = None  # "stream", "json" or "raw", decided by the response start
        start: Message | None = None
        rewriter: ChatStreamRewriter | None = None
        parts: list[bytes] = []

        async def wrapped(message: Message) -> None:
            nonlocal mode, start, rewriter
            kind = message["type"]
            if kind == "http.response.start":
                content_type = _content_type(message)
                if message.get("status") != 200:
                    mode = "raw"
                elif content_type.startswith(b"text/event-stream"):
                    mode = "stream"
                    rewriter = ChatStreamRewriter(choices=prepared.n)
                    # The rewrite changes the length (vLLM streams send none anyway).
                    headers = with_header(list(message.get("headers", ())), b"content-length", None)
                    message = {**message, "headers": headers}
                elif content_type.startswith(b"application/json"):
                    mode, start = "json", message
                    return  # sent with the rewritten body (its length changes)
                else:
                    mode = "raw"
                await send(message)
                return
            if kind != "http.response.body":
                await send(message)
                return
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if body and mode != "raw":  # "raw": not a 200 answer, or not a chat completion
                health.note_progress()
            if mode == "stream" and rewriter is not None:
                out = rewriter.feed(body) if body else b""
                if not more:
                    out += rewriter.close()
                if out or not more:
                    await send({"type": "http.response.body", "body": out, "more_body": more})
                return
            if mode == "json" and start is not None:
                parts.append(body)
                if more:
                    return
                out = rewrite_chat_completion(b"".join(parts))
                headers = with_header(
                    list(start.get("headers", ())), b"content-length", str(len(out)).encode()
                )
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            await send(message)

        return wrapped

    async def _generate_one_token(self) -> None:
        """A real one-token generation through vLLM's app (in-process, behind its auth)."""
        config = self.settings.config
        body = dumps(
            {
                "model": config.served_model_name,
                "prompt": "Hi",
                "max_tokens": 1,
                "temperature": 0,
            }
        )
        headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if self.settings.api_key:
            headers.append((b"authorization", b"Bearer " + self.settings.api_key.encode()))
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PROBE_PATH,
            "raw_path": PROBE_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", config.port),
            "state": dict(self._lifespan_state or {}),
        }
        if self._asgi_app is not None:
            scope["app"] = self._asgi_app
        done = asyncio.Event()
        status = 0
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        call = asyncio.ensure_future(self.app(scope, _replay(body, _wait_for(done)), send))
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            # Timed out (a full queue, a wedged engine). vLLM's route handlers abort a request
            # when its client disconnects, not when the call is cancelled (`with_cancellation`
            # leaves the handler task running: the request would stay queued in the engine).
            # So disconnect first, give the handler a moment to abort, then cancel.
            done.set()
            stopped, _ = await asyncio.wait({call}, timeout=PROBE_ABANDON_SECONDS)
            if not stopped:
                log.warning(
                    "the timed-out readiness generation did not stop within %gs of its "
                    "disconnect: cancelled (vLLM may keep it queued until it runs)",
                    PROBE_ABANDON_SECONDS,
                )
            call.cancel()
            raise
        finally:
            done.set()
        answer = b"".join(chunks)
        if status != 200:
            raise ProbeError(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
        try:
            choices = json.loads(answer)["choices"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProbeError(f"unexpected answer: {answer[:200]!r}") from exc
        if not choices:
            raise ProbeError("the answer has no choices")


def engine_generation_tokens() -> float | None:
    """vLLM's generated-token count in this process (None outside vLLM, e.g. in unit tests)."""
    try:
        from prometheus_client import REGISTRY
    except ImportError:  # pragma: no cover - vLLM ships prometheus_client
        return None
    total: float | None = None
    for family in REGISTRY.restricted_registry([GENERATION_TOKENS]).collect():
        for sample in family.samples:
            if sample.name == GENERATION_TOKENS:
                total = (total or 0.0) + sample.value
    return total


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _refused(path: str) -> bytes | None:
    for prefix, refusal in REFUSED.items():
        if _under(path, prefix):
            return refusal
    return None


def _content_type(message: Message) -> bytes:
    for key, value in message.get("headers", ()):
        if key.lower() == b"content-type":
            return bytes(value).lower()
    return b""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that returns `body` first, then defers to `receive` (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _wait_for(done: asyncio.Event) -> Receive:
    async def receive() -> Message:
        await done.wait()
        return {"type": "http.disconnect"}

    return receive
