"""The gateway's HTTP routes: session management under `/v1/sessions`, the OpenAI surface per session.

`gateway_router(gateway)` is mounted by `sparring gateway` (its own app, `app.py`) and by
`sparring serve` (beside the rollout routes), behind the same auth, body limit and metrics. Handlers
reach the gateway through `app.state.gateway`, which the router's lifespan sets; when the server
stops, the lifespan ends open sessions as aborted (`shutdown`), so no record is lost.

Errors: management routes answer `{"detail": ...}` like the rest of our HTTP service; the OpenAI
surface answers `{"error": {"message", "type", "code"}}`, the shape OpenAI SDKs read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from sparring.gateway import proxy
from sparring.gateway.errors import GatewayError, openai_error
from sparring.gateway.schemas import CreateSession, FinishSession
from sparring.gateway.sessions import Gateway
from sparring.web.body import BodyError, JSONRoute, json_response, load_json, unsupported_media_type

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
    session = gateway.create(body or CreateSession())
    base_url = str(request.url_for("gateway_models", session_id=session.id)).removesuffix("/models")
    return json_response(
        {
            "session_id": session.id,
            "base_url": base_url,
            "idle_timeout_s": session.idle_timeout_s,
            "limits": session.limits.model_dump(),
        },
        201,
    )


@management.get("/v1/sessions", summary="Sessions in flight")
async def list_sessions(gateway: Current) -> Response:
    return json_response({"sessions": gateway.listing()})


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
    except orjson.JSONDecodeError:
        return load_json(raw)
