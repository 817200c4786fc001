"""vLLM's OpenAI-compatible HTTP API, on the simulated engine.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both
streamed as server-sent events or not), ``GET /health``, ``GET|POST /ping``, ``GET /version``
and ``GET /metrics``. With an API key, ``/v1`` (and ``/v2``, ``/inference``) need
``Authorization: Bearer <key>`` and answer 401 ``{"error": "Unauthorized"}`` otherwise, as
vLLM's AuthenticationMiddleware does; health, metrics, ping and version stay open. Response
bodies follow vLLM's shapes (``chat.completion``, ``chat.completion.chunk``,
``text_completion``, ``{"error": {...}}``).

A request the engine finishes with ``error`` (``--error-rate``) is answered as vLLM 0.32
answers a ``GenerationError`` (``serve/exception_handling``, ``_raise_if_error``): 500
``{"error": {"message": "Internal server error", "type": "InternalServerError", "param":
null, "code": 500}}``, or, streamed, that object as an SSE event (after the role chunk of a
chat stream) and then ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from e2e.engine.config import SimConfig
from e2e.engine.engine import Engine, EngineClosedError, Sequence, Sink
from e2e.engine.http import Request, Response
from e2e.engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from e2e.engine.textgen import (
    Kind,
    Token,
    chat_prompt_tokens,
    completion_prompt_tokens,
    magistral_tokens,
)

SSE = "text/event-stream; charset=utf-8"
GUARDED_PREFIXES = ("/v1", "/v2", "/inference")
VERSION = "0.0.0+magistral-sim"
DONE = b"data: [DONE]\n\n"
# vLLM's request models read integers in pydantic's lax mode ("100" and 100.0 are 100).
_LAX_INT: TypeAdapter[int | None] = TypeAdapter(int | None)
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"


GENERATION_ERROR_MESSAGE = "Internal server error"
GENERATION_ERROR_TYPE = "InternalServerError"


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, kind: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.param = param

    def body(self) -> bytes:
        return _dumps(
            {
                "error": {
                    "message": str(self),
                    "type": self.kind,
                    "param": self.param,
                    "code": self.status,
                }
            }
        )


def _generation_error() -> ApiError:
    """vLLM's answer to a request finished with ``error`` (GenerationError, 500)."""
    return ApiError(500, GENERATION_ERROR_MESSAGE, kind=GENERATION_ERROR_TYPE)


def _stream_error_event() -> bytes:
    """vLLM's SSE event for a GenerationError in a stream (json.dumps' default separators)."""
    error = {
        "message": GENERATION_ERROR_MESSAGE,
        "type": GENERATION_ERROR_TYPE,
        "param": None,
        "code": 500,
    }
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def _bad(message: str, *, param: str | None = None, value: Any = None) -> ApiError:
    """vLLM's VLLMValidationError as its server answers it: the parameter and the value
    rejected are appended to the message."""
    extras = [f"{k}={v}" for k, v in (("parameter", param), ("value", value)) if v is not None]
    text = f"{message} ({', '.join(extras)})" if extras else message
    return ApiError(400, text, kind="BadRequestError", param=param)


def _invalid(loc: str, error: Mapping[str, Any]) -> ApiError:
    """A request that fails vLLM's pydantic models: FastAPI's validation error, which vLLM
    answers with the HTTP phrase as its type and the field's location as `param`."""
    detail = {"type": error.get("type"), "loc": loc, "msg": error.get("msg")}
    if "input" in error:
        detail["input"] = error["input"]
    return ApiError(400, f"1 validation error:\n  {detail}", kind="Bad Request", param=loc)


_LAX_FLOAT: TypeAdapter[float | None] = TypeAdapter(float | None)


