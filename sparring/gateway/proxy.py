"""The OpenAI surface of a session: each chat call goes to the policy server and its exact tokens into the ledger.

A non-streamed reply is checked and recorded before the agent gets it. A stream is relayed event by
event as it arrives and recorded at `[DONE]`, before `[DONE]` goes out, so the branch is free before
the agent can send its next call.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from sparring.core.errors import ModelUnavailable
from sparring.gateway.branches import Branch
from sparring.gateway.calls import Added, Answer, BadCall, StreamReader, prepare, take_reply
from sparring.gateway.errors import InvalidCall, SessionEnded, UpstreamFailed
from sparring.gateway.history import Fingerprint, fingerprint, fingerprints
from sparring.gateway.session import Session
from sparring.gateway.sessions import Gateway
from sparring.gateway.sse import DONE, EventSplitter, data_event, event_data
from sparring.models.client import CONTEXT_LENGTH_MARKERS

Request = tuple[list[dict[str, Any]], tuple[Fingerprint, ...]]


async def models(gateway: Gateway, session: Session) -> tuple[int, bytes]:
    """The policy server's model list, from the session's replica."""
    try:
        return await gateway.upstream.get("/models", session.id)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise UpstreamFailed(f"the policy server did not answer /models: {exc!r}") from None


async def chat(gateway: Gateway, session: Session, body: Any) -> tuple[int, bytes] | AsyncIterator[bytes]:
    """One chat completion: (status, body) as the agent gets it, or the agent's event stream."""
    limit = session.limits.max_calls
    if limit is not None and session.num_calls >= limit:
        session.truncation = session.truncation or "max_calls"
        gateway.metrics.calls.labels("rejected").inc()
        raise SessionEnded(f"session {session.id} reached its limit of {limit} calls; finish it")
    try:
        upstream_body, added = prepare(
            body, gateway.settings.model, gateway.settings.sampling, session.limits.max_tokens_per_call
        )
    except BadCall as exc:
        gateway.metrics.calls.labels("rejected").inc()
        raise InvalidCall(str(exc)) from None
    messages = body["messages"]
    prints = fingerprints(messages)
    session.num_calls += 1
    call = session.num_calls
    branch = session.branches.assign(prints)
    session.in_flight += 1
    session.idle.clear()
    session.last_active = time.monotonic()
    payload = orjson.dumps(upstream_body)
    started = time.perf_counter()
    if upstream_body.get("stream"):
        return await _open_stream(gateway, session, branch, call, (messages, prints), payload, added, started)
    try:
        async with gateway.upstream.post("/chat/completions", payload, session.id) as response:
            raw = await response.read()
            status = response.status
        latency = time.perf_counter() - started
    except ModelUnavailable as exc:
        _call_done(session, branch)
        gateway.metrics.calls.labels("upstream_error").inc()
        raise UpstreamFailed(str(exc)) from None
    except BaseException:
        _call_done(session, branch)
        raise
    try:
        if status != 200:
            _note_refusal(gateway, session, raw)
            return status, raw
        data = orjson.loads(raw)
        answer = take_reply(data, added)
        problem = _record(gateway, session, branch, call, (messages, prints), answer, latency, stream=False)
        if problem:
            raise UpstreamFailed(f"the reply cannot be recorded exactly: {problem}")
        return status, orjson.dumps(data)
    finally:
        _call_done(session, branch)


