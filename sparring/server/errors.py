"""How the rollout service answers what is not a record: its error statuses, their bodies, and their OpenAPI entries.

Every error body is `{"detail": ...}`: a string for 401/403/413/415/429/503, FastAPI's list of
`{type, loc, msg}` for 422 (a request's own fields named; inputs echoed only when small).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from sparring.core.outbound import OutboundRefused
from sparring.server.gate import Overloaded
from sparring.server.schemas import BatchSummaryLine
from sparring.server.service import ShuttingDown
from sparring.server.streams import ClientGone
from sparring.web.body import json_response, validation_error

_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong bearer token (when the server has an API key).", **_ERROR},
    413: {"description": "Request body over --max-body-bytes.", **_ERROR},
    415: {"description": "The body is not JSON (its Content-Type).", **_ERROR},
    429: {"description": "No room: episodes running and queued are at their bounds; see Retry-After.", **_ERROR},
    503: {"description": "The server is shutting down.", **_ERROR},
}
ENV_URL_REFUSED: dict[int | str, dict[str, Any]] = {
    403: {"description": "A task names an env_url the operator did not allow; nothing was sent to it.", **_ERROR}
}


def unprocessable(loc: list[str | int], message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, so clients parse every validation error alike."""
    return HTTPException(status_code=422, detail=[{"type": "value_error", "loc": loc, "msg": message}])


def install(app: FastAPI) -> None:
    """The service's exception handlers, and its error bodies in the OpenAPI schema."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ShuttingDown, _shutting_down)
    app.add_exception_handler(OutboundRefused, _outbound_refused)
    app.add_exception_handler(ClientGone, _client_gone)
    _document_errors(app)


async def _overloaded(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Overloaded)
    return json_response({"detail": str(exc)}, 429, {"Retry-After": str(exc.retry_after_s)})


async def _shutting_down(request: Request, exc: Exception) -> Response:
    return json_response({"detail": str(exc)}, 503, {"Retry-After": "5"})


async def _outbound_refused(request: Request, exc: Exception) -> Response:
    return json_response({"detail": str(exc)}, 403)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the metrics do


def _document_errors(app: FastAPI) -> None:
    """Add the `{"detail": "..."}` error body and the batch summary line to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["HTTPError"] = {
            "type": "object",
            "properties": {"detail": {"title": "Detail"}},
            "required": ["detail"],
            "title": "HTTPError",
        }
        line = BatchSummaryLine.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(line.pop("$defs", {}))
        components["BatchSummaryLine"] = line
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
