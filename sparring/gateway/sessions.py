"""Gateway sessions: create, finish with a reward or a verifier, abort, time out when idle.

Every session that starts ends with a recorded status and a rollout record: `completed` or
`truncated` through `finish`, `aborted` through `DELETE` (`cancelled`), the idle timeout
(`idle_timeout`) or the gateway shutting down (`shutdown`). Records are kept for `GET` (the most
recent `keep_ended` of them) and appended to the JSONL output, when there is one, as sessions end.
The calls a session takes are `proxy.py`'s.

A session is found by its handle, which only whoever opened it has (see `session.py`): anything else
is "no such session" (404), whether or not a session exists. Memory is bounded: at most
`max_sessions` open (429 past it), each with at most `max_metadata_bytes` of task and metadata and
an idle timeout of at most `max_idle_timeout_s`, and listings come a page at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sparring.core.outbound import AllowList, OutboundRefused, task_env_url
from sparring.gateway.errors import Forbidden, InvalidCall, SessionEnded, SessionNotFound, TooManySessions
from sparring.gateway.history import fingerprints, message_errors
from sparring.gateway.metrics import GatewayMetrics
from sparring.gateway.record import session_record
from sparring.gateway.schemas import CreateSession, FinishSession
from sparring.gateway.session import Outcome, Session, handle_key, new_handle
from sparring.gateway.settings import GatewaySettings
from sparring.gateway.upstream import Upstream
from sparring.gateway.verifiers import verify_session
from sparring.web.body import dumps

SERVER_ENVS = ("remote", "openenv")
"""Environments whose state names the server they talk to (`url`): a caller's `env_state` may not pick one."""


