"""API errors: one exception type carrying the HTTP status, rendered per API family.

Ollama answers `{"error": "..."}`; OpenAI answers `{"error": {"message", "type", "param",
"code"}}`. The route prefix decides which shape a client gets.
"""

from __future__ import annotations

from typing import Any

# status -> OpenAI error type (what OpenAI's own API puts in error.type)
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    500: "server_error",
    501: "invalid_request_error",  # what OpenAI answers for a parameter it does not take
    503: "overloaded_error",
    507: "server_error",
}


class ApiError(Exception):
    """An error the client should see, with its HTTP status."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def bad_request(message: str, *, code: str | None = None, param: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def not_found(message: str) -> ApiError:
    return ApiError(404, message, code="model_not_found")


def headers_for(err: ApiError) -> dict[str, str]:
    """Response headers an error needs: openai's client retries 5xx answers unless told
    not to, and a 501 says the same thing however often it is asked."""
    return {"x-should-retry": "false"} if err.status == 501 else {}


def ollama_body(err: ApiError) -> dict[str, Any]:
    return {"error": err.message}


def openai_body(err: ApiError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": OPENAI_TYPES.get(err.status, "server_error"),
                      "param": err.param, "code": err.code}}


def body_for(path: str, err: ApiError) -> dict[str, Any]:
    return openai_body(err) if path.startswith("/v1") else ollama_body(err)


def from_r1local(err: Exception) -> ApiError:
    """Map the library's own errors (raised while resolving, loading or generating)."""
    from r1local.errors import (ContextFullError, DoesNotFitError, ModelFileError,
                                NetworkError, UnknownModelError, UsageError)

    msg = str(err)
    if isinstance(err, UnknownModelError):
        return not_found(msg)
    if isinstance(err, ContextFullError):
        return ApiError(400, msg, code="context_length_exceeded")
    if isinstance(err, UsageError):
        return bad_request(msg)
    if isinstance(err, ModelFileError):
        return ApiError(500, msg, code="model_load_failed")
    if isinstance(err, DoesNotFitError):  # the machine is short of memory, not the server broken
        return ApiError(507, err.message, code="insufficient_memory")
    if isinstance(err, NetworkError):
        return ApiError(502, msg, code="upstream_unreachable")
    return ApiError(500, msg)
