"""The gateway's HTTP routes: session management under `/v1/sessions`, the OpenAI surface per session.

`gateway_router(gateway)` is mounted by `sparring gateway` (its own app, `app.py`) and by
`sparring serve` (beside the rollout routes), behind the same auth, body limit and metrics. Its
lifespan ends open sessions as aborted (`shutdown`) when the server stops, so no record is lost.

Errors: management routes answer `{"detail": ...}` like the rest of our HTTP service; the OpenAI
surface answers `{"error": {"message", "type", "code"}}`, the shape OpenAI SDKs read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Body, FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from sparring.gateway.sessions import CreateSession, FinishSession, Gateway, GatewayError

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
_ERROR_TYPES = {404: "not_found_error", 409: "conflict_error", 422: "invalid_request_error", 502: "upstream_error"}


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _openai_error(status: int, message: str) -> Response:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"), "code": status}
    return _json({"error": error}, status)


def gateway_router(gateway: Gateway) -> APIRouter:
    """Every gateway route, bound to `gateway`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await gateway.aclose()

    router = APIRouter(lifespan=lifespan)

    @router.post("/v1/sessions", status_code=201, tags=["gateway"], summary="Start a session")
    async def create_session(request: Request, body: CreateSession | None = Body(None)) -> Response:  # noqa: B008
        session = gateway.create(body or CreateSession())
        base_url = str(request.url_for("gateway_models", session_id=session.id)).removesuffix("/models")
        return _json(
            {
                "session_id": session.id,
                "base_url": base_url,
                "idle_timeout_s": session.idle_timeout_s,
                "limits": session.limits.model_dump(),
            },
            201,
        )

    @router.get("/v1/sessions", tags=["gateway"], summary="Sessions in flight")
    async def list_sessions() -> Response:
        return _json({"sessions": [s.summary() for s in gateway.sessions.values()]})

    @router.get("/v1/sessions/{session_id}", tags=["gateway"], summary="A session in flight, or an ended one's record")
    async def show_session(session_id: str) -> Response:
        try:
            return _json(gateway.show(session_id))
        except GatewayError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @router.post("/v1/sessions/{session_id}/finish", tags=["gateway"], summary="Score and end; returns the record")
    async def finish_session(session_id: str, body: FinishSession) -> Response:
        try:
            return _json(await gateway.finish(session_id, body))
        except GatewayError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @router.delete("/v1/sessions/{session_id}", tags=["gateway"], summary="Abort; returns the unscored record")
    async def abort_session(session_id: str) -> Response:
        try:
            return _json(await gateway.abort(session_id))
        except GatewayError as exc:
            raise HTTPException(exc.status, exc.message) from None

    @router.post(
        "/sessions/{session_id}/v1/chat/completions",
        name="gateway_chat",
        tags=["openai"],
        summary="OpenAI chat completions (streaming or not), recorded into the session",
        openapi_extra=_CHAT_BODY,
    )
    async def chat_completions(session_id: str, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _openai_error(422, f"the request body is not valid JSON: {exc}")
        try:
            result = await gateway.chat(session_id, body)
        except GatewayError as exc:
            return _openai_error(exc.status, exc.message)
        if isinstance(result, tuple):
            status, content = result
            return Response(content, status_code=status, media_type="application/json")
        return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @router.get("/sessions/{session_id}/v1/models", name="gateway_models", tags=["openai"], summary="The policy model")
    async def list_models(session_id: str) -> Response:
        try:
            status, content = await gateway.models(session_id)
        except GatewayError as exc:
            return _openai_error(exc.status, exc.message)
        return Response(content, status_code=status, media_type="application/json")

    return router
