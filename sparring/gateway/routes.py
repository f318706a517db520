"""The gateway's HTTP routes: session management under `/v1/sessions`, the OpenAI surface per session.

`gateway_router(gateway)` is mounted by `sparring gateway` (its own app, `app.py`) and by
`sparring serve` (beside the rollout routes), behind the same auth, body limit and metrics. Handlers
reach the gateway through `app.state.gateway`, which the router's lifespan sets; when the server
stops, the lifespan ends open sessions as aborted (`shutdown`), so no record is lost.

`{session_id}` in every path is the session's handle, a secret only its opener gets: an agent's
OpenAI client carries it in its base URL, so an unmodified SDK works and nothing else can reach the
session. The listing shows the sessions opened with the caller's bearer token (all of them to the
operator key), a page at a time.

Errors: management routes answer `{"detail": ...}` like the rest of our HTTP service; the OpenAI
surface answers `{"error": {"message", "type", "code"}}`, the shape OpenAI SDKs read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from sparring.gateway import proxy
from sparring.gateway.errors import GatewayError, openai_error
from sparring.gateway.schemas import CreateSession, FinishSession
from sparring.gateway.sessions import Gateway
from sparring.web.auth import bearer_token, credential_id, same_secret
from sparring.web.body import BodyError, JSONRoute, json_response, load_json, unsupported_media_type

MAX_PAGE = 200
_CHAT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "An OpenAI chat-completions request; `model` is replaced by the policy model.",
                    "required": ["messages"],
                    "properties": {"messages": {"type": "array", "items": {"type": "object"}}},
                }
            }
        },
    }
}


def current_gateway(request: Request) -> Gateway:
    """The app's gateway."""
    return request.app.state.gateway  # type: ignore[no-any-return]


Current = Annotated[Gateway, Depends(current_gateway)]
management = APIRouter(tags=["gateway"], route_class=JSONRoute)
openai = APIRouter(tags=["openai"])


def gateway_router(gateway: Gateway) -> APIRouter:
    """Every gateway route, serving `gateway`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.gateway = gateway
        yield
        await gateway.aclose()

    router = APIRouter(lifespan=lifespan)
    router.include_router(management)
    router.include_router(openai)
    return router


@management.post("/v1/sessions", status_code=201, summary="Start a session")
async def create_session(
    request: Request,
    gateway: Current,
    body: Annotated[CreateSession | None, Body()] = None,
) -> Response:
    try:
        handle, session = gateway.create(body or CreateSession(), credential_id(bearer_token(request.scope)))
    except GatewayError as exc:
        raise exc.http() from None
    base_url = str(request.url_for("gateway_models", session_id=handle)).removesuffix("/models")
    return json_response(
        {
            "session_id": handle,
            "record_id": session.id,
            "base_url": base_url,
            "idle_timeout_s": session.idle_timeout_s,
            "limits": session.limits.model_dump(),
        },
        201,
    )


@management.get("/v1/sessions", summary="The caller's sessions in flight (the operator's: all), a page at a time")
async def list_sessions(
    request: Request,
    gateway: Current,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Sessions per page.")] = 50,
    cursor: Annotated[int | None, Query(ge=0, description="`next_cursor` of the previous page.")] = None,
) -> Response:
    token = bearer_token(request.scope)
    operator = same_secret(token, gateway.settings.operator_key)
    sessions, next_cursor = gateway.listing(credential_id(token), operator=operator, after=cursor, limit=limit)
    return json_response({"sessions": sessions, "next_cursor": next_cursor})


@management.get("/v1/sessions/{session_id}", summary="A session in flight, or an ended one's record")
async def show_session(session_id: str, gateway: Current) -> Response:
    try:
        return json_response(gateway.show(session_id))
    except GatewayError as exc:
        raise exc.http() from None


@management.post("/v1/sessions/{session_id}/finish", summary="Score and end; returns the record")
async def finish_session(session_id: str, body: FinishSession, gateway: Current) -> Response:
    try:
        return json_response(await gateway.finish(session_id, body))
    except GatewayError as exc:
        raise exc.http() from None


@management.delete("/v1/sessions/{session_id}", summary="Abort; returns the unscored record")
async def abort_session(session_id: str, gateway: Current) -> Response:
    try:
        return json_response(await gateway.abort(session_id))
    except GatewayError as exc:
        raise exc.http() from None


@openai.post(
    "/sessions/{session_id}/v1/chat/completions",
    name="gateway_chat",
    summary="OpenAI chat completions (streaming or not), recorded into the session",
    openapi_extra=_CHAT_BODY,
)
async def chat_completions(session_id: str, request: Request, gateway: Current) -> Response:
    refusal = unsupported_media_type(request)
    if refusal is not None:
        return openai_error(415, refusal)
    try:
        body = _chat_body(await request.body())
    except json.JSONDecodeError as exc:
        return openai_error(422, f"the request body is not valid JSON: {exc}")
    except BodyError as exc:
        return openai_error(422, str(exc))
    try:
        result = await proxy.chat(gateway, gateway.active(session_id), body)
    except GatewayError as exc:
        return exc.openai()
    if isinstance(result, tuple):
        status, content = result
        return Response(content, status_code=status, media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@openai.get("/sessions/{session_id}/v1/models", name="gateway_models", summary="The policy model")
async def list_models(session_id: str, gateway: Current) -> Response:
    try:
        status, content = await proxy.models(gateway, gateway.active(session_id))
    except GatewayError as exc:
        return exc.openai()
    return Response(content, status_code=status, media_type="application/json")


def _chat_body(raw: bytes) -> Any:
    """orjson on the hot path; what it refuses is parsed again only to say which field is wrong."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        load_json(raw)  # BodyError or JSONDecodeError naming the field, when the standard library sees it too
        raise exc from None
