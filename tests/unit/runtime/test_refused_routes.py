"""Routes of vLLM that go around the API key or the chat policy (found on the real engine).

vLLM 0.32.0 and 0.33.0 also serve `/invocations` (SageMaker: routed by body to the chat and
completion handlers; vLLM's API-key check guards only /v1, /v2, /inference and /cohere, so it
answered a chat completion without a key: tests/vllm/test_engine.py) and `/v1/messages`
(Anthropic's Messages API, which the middleware does not rewrite, like /v1/responses).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .fake_vllm import call
from .test_middleware import AUTH, build

CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.mark.parametrize("path", ["/invocations", "/invocations/x"])
@pytest.mark.parametrize("headers", [[], AUTH], ids=["no-key", "key"])
async def test_invocations_are_refused_with_or_without_a_key(
    tmp_path: Path, path: str, headers: list[tuple[bytes, bytes]]
) -> None:
    app, fake = build(tmp_path)
    status, _, body = await call(app, method="POST", path=path, body=CHAT, headers=headers)
    error = json.loads(body)["error"]
    assert (status, error["type"], error["code"]) == (404, "invalid_request_error", 404)
    assert "does not check the API key" in error["message"]
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_anthropic_messages_are_refused_once_the_key_is_checked(
    tmp_path: Path, path: str
) -> None:
    app, fake = build(tmp_path)
    status, _, body = await call(app, method="POST", path=path, body=CHAT, headers=AUTH)
    assert status == 404
    assert json.loads(body)["error"]["message"].startswith("/v1/messages is not served")
    status, _, body = await call(app, method="POST", path=path, body=CHAT)
    assert (status, json.loads(body)) == (401, {"error": "Unauthorized"})  # vLLM's answer
    assert fake.requests == []


async def test_lookalike_paths_are_not_refused(tmp_path: Path) -> None:
    app, _ = build(tmp_path)
    for path in ("/invocationsx", "/v1/messagesx"):
        status, _, body = await call(app, method="POST", path=path, body=CHAT, headers=AUTH)
        assert (status, json.loads(body)) == (404, {"detail": "Not Found"}), path  # vLLM's