def _check_sampling(body: dict[str, Any]) -> None:
    """vLLM's checks of the sampling parameters the simulator reads (SamplingParams)."""
    temperature = _lax_float(body.get("temperature"), name="temperature")
    top_p = _lax_float(body.get("top_p"), name="top_p")
    if temperature is not None and temperature < 0:
        raise _bad(
            f"temperature must be non-negative, got {temperature}.",
            param="temperature",
            value=temperature,
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise _bad(f"top_p must be in (0, 1], got {top_p}.", param="top_p", value=top_p)


def _lax_float(value: Any, *, name: str) -> float | None:
    try:
        return _LAX_FLOAT.validate_python(value)
    except ValidationError as err:
        raise _invalid(f"body.{name}", err.errors(include_url=False)[0]) from None


def _lax_int(value: Any, *, name: str) -> int | None:
    try:
        return _LAX_INT.validate_python(value)
    except ValidationError as err:
        raise _invalid(f"body.{name}", err.errors(include_url=False)[0]) from None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _text(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


@dataclass(slots=True)
class Plan:
    """What the simulated model will write for one request."""

    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    max_tokens: int | None
    tokens: Iterator[Token]


class _Collect:
    """Non-streamed: gathers the text. ``special_tags``: the think tags are special tokens
    (dropped from the text); ``split``: reasoning goes to its own field."""

    def __init__(self, tokens: Iterator[Token], *, special_tags: bool, split: bool) -> None:
        self._tokens = tokens
        self._special_tags = special_tags
        self._split = split
        self.content: list[str] = []
        self.reasoning: list[str] = []

    def on_token(self, index: int, *, last: bool) -> None:
        token = next(self._tokens, Token(Kind.CONTENT, ""))
        if token.kind is Kind.TAG and self._special_tags:
            return
        if token.kind is Kind.REASONING and self._split:
            self.reasoning.append(token.text)
        else:
            self.content.append(token.text)


class _ChatStream:
    """Streamed chat: one ``chat.completion.chunk`` per token, written during the step."""

    def __init__(
        self,
        resp: Response,
        tokens: Iterator[Token],
        *,
        head: bytes,
        finish_reason: str,
        split_reasoning: bool,
        fingerprint: str | None,
    ) -> None:
        self._resp = resp
        self._tokens = tokens
        self._head = head
        self._split = split_reasoning
        # vLLM 0.32: the role chunk carries the (null) prompt fields, the others a null
        # `token_ids`; the finish chunk gets `system_fingerprint` unless a usage chunk follows.
        first_tail = (
            b',"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,'
            b'"prompt_text":null}\n\n'
        )
        self.role_chunk = head + b'{"role":"assistant","content":""}' + first_tail
        """The first event: vLLM sends it with the first output, even an ``error`` one."""
        self._tail = b',"logprobs":null,"finish_reason":null,"token_ids":null}]}\n\n'
        self._last_tail = (
            b',"logprobs":null,"finish_reason":"%b","stop_reason":null,"token_ids":null}]%b}\n\n'
            % (finish_reason.encode(), _fingerprint_field(fingerprint))
        )

    def on_token(self, index: int, *, last: bool) -> None:
        token = next(self._tokens, Token(Kind.CONTENT, ""))
        out = b""
        if index == 0:
            out = self.role_chunk
        if self._split and token.kind is Kind.TAG:
            delta = b"{}" if last else b""
        elif self._split and token.kind is Kind.REASONING:
            delta = b'{"reasoning":' + _text(token.text) + b"}"
        else:
            delta = b'{"content":' + _text(token.text) + b"}"
        if delta:
            out += self._head + delta + (self._last_tail if last else self._tail)
        self._resp.write(out)


def _fingerprint_field(fingerprint: str | None) -> bytes:
    return b',"system_fingerprint":' + _text(fingerprint) if fingerprint else b""


class _CompletionStream:
    def __init__(
        self,
        resp: Response,
        tokens: Iterator[Token],
        *,
        head: bytes,
        finish_reason: str,
        skip_tags: bool,
        fingerprint: str | None,
    ) -> None:
        self._resp = resp
        self._tokens = tokens
        self._head = head
        self._skip_tags = skip_tags
        ids = b',"prompt_token_ids":null,"token_ids":null}]'
        self._tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null%b}\n\n' % ids
        self._last_tail = b',"logprobs":null,"finish_reason":"%b","stop_reason":null%b%b}\n\n' % (
            finish_reason.encode(),
            ids,
            _fingerprint_field(fingerprint),
        )

    def on_token(self, index: int, *, last: bool) -> None:
        token = next(self._tokens, Token(Kind.CONTENT, ""))
        text = "" if self._skip_tags and token.kind is Kind.TAG else token.text
        if not text and not last:
            return
        self._resp.write(self._head + _text(text) + (self._last_tail if last else self._tail))


class OpenAIApp:
    """The request handler of one simulated replica."""

    def __init__(self, *, config: SimConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.healthy = config.start_healthy
        self.draining = False
        self._rng = random.Random(config.seed)
        self._keys = [f"Bearer {key}".encode() for key in config.api_keys]
        self._created = int(time.time())
        # vLLM: "vllm-<version>-<8 hex of the config's hash>" (serve/utils/fingerprint.py).
        digest = hashlib.sha256(repr(config).encode()).hexdigest()[:8]
        self.system_fingerprint = f"vllm-{VERSION}-{digest}"
        self._routes = {
            "/health": {"GET": self._health},
            "/ping": {"GET": self._health, "POST": self._health},
            "/version": {"GET": self._version},
            "/metrics": {"GET": self._metrics},
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
            "/v1/completions": {"POST": self._completions},
        }

    async def __call__(self, req: Request, resp: Response) -> None:
        if self._keys and req.method != "OPTIONS" and req.path.startswith(GUARDED_PREFIXES):
            given = req.headers.get("authorization", "").encode()
            if not any(hmac.compare_digest(given, key) for key in self._keys):
                resp.send(401, b'{"error":"Unauthorized"}')
                return
        methods = self._routes.get(req.path)
        if methods is None:
            resp.send(404, b'{"detail":"Not Found"}')
            return
        handler = methods.get(req.method) or (methods.get("GET") if req.method == "HEAD" else None)
        if handler is None:
            resp.send(405, b'{"detail":"Method Not Allowed"}')
            return
        try:
            await handler(req, resp)
        except ApiError as err:
            if not resp.started:
                resp.send(err.status, err.body())
            else:
                resp.abort()

    # ------------------------------------------------------------ plain routes
    async def _health(self, req: Request, resp: Response) -> None:
        resp.send(200 if self.healthy and not self.draining else 503, content_type="text/plain")

    async def _version(self, req: Request, resp: Response) -> None:
        resp.send(200, _dumps({"version": VERSION}))

    async def _metrics(self, req: Request, resp: Response) -> None:
        resp.send(200, self.engine.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

    async def _models(self, req: Request, resp: Response) -> None:
        cfg = self.config
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": cfg.model,
                "parent": None,
                "max_model_len": cfg.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{uuid.uuid4().hex[:16]}",
                        "object": "model_permission",
                        "created": self._created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in cfg.model_names
        ]
        resp.send(200, _dumps({"object": "list", "data": data}))

    # ---------------------------------------------------------- request checks
    def _body(self, req: Request) -> dict[str, Any]:
        if self.draining:
            raise ApiError(503, "The server is shutting down.", kind="ServiceUnavailableError")
        try:
            body = json.loads(req.body)
        except json.JSONDecodeError as err:
            raise _invalid(
                f"body.{err.pos}", {"type": "json_invalid", "msg": "JSON decode error"}
            ) from None
        except (ValueError, UnicodeDecodeError):
            raise _invalid("body", {"type": "json_invalid", "msg": "JSON decode error"}) from None
        if not isinstance(body, dict):
            raise _invalid("body", {"type": "model_attributes_type", "msg": NOT_AN_OBJECT})
        model = body.get("model")
        if model is not None and model not in self.config.model_names:
            raise ApiError(
                404,
                f"The model `{model}` does not exist. "
                f"Valid aliases: {', '.join(self.config.model_names)}.",
                kind="NotFoundError",
                param="model",
            )
        n = body.get("n", 1)
        if n not in (None, 1):
            raise _bad("The simulator supports n=1 only.", param="n")
        return body

    def _plan(self, body: dict[str, Any], *, prompt_tokens: int, chat: bool) -> Plan:
        """Validate the length fields as vLLM does and decide what gets generated.

        As in vLLM (renderers/params.py, serve/utils/api_utils.py get_max_tokens): a
        ``max_tokens`` above ``max_model_len`` is a 400, a prompt that fills the context is a
        400, and a ``max_tokens`` that only overflows the room the prompt leaves is clamped.
        """
        cfg = self.config
        limit_len = cfg.max_model_len
        raw = (
            _lax_int(body.get("max_completion_tokens"), name="max_completion_tokens")
            if chat
            else None
        )
        name = "max_completion_tokens" if raw is not None else "max_tokens"
        if raw is None:
            raw = _lax_int(body.get("max_tokens"), name="max_tokens")
        _check_sampling(body)
        if raw is not None and raw < 1:
            raise _bad(f"max_tokens must be at least 1, got {raw}.", param="max_tokens", value=raw)
        if raw is not None and raw > limit_len:
            raise _bad(
                f"{name}={raw} cannot be greater than max_model_len={limit_len}. "
                "Please request fewer output tokens.",
                param=name,
                value=raw,
            )
        if prompt_tokens >= limit_len:
            raise _bad(
                f"You passed {prompt_tokens} input tokens and requested {raw or 0} output "
                f"tokens. However, the model's context length is only {limit_len} tokens, "
                f"resulting in a maximum input length of {limit_len - (raw or 0)} tokens. "
                "Please reduce the length of the input prompt.",
                param="input_tokens",
            )
        room = limit_len - prompt_tokens
        limit = min(raw, room) if raw is not None else room
        seed = body.get("seed")
        rng = random.Random(seed if isinstance(seed, int) else self._rng.getrandbits(64))
        natural = rng.randint(cfg.output_tokens_min, cfg.output_tokens_max)
        min_tokens = body.get("min_tokens")
        if isinstance(min_tokens, int) and min_tokens > natural:
            natural = min_tokens
        if body.get("ignore_eos") is True:
            natural = limit
        output = min(natural, limit)
        finish = "length" if (natural > limit or body.get("ignore_eos") is True) else "stop"
        return Plan(
            prompt_tokens=prompt_tokens,
            output_tokens=output,
            finish_reason=finish,
            max_tokens=raw,
            tokens=magistral_tokens(
                length=natural, rng=rng, reasoning_fraction=cfg.reasoning_fraction
            ),
        )

    @staticmethod
    def _sequence(plan: Plan, *, request_id: str, sink: Sink) -> Sequence:
        return Sequence(
            request_id=request_id,
            prompt_tokens=plan.prompt_tokens,
            output_tokens=plan.output_tokens,
            finish_reason=plan.finish_reason,
            sink=sink,
            done=asyncio.get_running_loop().create_future(),
            max_tokens_param=plan.max_tokens,
        )

    async def _run(self, seq: Sequence, resp: Response) -> str:
        """Submit, abort on disconnect, wait for the finish reason."""
        try:
            self.engine.submit(seq)
        except EngineClosedError:
            raise ApiError(
                503, "The server is shutting down.", kind="ServiceUnavailableError"
            ) from None
        resp.on_disconnect(lambda: self.engine.abort(seq))
        return await seq.done

    @staticmethod
    def _usage(*, prompt: int, completion: int, details: bool = True) -> dict[str, Any]:
        """``details``: the (null) details fields non-streamed answers carry; vLLM's stream
        usage chunks leave them out."""
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
        if details:
            usage["prompt_tokens_details"] = None
            usage["completion_tokens_details"] = None
        return usage

    # -------------------------------------------------------- chat completions
    async def _stream(
        self,
        resp: Response,
        plan: Plan,
        *,
        sink: Sink,
        request_id: str,
        created: int,
        model: str,
        include_usage: bool,
        object_kind: str,
        opening: bytes = b"",
    ) -> None:
        """Run a streamed request to its end: chunks through `sink`, then usage and [DONE].

        A request the engine fails (it emitted no token) ends with ``opening`` (the role
        chunk of a chat stream), vLLM's error event and [DONE]: no finish or usage chunk."""
        seq = self._sequence(plan, request_id=request_id, sink=sink)
        resp.start_stream(200, content_type=SSE)
        reason = await self._run(seq, resp)
        if reason == "abort":
            resp.abort()
            return
        if reason == "error":
            resp.end((opening if seq.generated == 0 else b"") + _stream_error_event() + DONE)
            return
        tail = b""
        if include_usage:
            usage = {
                "id": request_id,
                "object": object_kind,
                "created": created,
                "model": model,
                "choices": [],
                "usage": self._usage(
                    prompt=plan.prompt_tokens, completion=seq.generated, details=False
                ),
                "system_fingerprint": self.system_fingerprint,
            }
            tail = b"data: " + _dumps(usage) + b"\n\n"
        resp.end(tail + DONE)

    async def _chat(self, req: Request, resp: Response) -> None:
        body = self._body(req)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list.", param="messages")
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise _bad("every message needs a role.", param="messages")
        plan = self._plan(body, prompt_tokens=chat_prompt_tokens(messages), chat=True)
        split = self.config.reasoning_parser is not None
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = str(body.get("model") or self.config.served_model_name)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            head = (
                b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,'
                b'"choices":[{"index":0,"delta":' % (request_id.encode(), created, _text(model))
            )
            stream = _ChatStream(
                resp,
                plan.tokens,
                head=head,
                finish_reason=plan.finish_reason,
                split_reasoning=split,
                fingerprint=None if include_usage else self.system_fingerprint,
            )
            await self._stream(
                resp,
                plan,
                sink=stream,
                request_id=request_id,
                created=created,
                model=model,
                include_usage=include_usage,
                object_kind="chat.completion.chunk",
                opening=stream.role_chunk,
            )
            return
        collect = _Collect(plan.tokens, special_tags=split, split=split)
        seq = self._sequence(plan, request_id=request_id, sink=collect)
        reason = await self._run(seq, resp)
        if reason == "abort":
            resp.abort()
            return
        if reason == "error":
            raise _generation_error()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(collect.content),
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            # vLLM leaves out an empty `tool_calls` (ChatMessage's serializer).
            "reasoning": "".join(collect.reasoning) if split else None,
        }
        out = {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self._usage(prompt=plan.prompt_tokens, completion=seq.generated),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
        resp.send(200, _dumps(out))

    # ------------------------------------------------------------- completions
    async def _completions(self, req: Request, resp: Response) -> None:
        body = self._body(req)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]
        if isinstance(prompt, str):
            count = completion_prompt_tokens(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            count = len(prompt)
        else:
            raise _bad(
                "Either prompt or prompt_embeds must be provided and non-empty.", param="prompt"
            )
        plan = self._plan(body, prompt_tokens=count, chat=False)
        skip_tags = self.config.reasoning_parser is not None
        request_id = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = str(body.get("model") or self.config.served_model_name)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            head = (
                b'data: {"id":"%b","object":"text_completion","created":%d,"model":%b,'
                b'"choices":[{"index":0,"text":' % (request_id.encode(), created, _text(model))
            )
            stream = _CompletionStream(
                resp,
                plan.tokens,
                head=head,
                finish_reason=plan.finish_reason,
                skip_tags=skip_tags,
                fingerprint=None if include_usage else self.system_fingerprint,
            )
            await self._stream(
                resp,
                plan,
                sink=stream,
                request_id=request_id,
                created=created,
                model=model,
                include_usage=include_usage,
                object_kind="text_completion",
            )
            return
        collect = _Collect(plan.tokens, special_tags=skip_tags, split=False)
        seq = self._sequence(plan, request_id=request_id, sink=collect)
        reason = await self._run(seq, resp)
        if reason == "abort":
            resp.abort()
            return
        if reason == "error":
            raise _generation_error()
        out = {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": "".join(collect.content),
                    "logprobs": None,
                    "finish_reason": reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": self._usage(prompt=plan.prompt_tokens, completion=seq.generated),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
        resp.send(200, _dumps(out))
