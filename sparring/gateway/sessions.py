"""Gateway sessions: create, take calls, finish with a reward or a verifier, abort, time out when idle.

Every session that starts ends with a recorded status and a rollout record: `completed` or
`truncated` through `finish`, `aborted` through `DELETE` (`cancelled`), the idle timeout
(`idle_timeout`) or the gateway shutting down (`shutdown`). Records are kept for `GET` (the most
recent `keep_ended` of them) and appended to the JSONL output, when there is one, as sessions end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sparring.core.errors import ModelUnavailable
from sparring.gateway.branches import Branch, Branches
from sparring.gateway.calls import Added, Answer, BadCall, StreamReader, prepare, take_reply
from sparring.gateway.history import Fingerprint, fingerprint, fingerprints, message_errors
from sparring.gateway.record import session_record
from sparring.gateway.upstream import Upstream
from sparring.gateway.verifiers import verify_session
from sparring.models.client import CONTEXT_LENGTH_MARKERS


class SessionLimits(BaseModel):
    """Per-session limits; unset ones fall back to the gateway's settings."""

    model_config = ConfigDict(extra="forbid")

    max_calls: int | None = Field(default=None, ge=1, description="Model calls the session may make; more get 409.")
    max_tokens_per_call: int | None = Field(default=None, ge=1, description="Cap on each call's max_tokens.")
    idle_timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds without calls before the session aborts."
    )


class CreateSession(BaseModel):
    """`POST /v1/sessions`: everything optional."""

    model_config = ConfigDict(extra="forbid")

    task: dict[str, Any] = Field(default_factory=dict, description="The task row (its `id`, `env_seed`, ...).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Kept in the record as is.")
    limits: SessionLimits = Field(default_factory=SessionLimits)
    # `default=` by name: pyright reads a field's default only from that keyword (dataclass_transform).
    task_index: int | None = Field(default=None, ge=0)
    repeat_index: int = Field(default=0, ge=0)


