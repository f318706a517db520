"""The scripted server's errors, worded and typed as vLLM 0.32 answers them, and how handlers raise them.

A handler raises a `Refusal` anywhere while reading or answering a request; the server turns it into
the HTTP answer (`Refusal.response()`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http.client import responses
from typing import Any

import orjson
from aiohttp import web


def error_body(message: str, err_type: str, status: int, param: str | None = None) -> dict[str, Any]:
    """An error in the shape vLLM's OpenAI server answers with."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def context_length_error(max_model_len: int, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    """vLLM's 400 body when prompt + max_tokens does not fit, with its own wording (`VLLMValidationError`)."""
    total = prompt_tokens + max_tokens
    message = (
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{max_tokens} output tokens and your prompt contains at least {prompt_tokens} input tokens, "
        f"for a total of at least {total} tokens. Please reduce the length of the input prompt or the "
        f"number of requested output tokens. (parameter=input_tokens, value={prompt_tokens})"
    )
    return error_body(message, "BadRequestError", 400, "input_tokens")


def failure_body(status: int) -> dict[str, Any]:
    """The default body of a scripted `Fail`, typed the way vLLM types server and client errors."""
    err_type = "InternalServerError" if status >= 500 else "BadRequestError"
    return error_body(responses.get(status, "Error"), err_type, status)


def validation_error(location: Sequence[str], kind: str, message: str, value: Any) -> dict[str, Any]:
    """vLLM's 400 for a request FastAPI rejects before any handler runs (one pydantic error)."""
    where = ".".join(location)
    shown: Any = value
    if isinstance(value, list | tuple | dict | set):
        shown = f"<{type(value).__name__} of {len(value)} items>"
    elif isinstance(value, str) and len(value) > 200:
        shown = value[:200] + "...[truncated]"
    detail = {"type": kind, "loc": where, "msg": message, "input": shown}
    return error_body(sanitize(f"1 validation error:\n  {detail}"), "Bad Request", 400, where)


def missing_field(location: Sequence[str], body: Any) -> dict[str, Any]:
    """The validation error for a required field the body lacks."""
    return validation_error(location, "missing", "Field required", body)


ROUTE_NOT_FOUND: dict[str, Any] = {"detail": "Not Found"}
"""FastAPI's body for a path vLLM does not serve (e.g. the dev endpoints without VLLM_SERVER_DEV_MODE=1)."""
METHOD_NOT_ALLOWED: dict[str, Any] = {"detail": "Method Not Allowed"}
SCALE_OUT_DISABLED = error_body(
    "Scale-out endpoints are disabled. Restart vllm serve with --enable-scale-out to enable them.",
    "PermissionDeniedError",
    403,
)
"""vLLM's 403 on the render and token endpoints of a server started without --enable-scale-out."""

_SYSTEM_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def sanitize(message: str) -> str:
    """vLLM hides file paths in error messages: under the usual system roots, or naming a file, they
    become `<path>` (so a missing adapter under /tmp is reported as `<path>`)."""
    return _FILE_PATH.sub("<path>", _SYSTEM_PATH.sub("<path>", message)).strip()


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON answer, serialized as the server always has (orjson: compact, key order kept)."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class Refusal(Exception):
    """An HTTP error answer decided while handling a request."""

    def __init__(self, status: int, body: Mapping[str, Any] | str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> web.Response:
        """The answer: the body as JSON, or as plain text when it is a string."""
        if isinstance(self.body, str):
            return web.Response(text=self.body, status=self.status)
        return json_response(self.body, self.status)


def bad_request(message: str, param: str | None = None) -> Refusal:
    """vLLM's 400 for a request its handler rejects."""
    return Refusal(400, error_body(message, "BadRequestError", 400, param))


def invalid(location: tuple[str, ...], kind: str, message: str, value: Any) -> Refusal:
    """vLLM's 400 for a field FastAPI's validation rejects."""
    return Refusal(400, validation_error(location, kind, message, value))


def missing(location: tuple[str, ...], body: Any) -> Refusal:
    """vLLM's 400 for a required field the body lacks."""
    return Refusal(400, missing_field(location, body))


def model_not_found(model: str, aliases: Sequence[str] | None = None) -> Refusal:
    """vLLM's 404 for a model name it does not serve (nor a loaded adapter); vLLM 0.32 lists the served
    names after it (`aliases`; the scripted server's older endpoints answer without them)."""
    message = f"The model `{model}` does not exist."
    if aliases is not None:
        message += f" Valid aliases: {', '.join(aliases)}."
    return Refusal(404, error_body(message, "NotFoundError", 404, "model"))