async def _open_stream(
    gateway: Gateway,
    session: Session,
    branch: Branch,
    call: int,
    request: Request,
    payload: bytes,
    added: Added,
    started: float,
) -> tuple[int, bytes] | AsyncIterator[bytes]:
    stack = contextlib.AsyncExitStack()
    try:
        response = await stack.enter_async_context(
            gateway.upstream.post("/chat/completions", payload, session.id, stream=True)
        )
        if response.status != 200:
            raw = await response.read()
            _note_refusal(gateway, session, raw)
            await stack.aclose()
            _call_done(session, branch)
            return response.status, raw
    except ModelUnavailable as exc:
        await stack.aclose()
        _call_done(session, branch)
        gateway.metrics.calls.labels("upstream_error").inc()
        raise UpstreamFailed(str(exc)) from None
    except BaseException:
        await stack.aclose()
        _call_done(session, branch)
        raise
    if response.content_type != "text/event-stream":
        # A 200 that is not a stream would relay as an empty one: the agent would get nothing and no error.
        await stack.aclose()
        reason = f"the policy server answered a streaming request with {response.content_type!r}, not an event stream"
        _unrecorded(gateway, session, call, reason)
        _call_done(session, branch)
        raise UpstreamFailed(reason)

    async def relay() -> AsyncIterator[bytes]:
        """Forward the events as they come, one write per network read; record the call at `[DONE]`.

        A stream the policy server ends before `[DONE]` ends with an error event, which OpenAI SDKs raise.
        """
        reader = StreamReader(added)
        splitter = EventSplitter()
        settled = False
        try:
            async for piece in response.content.iter_any():
                out = []
                for event in splitter.feed(piece):
                    data = event_data(event)
                    if data is None:
                        out.append(event + b"\n\n")
                        continue
                    if data == DONE and not settled:
                        answer, elapsed = reader.answer(), time.perf_counter() - started
                        _record(gateway, session, branch, call, request, answer, elapsed, stream=True)
                        _call_done(session, branch)
                        settled = True
                    forwarded = reader.event(data)
                    if forwarded is not None:
                        out.append(data_event(forwarded))
                if out:
                    yield b"".join(out)
            if not settled:
                message = "the policy server ended the stream before [DONE]; the reply is incomplete"
                yield data_event(orjson.dumps({"error": {"message": message, "type": "upstream_error", "code": 502}}))
        finally:
            await stack.aclose()
            if not settled:
                _unrecorded(gateway, session, call, "the stream ended before [DONE]")
                _call_done(session, branch)

    return relay()


def _record(
    gateway: Gateway,
    session: Session,
    branch: Branch,
    call: int,
    request: Request,
    answer: Answer,
    latency: float,
    *,
    stream: bool,
) -> str | None:
    """Put an answered call into its branches' ledgers; the reason when it cannot be recorded exactly."""
    if not gateway.holds(session):
        return None  # aborted meanwhile: the record is written already
    problem = answer.token_problem()
    if problem:
        _unrecorded(gateway, session, call, problem)
        return problem
    prompt_ids = answer.prompt_ids
    assert prompt_ids is not None
    for choice in answer.choices:
        target = branch if choice.index == answer.choices[0].index else session.branches.fork(branch, call)
        assert choice.token_ids is not None
        session.branches.record(
            target,
            request,
            (choice.message, fingerprint(choice.message)),
            (prompt_ids, choice.token_ids, choice.logprobs, choice.finish_reason),
            {"call": call, "choice": choice.index, "latency_s": round(latency, 6), "stream": stream},
        )
        session.completion_tokens += len(choice.token_ids)
        gateway.metrics.tokens.inc(len(choice.token_ids))
    session.prompt_tokens += len(prompt_ids)
    session.model_s += latency
    gateway.metrics.calls.labels("recorded").inc()
    return None


def _unrecorded(gateway: Gateway, session: Session, call: int, reason: str) -> None:
    """A call that reached the policy server but not the ledger: listed in the record with why."""
    if gateway.holds(session):
        session.unrecorded.append({"call": call, "reason": reason})
        gateway.metrics.calls.labels("unrecorded").inc()


def _note_refusal(gateway: Gateway, session: Session, raw: bytes) -> None:
    """A 4xx goes back to the agent as it is; a full context truncates the session."""
    gateway.metrics.calls.labels("upstream_error").inc()
    if any(marker in raw.decode("utf-8", "replace").lower() for marker in CONTEXT_LENGTH_MARKERS):
        session.truncation = session.truncation or "context_length"


def _call_done(session: Session, branch: Branch) -> None:
    session.branches.release(branch)
    session.in_flight -= 1
    session.last_active = time.monotonic()
    if not session.in_flight:
        session.idle.set()
