"""OpenAI-style error responses: {"error": {"message", "type", "param", "code"}}.

`code` is the HTTP status as an integer, like the rest of vLLM's error responses, so clients
see one error shape whether the middleware or vLLM answered.
"""

from __future__ import annotations

from .asgi import dumps


class RequestError(Exception):
    """A request the middleware refuses; `param` names the offending field (None: the body)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None,
        status: int = 400,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.error_type = error_type

    def body(self) -> bytes:
        return error_body(
            message=self.message, param=self.param, status=self.status, error_type=self.error_type
        )


def error_body(*, message: str, param: str | None, status: int, error_type: str) -> bytes:
    """The JSON bytes of an OpenAI-style error."""
    error = {"message": message, "type": error_type, "param": param, "code": status}
    return dumps({"error": error})
