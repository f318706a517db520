"""The gateway's errors and how each face answers them.

Management routes answer `{"detail": ...}` like the rest of our HTTP service; the OpenAI surface
answers `{"error": {"message", "type", "code"}}`, the shape OpenAI SDKs read and show.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import Response

from sparring.web.body import json_response

_OPENAI_TYPES = {
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
}


class GatewayError(Exception):
    """An answer other than 200, with the status it is given."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def http(self) -> HTTPException:
        """As a management route answers it."""
        return HTTPException(self.status, self.message, headers=self.headers())

    def headers(self) -> dict[str, str] | None:
        """Headers the answer carries besides the body."""
        return None

    def openai(self) -> Response:
        """As the OpenAI surface answers it."""
        return openai_error(self.status, self.message)


class Forbidden(GatewayError):
    status = 403


class SessionNotFound(GatewayError):
    status = 404


class SessionEnded(GatewayError):
    status = 409


class InvalidCall(GatewayError):
    status = 422


class TooManySessions(GatewayError):
    """No room for another session; `retry_after_s` is when the next idle one times out."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class UpstreamFailed(GatewayError):
    status = 502


def openai_error(status: int, message: str) -> Response:
    """An error body in OpenAI's shape."""
    error = {"message": message, "type": _OPENAI_TYPES.get(status, "invalid_request_error"), "code": status}
    return json_response({"error": error}, status)