class Gateway:
    """All sessions of one gateway, in one event loop, in front of one policy endpoint."""

    def __init__(
        self, upstream: Upstream, settings: GatewaySettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.sessions: dict[bytes, Session] = {}
        """Open sessions by handle key, in the order they were opened."""
        self.ended: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self.metrics = GatewayMetrics(registry or CollectorRegistry())
        self._opened = 0
        self._reaper: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    def create(self, request: CreateSession, owner: bytes | None) -> tuple[str, Session]:
        """A new session of `owner`, pinned to the least-loaded replica, and its handle (returned only here)."""
        if len(self.sessions) >= self.settings.max_sessions:
            raise TooManySessions(
                f"the gateway has {len(self.sessions)} sessions open (--max-sessions "
                f"{self.settings.max_sessions}); finish or delete one, or retry later",
                self._retry_after(),
            )
        idle_timeout_s = request.limits.idle_timeout_s
        if idle_timeout_s is not None and idle_timeout_s > self.settings.max_idle_timeout_s:
            raise InvalidCall(
                f"limits.idle_timeout_s: must be at most {self.settings.max_idle_timeout_s:g} seconds "
                f"(--max-idle-timeout), got {idle_timeout_s:g}"
            )
        self._check_size(request.task, request.metadata, "task and metadata: together")
        handle, key = new_handle()
        self._opened += 1
        session = Session(
            key=key,
            owner=owner,
            seq=self._opened,
            task=request.task,
            metadata=request.metadata,
            limits=request.limits,
            idle_timeout_s=idle_timeout_s or self.settings.idle_timeout_s,
            task_index=request.task_index,
            repeat_index=request.repeat_index,
        )
        session.idle.set()
        self.upstream.replicas.pick_least_loaded(session.id)
        self.sessions[key] = session
        self.metrics.active.inc()
        self._ensure_reaper()
        return handle, session

    def holds(self, session: Session) -> bool:
        """Whether the session is still open here (not ended, even if finishing)."""
        return self.sessions.get(session.key) is session

    def active(self, handle: str) -> Session:
        """A session in flight; 404 if no session has this handle, 409 if it has ended or is finishing."""
        key = handle_key(handle)
        session = self.sessions.get(key)
        if session is not None and not session.closing:
            return session
        if session is not None:
            raise SessionEnded(f"session {session.id} is finishing; start a new one")
        record = self.ended.get(key)
        if record is not None:
            raise SessionEnded(f"session {record['id']} has ended; start a new one")
        raise SessionNotFound("no such session")

    def show(self, handle: str) -> dict[str, Any]:
        """A session in flight (summary) or an ended one (its record)."""
        key = handle_key(handle)
        session = self.sessions.get(key)
        if session is not None:
            return session.summary()
        record = self.ended.get(key)
        if record is None:
            raise SessionNotFound("no such session")
        return record

    def listing(
        self, caller: bytes | None, *, operator: bool, after: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the sessions in flight that `caller` opened (every one, for the operator), and the next cursor.

        A caller with no credential owns nothing it could list: only the operator sees those sessions.
        """
        page: list[Session] = []
        more = False
        for session in self.sessions.values():
            if after is not None and session.seq <= after:
                continue
            if not operator and (caller is None or session.owner != caller):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(session)
        return [s.summary() for s in page], (page[-1].seq if more else None)

    async def finish(self, handle: str, request: FinishSession) -> dict[str, Any]:
        """Score the session once its calls in flight have answered, and end it with its record."""
        session = self.active(handle)
        task = session.task
        if request.verifier is not None:
            task = self._outbound_task(request.verifier, session.task, request.env_state)
        metadata = {**session.metadata, **(request.metadata or {})}
        if request.metadata:
            self._check_size(session.task, metadata, "metadata: with it, the session's task and metadata are")
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
                verdict = await verify_session(request.verifier, task, main, request.env_state)
                reward, components, env_result, env = (
                    verdict.reward,
                    verdict.components,
                    verdict.result,
                    request.verifier,
                )
            else:
                reward = request.reward if request.reward is not None else sum(components.values())
            if not math.isfinite(reward):
                raise ValueError(f"reward: {reward} is not a finite number (the components' sum overflows)")
        except Exception as exc:
            session.closing = False  # nothing is lost: the harness may finish again, another way
            raise InvalidCall(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)) from None
        session.metadata = metadata
        if session.branches.items:
            session.branches.items[0].messages = main
        outcome: Outcome = ("truncated", session.truncation) if session.truncation else ("completed", "agent_done")
        return await self._end(
            session, outcome, reward=reward, components=components, env_result=env_result, env=env, error=None
        )

    def _outbound_task(self, verifier: str, task: dict[str, Any], env_state: Any) -> dict[str, Any]:
        """The task the verifier replays, its `env_url` resolved as the seed node does; Forbidden (403) unless
        every server the verifier would contact is one the operator allowed (core/outbound.py).

        A server-backed environment (`remote`, `openenv`) talks to its state's `url` when the caller kept
        the state, else to the task's `env_url` (the settings' `--env-url` when the task names none).
        """
        if verifier not in SERVER_ENVS:
            return task
        settings = self.settings
        try:
            if isinstance(env_state, dict) and env_state.get("url") is not None:
                AllowList([settings.env_url, *settings.allow_env_urls]).check(str(env_state["url"]), "env_state.url")
            env_url = task_env_url(task.get("env_url"), settings.env_url, settings.allow_env_urls, "task.env_url")
        except OutboundRefused as exc:
            raise Forbidden(str(exc)) from None
        return {**task, "env_url": env_url} if env_url else task

    async def abort(self, handle: str) -> dict[str, Any]:
        """End a session unscored (reward null, `cancelled`), even one that is finishing."""
        session = self.sessions.get(handle_key(handle))
        if session is None:
            self.active(handle)  # raises 404 or 409
        assert session is not None
        return await self._abort(session, "cancelled")

    async def _abort(self, session: Session, stop_reason: str, message: str | None = None) -> dict[str, Any]:
        """End a session unscored; replies still in flight reach the agent but not the record."""
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
        for session in list(self.sessions.values()):
            await self._abort(session, "shutdown", "the gateway shut down")
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
        if self.sessions.pop(session.key, None) is None:
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
        self.metrics.active.dec()
        self.metrics.ended.labels(status).inc()
        if self.settings.output is not None:
            line = dumps(record) + b"\n"
            async with self._write_lock:
                await asyncio.to_thread(_append, self.settings.output, line)
        self.ended[session.key] = record
        while len(self.ended) > self.settings.keep_ended:
            self.ended.popitem(last=False)
        return record

    def _check_size(self, task: dict[str, Any], metadata: dict[str, Any], what: str) -> None:
        """InvalidCall (422) when task and metadata, as JSON, are over `max_metadata_bytes`."""
        size = len(dumps(task)) + len(dumps(metadata))
        if size > self.settings.max_metadata_bytes:
            raise InvalidCall(
                f"{what} {size} bytes as JSON; the limit is {self.settings.max_metadata_bytes} bytes "
                "(--max-metadata-bytes)"
            )

    def _retry_after(self) -> int:
        """Seconds until the next idle session times out (and frees its room), within 1 to 300."""
        now = time.monotonic()
        waits = [s.idle_timeout_s - (now - s.last_active) for s in self.sessions.values() if not s.in_flight]
        return min(max(math.ceil(min(waits, default=self.settings.idle_timeout_s)), 1), 300)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        """End sessions idle past their timeout (no call in flight, none started for that long)."""
        while self.sessions:
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if not session.in_flight and not session.closing and now - session.last_active > session.idle_timeout_s:
                    await self._abort(session, "idle_timeout", f"no call for {session.idle_timeout_s:g} s")
            shortest = min((s.idle_timeout_s for s in self.sessions.values()), default=1.0)
            await asyncio.sleep(min(1.0, shortest / 4))


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