class FinishSession(BaseModel):
    """`POST /v1/sessions/{id}/finish`: a reward, reward components (summed), or an environment's verifier."""

    model_config = ConfigDict(extra="forbid")

    reward: float | None = None
    reward_components: dict[str, float] | None = None
    verifier: str | None = Field(None, description="An environment whose verifier scores the session.")
    env_state: Any = Field(None, description="The environment's final state for the verifier (else replayed).")
    env_result: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = Field(None, description="Merged into the session's metadata.")
    messages: list[dict[str, Any]] | None = Field(
        None,
        description="The agent's final history: the session's own (last request and reply) plus what came after "
        "it, e.g. the tool results of the last move, which no model call saw. The tail joins the record.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> FinishSession:
        given = self.reward is not None or self.reward_components is not None
        if given == (self.verifier is not None):
            raise ValueError("give a reward (and/or reward_components) or a verifier, exactly one of the two")
        if self.env_state is not None and self.verifier is None:
            raise ValueError("env_state is read by a verifier only; name one")
        return self


class GatewayError(Exception):
    """An answer other than 200, with the status it is given."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(GatewayError):
    status = 404


class SessionEnded(GatewayError):
    status = 409


class InvalidCall(GatewayError):
    status = 422


class UpstreamFailed(GatewayError):
    status = 502


@dataclass(slots=True)
class Session:
    """One agent run in flight."""

    id: str
    task: dict[str, Any]
    metadata: dict[str, Any]
    limits: SessionLimits
    idle_timeout_s: float
    task_index: int | None
    repeat_index: int
    created_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    branches: Branches = field(default_factory=Branches)
    num_calls: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_s: float = 0.0
    truncation: str | None = None
    unrecorded: list[dict[str, Any]] = field(default_factory=list)
    closing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(self) -> dict[str, Any]:
        """What `GET /v1/sessions/{id}` shows of a session in flight."""
        now = time.monotonic()
        return {
            "session_id": self.id,
            "status": "finishing" if self.closing else "active",
            "created_at": self.created_at,
            "idle_s": round(now - self.last_active, 3) if not self.in_flight else 0.0,
            "idle_timeout_s": self.idle_timeout_s,
            "num_calls": self.num_calls,
            "in_flight": self.in_flight,
            "branches": len(self.branches.items),
            "prefix_mismatches": sum(b.ledger()["prefix_mismatches"] for b in self.branches.items),
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "truncation": self.truncation,
            "unrecorded_calls": len(self.unrecorded),
            "task": self.task,
            "metadata": self.metadata,
            "limits": self.limits.model_dump(),
        }


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway treats sessions and what it adds to each call."""

    model: str
    sampling: dict[str, Any] = field(default_factory=dict)
    """Defaults for what an agent's request leaves unset (temperature, top_p, max_tokens)."""
    idle_timeout_s: float = 600.0
    keep_ended: int = 1000
    output: Path | None = None


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge("sparring_gateway_sessions_active", "Gateway sessions in flight.", registry=registry)
        self.ended = Counter(
            "sparring_gateway_sessions_ended", "Gateway sessions ended, by status.", ["status"], registry=registry
        )
        self.calls = Counter(
            "sparring_gateway_calls",
            "Chat calls through the gateway, by result (recorded, unrecorded, rejected, upstream_error).",
            ["result"],
            registry=registry,
        )
        self.tokens = Counter(
            "sparring_gateway_completion_tokens", "Sampled tokens recorded into ledgers.", registry=registry
        )


Outcome = tuple[Literal["completed", "truncated", "aborted"], str]


class Gateway:
    """All sessions of one gateway, in one event loop, in front of one policy endpoint."""

    def __init__(
        self, upstream: Upstream, settings: GatewaySettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.metrics = _Metrics(registry or CollectorRegistry())
        self._reaper: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------

    def create(self, request: CreateSession) -> Session:
        """A new session, pinned to the least-loaded replica."""
        session = Session(
            id=uuid.uuid4().hex,
            task=request.task,
            metadata=request.metadata,
            limits=request.limits,
            idle_timeout_s=request.limits.idle_timeout_s or self.settings.idle_timeout_s,
            task_index=request.task_index,
            repeat_index=request.repeat_index,
        )
        session.idle.set()
        self.upstream.replicas.pick_least_loaded(session.id)
        self.sessions[session.id] = session
        self.metrics.active.inc()
        self._ensure_reaper()
        return session

    def active(self, session_id: str) -> Session:
        """A session in flight; 404 if unknown, 409 if it has ended or is finishing."""
        session = self.sessions.get(session_id)
        if session is not None and not session.closing:
            return session
        if session is not None or session_id in self.ended:
            raise SessionEnded(f"session {session_id} has ended; start a new one")
        raise SessionNotFound(f"no session {session_id}")

    def show(self, session_id: str) -> dict[str, Any]:
        """A session in flight (summary) or an ended one (its record)."""
        session = self.sessions.get(session_id)
        if session is not None:
            return session.summary()
        record = self.ended.get(session_id)
        if record is None:
            raise SessionNotFound(f"no session {session_id}")
        return record

    async def finish(self, session_id: str, request: FinishSession) -> dict[str, Any]:
        """Score the session once its calls in flight have answered, and end it with its record."""
        session = self.active(session_id)
        session.closing = True
        try:
            await session.idle.wait()
            main = session.branches.items[0].messages if session.branches.items else []
            if request.messages is not None:
                main = _extended(main, request.messages)
            components = dict(request.reward_components or {})
            env_result = dict(request.env_result or {})
            env = None
            if request.verifier is not None:
                verdict = await verify_session(request.verifier, session.task, main, request.env_state)
                reward, components, env_result, env = (
                    verdict.reward,
                    verdict.components,
                    verdict.result,
                    request.verifier,
                )
            else:
                reward = request.reward if request.reward is not None else sum(components.values())
        except Exception as exc:
            session.closing = False  # nothing is lost: the harness may finish again, another way
            raise InvalidCall(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)) from None
        session.metadata.update(request.metadata or {})
        if session.branches.items:
            session.branches.items[0].messages = main
        outcome: Outcome = ("truncated", session.truncation) if session.truncation else ("completed", "agent_done")
        return await self._end(
            session, outcome, reward=reward, components=components, env_result=env_result, env=env, error=None
        )

    async def abort(
        self, session_id: str, stop_reason: str = "cancelled", message: str | None = None
    ) -> dict[str, Any]:
        """End a session unscored (reward null); replies still in flight reach the agent but not the record."""
        session = self.sessions.get(session_id)
        if session is None:
            self.active(session_id)  # raises 404 or 409
        assert session is not None
        error = {"type": stop_reason, "message": message or f"session {stop_reason.replace('_', ' ')}"}
        return await self._end(
            session, ("aborted", stop_reason), reward=None, components={}, env_result={}, error=error
        )

    async def aclose(self) -> None:
        """Stop the idle reaper, end every open session as aborted (`shutdown`), close the pool."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for session_id in list(self.sessions):
            await self.abort(session_id, "shutdown", "the gateway shut down")
        await self.upstream.aclose()

    async def _end(
        self,
        session: Session,
        outcome: Outcome,
        *,
        reward: float | None,
        components: dict[str, float],
        env_result: dict[str, Any],
        error: dict[str, Any] | None,
        env: str | None = None,
    ) -> dict[str, Any]:
        if self.sessions.pop(session.id, None) is None:
            raise SessionEnded(f"session {session.id} has ended; start a new one")
        session.closing = True
        self.upstream.replicas.release(session.id)
        status, stop_reason = outcome
        record = session_record(
            session,
            status=status,
            stop_reason=stop_reason,
            reward=reward,
            reward_components=components,
            env_result=env_result,
            env=env or session.task.get("env") or "gateway",
            error=error,
        )
        self.ended[session.id] = record
        while len(self.ended) > self.settings.keep_ended:
            self.ended.popitem(last=False)
        self.metrics.active.dec()
        self.metrics.ended.labels(status).inc()
        if self.settings.output is not None:
            line = orjson.dumps(record) + b"\n"
            async with self._write_lock:
                await asyncio.to_thread(_append, self.settings.output, line)
        return record

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        """End sessions idle past their timeout (no call in flight, none started for that long)."""
        while self.sessions:
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.in_flight and not session.closing and now - session.last_active > session.idle_timeout_s:
                    await self.abort(session.id, "idle_timeout", f"no call for {session.idle_timeout_s:g} s")
            shortest = min((s.idle_timeout_s for s in self.sessions.values()), default=1.0)
            await asyncio.sleep(min(1.0, shortest / 4))

    # -- the OpenAI surface -----------------------------------------------------------------------------

    async def models(self, session_id: str) -> tuple[int, bytes]:
        """The policy server's model list, from the session's replica."""
        self.active(session_id)
        try:
            return await self.upstream.get("/models", session_id)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamFailed(f"the policy server did not answer /models: {exc!r}") from None

    async def chat(self, session_id: str, body: Any) -> tuple[int, bytes] | AsyncIterator[bytes]:
        """One chat completion: (status, body) as the agent gets it, or the agent's event stream."""
        session = self.active(session_id)
        limit = session.limits.max_calls
        if limit is not None and session.num_calls >= limit:
            session.truncation = session.truncation or "max_calls"
            self.metrics.calls.labels("rejected").inc()
            raise SessionEnded(f"session {session_id} reached its limit of {limit} calls; finish it")
        try:
            upstream_body, added = prepare(
                body, self.settings.model, self.settings.sampling, session.limits.max_tokens_per_call
            )
        except BadCall as exc:
            self.metrics.calls.labels("rejected").inc()
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
            return await self._open_stream(session, branch, call, (messages, prints), payload, added, started)
        try:
            async with self.upstream.post("/chat/completions", payload, session_id) as response:
                raw = await response.read()
                status = response.status
            latency = time.perf_counter() - started
        except ModelUnavailable as exc:
            self._call_done(session, branch)
            self.metrics.calls.labels("upstream_error").inc()
            raise UpstreamFailed(str(exc)) from None
        except BaseException:
            self._call_done(session, branch)
            raise
        try:
            if status != 200:
                self._note_refusal(session, raw)
                return status, raw
            data = orjson.loads(raw)
            answer = take_reply(data, added)
            problem = self._record(session, branch, call, (messages, prints), answer, latency, stream=False)
            if problem:
                raise UpstreamFailed(f"the reply cannot be recorded exactly: {problem}")
            return status, orjson.dumps(data)
        finally:
            self._call_done(session, branch)

    async def _open_stream(
        self,
        session: Session,
        branch: Branch,
        call: int,
        request: tuple[list[dict[str, Any]], tuple[Fingerprint, ...]],
        payload: bytes,
        added: Added,
        started: float,
    ) -> tuple[int, bytes] | AsyncIterator[bytes]:
        stack = contextlib.AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                self.upstream.post("/chat/completions", payload, session.id, stream=True)
            )
            if response.status != 200:
                raw = await response.read()
                self._note_refusal(session, raw)
                await stack.aclose()
                self._call_done(session, branch)
                return response.status, raw
        except ModelUnavailable as exc:
            await stack.aclose()
            self._call_done(session, branch)
            self.metrics.calls.labels("upstream_error").inc()
            raise UpstreamFailed(str(exc)) from None
        except BaseException:
            await stack.aclose()
            self._call_done(session, branch)
            raise

        async def relay() -> AsyncIterator[bytes]:
            """Forward the events as they come, one write per network read; record the call at `[DONE]`.

            Recording before `[DONE]` goes out frees the branch before the agent can send its next call.
            """
            reader = StreamReader(added)
            settled = False
            try:
                buffer = b""
                async for piece in response.content.iter_any():
                    buffer += piece
                    out = []
                    while (end := buffer.find(b"\n\n")) != -1:
                        event, buffer = buffer[:end], buffer[end + 2 :]
                        if not event.startswith(b"data:"):
                            out.append(event + b"\n\n")
                            continue
                        data = event[5:].lstrip()
                        if data == b"[DONE]" and not settled:
                            answer, elapsed = reader.answer(), time.perf_counter() - started
                            self._record(session, branch, call, request, answer, elapsed, stream=True)
                            self._call_done(session, branch)
                            settled = True
                        forwarded = reader.event(data)
                        if forwarded is not None:
                            out.append(b"data: " + forwarded + b"\n\n")
                    if out:
                        yield b"".join(out)
            finally:
                await stack.aclose()
                if not settled:
                    if session.id in self.sessions:
                        session.unrecorded.append({"call": call, "reason": "the stream ended before [DONE]"})
                        self.metrics.calls.labels("unrecorded").inc()
                    self._call_done(session, branch)

        return relay()

    def _record(
        self,
        session: Session,
        branch: Branch,
        call: int,
        request: tuple[list[dict[str, Any]], tuple[Fingerprint, ...]],
        answer: Answer,
        latency: float,
        *,
        stream: bool,
    ) -> str | None:
        """Put an answered call into its branches' ledgers; the reason when it cannot be recorded exactly."""
        if session.id not in self.sessions:
            return None  # aborted meanwhile: the record is written already
        problem = answer.token_problem()
        if problem:
            session.unrecorded.append({"call": call, "reason": problem})
            self.metrics.calls.labels("unrecorded").inc()
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
            self.metrics.tokens.inc(len(choice.token_ids))
        session.prompt_tokens += len(prompt_ids)
        session.model_s += latency
        self.metrics.calls.labels("recorded").inc()
        return None

    def _note_refusal(self, session: Session, raw: bytes) -> None:
        """A 4xx goes back to the agent as it is; a full context truncates the session."""
        self.metrics.calls.labels("upstream_error").inc()
        if any(marker in raw.decode("utf-8", "replace").lower() for marker in CONTEXT_LENGTH_MARKERS):
            session.truncation = session.truncation or "context_length"

    def _call_done(self, session: Session, branch: Branch) -> None:
        session.branches.release(branch)
        session.in_flight -= 1
        session.last_active = time.monotonic()
        if not session.in_flight:
            session.idle.set()


def _extended(recorded: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded history plus the tail of `given`, which must start with it (compared as fingerprints)."""
    problem = message_errors(given)
    if problem:
        raise ValueError(problem)
    mine, theirs = fingerprints(recorded), fingerprints(given)
    for index, (a, b) in enumerate(zip(mine, theirs, strict=False)):
        if a != b:
            raise ValueError(f"messages[{index}]: differs from the session's history (its last call and reply)")
    if len(theirs) < len(mine):
        raise ValueError(f"messages: {len(theirs)} messages, fewer than the {len(mine)} the session recorded")
    return [*recorded, *given[len(recorded) :]]


def _append(path: Path, line: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(line)
