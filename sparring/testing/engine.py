"""The scripted server's engine: which requests run, pausing them, pacing their tokens, weight versions.

It plays the part of vLLM's engine core for the fake server, with the same observable rules:

- a current weight version ("default" until told otherwise, as vLLM's engine starts) labels every
  token when it is generated; a choice's tokens carry it as vLLM's `weight_versions` spans;
- `pause("keep")` freezes running requests where they are, and they go on after `resume()` (a
  choice generated across a version change gets two spans); `pause("wait")` lets running requests
  finish and returns when none is left; `pause("abort")` ends every request at once, each reported
  with what it had generated and finish reason "abort"; in every mode a request that arrives while
  paused waits (vLLM queues it) until `resume()`, as does one beyond `max_num_seqs` running requests
  until a slot frees;
- tokens come one by one, paced by `token_latency_s` and/or a `TokenGate` a test opens; without
  either and while not paused, a whole reply comes in one go (the fast path benchmarks rely on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

PauseMode = Literal["abort", "wait", "keep"]
PAUSE_MODES: tuple[str, ...] = get_args(PauseMode)
DEFAULT_WEIGHT_VERSION = "default"
"""What vLLM's engine reports before any version is set (`EngineCore._weight_version`)."""
DEFAULT_MAX_MODEL_LEN = 32768
"""The scripted model's context length unless told otherwise."""
DEFAULT_KV_CACHE_TOKENS = 131072
"""Tokens the made-up KV cache holds, for the `vllm:kv_cache_usage_perc` gauge."""


class Signal:
    """Wakes every waiter whenever the engine's state changes; each waiter re-checks its own condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake all current waiters."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds (at once if it already does)."""
        while not predicate():
            await self._event.wait()


class TokenGate:
    """Lets a test step generation token by token: each generated token takes one permit.

    `allow(n)` grants n more tokens (across all requests), `open()` lets everything through from then
    on, and `passed` counts the tokens that went through. Pass it as `FakeModelServer(token_gate=...)`
    and wait with `await server.wait_until(lambda: gate.passed == n)`, never on the clock.
    """

    def __init__(self, permits: int = 0) -> None:
        self.permits = permits
        self.is_open = False
        self.passed = 0
        self._signal: Signal | None = None

    def attach(self, signal: Signal) -> None:
        """Notify `signal` (the engine's) on every change; a gate serves one server."""
        if self._signal is not None and self._signal is not signal:
            raise ValueError("this TokenGate already paces another server")
        self._signal = signal

    def allow(self, tokens: int = 1) -> None:
        """Let `tokens` more tokens through."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        self.permits += tokens
        self._changed()

    def open(self) -> None:
        """Let every token through from now on."""
        self.is_open = True
        self._changed()

    def close(self) -> None:
        """Stop letting tokens through beyond the permits left."""
        self.is_open = False
        self._changed()

    @property
    def ready(self) -> bool:
        """Whether the next token may go through."""
        return self.is_open or self.permits > 0

    def take(self) -> None:
        """Count one token through (the caller checked `ready`)."""
        if not self.is_open:
            self.permits -= 1
        self.passed += 1
        self._changed()

    def _changed(self) -> None:
        if self._signal is not None:
            self._signal.notify()


class Job:
    """One request inside the engine, from its admission to its answer."""

    __slots__ = ("aborted", "generated", "prompt_tokens", "queued", "request_id", "wake")

    def __init__(self, prompt_tokens: int, request_id: str | None) -> None:
        self.prompt_tokens = prompt_tokens
        self.request_id = request_id
        """The server's id of the request, which `/abort_requests` takes (e.g. `generate-tokens-<client id>`)."""
        self.generated = 0
        self.queued = False
        self.aborted = False
        self.wake = asyncio.Event()
        """Set to cut short whatever the job sleeps on (abort, server closing)."""


class Emitted:
    """The tokens one choice got out of the engine, their weight-version spans, and whether it was aborted."""

    __slots__ = ("aborted", "ids", "weight_versions")

    def __init__(self, ids: list[int], weight_versions: list[dict[str, Any]], aborted: bool) -> None:
        self.ids = ids
        self.weight_versions = weight_versions
        self.aborted = aborted


class ScriptedEngine:
    """Admission, pause state, token pacing and the weight version of the scripted server."""

    def __init__(
        self,
        *,
        weight_version: str = DEFAULT_WEIGHT_VERSION,
        token_latency_s: float = 0.0,
        token_gate: TokenGate | None = None,
        kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS,
        max_num_seqs: int | None = None,
    ) -> None:
        if max_num_seqs is not None and max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
        if token_latency_s < 0:
            raise ValueError(f"token_latency_s must be >= 0, got {token_latency_s}")
        if kv_cache_tokens < 1:
            raise ValueError(f"kv_cache_tokens must be >= 1, got {kv_cache_tokens}")
        self.weight_version = weight_version
        self.token_latency_s = token_latency_s
        self.token_gate = token_gate
        self.kv_cache_tokens = kv_cache_tokens
        self.max_num_seqs = max_num_seqs
        """Requests that may run at once; more wait in the queue (None: no limit)."""
        self.pause_mode: PauseMode | None = None
        self.running: set[Job] = set()
        self.queued: set[Job] = set()
        self.prefix_cache_resets = 0
        """Successful `reset_prefix_cache` calls, for tests."""
        self.closing = False
        self.signal = Signal()
        if token_gate is not None:
            token_gate.attach(self.signal)

    @property
    def is_paused(self) -> bool:
        """Whether generation is paused, in any mode (vLLM's `/is_paused`)."""
        return self.pause_mode is not None

    @property
    def kv_cache_usage(self) -> float:
        """The share of the made-up KV cache that running requests hold (prompt and generated tokens)."""
        held = sum(job.prompt_tokens + job.generated for job in self.running)
        return min(1.0, held / self.kv_cache_tokens)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is checked again after every change of state."""
        await self.signal.wait_for(predicate)

    # -- a request's life -----------------------------------------------------------------------------

    async def admit(self, prompt_tokens: int, request_id: str | None) -> Job:
        """Take a request in; it waits (queued) while generation is paused or `max_num_seqs` requests run,
        until resumed, a slot frees, or it is aborted."""
        job = Job(prompt_tokens, request_id)
        if not self._has_room():
            job.queued = True
            self.queued.add(job)
            self.signal.notify()
            await self.signal.wait_for(lambda: self._has_room() or job.aborted)
            self.queued.discard(job)
            job.queued = False
        if not job.aborted:
            self.running.add(job)
        self.signal.notify()
        return job

    def _has_room(self) -> bool:
        if self.closing:
            return True
        return self.pause_mode is None and (self.max_num_seqs is None or len(self.running) < self.max_num_seqs)

    def finish(self, job: Job) -> None:
        """The request has been answered."""
        self.running.discard(job)
        self.signal.notify()

    async def sleep(self, job: Job, seconds: float) -> None:
        """Sleep for the request, but wake at once if it is aborted or the server closes."""
        if seconds > 0 and not self.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.wake.wait(), seconds)

    async def emit(self, job: Job, ids: list[int]) -> Emitted:
        """Generate `ids` for one choice of `job`, token by token; stops early if the job is aborted."""
        gate = self.token_gate
        if job.aborted:
            return Emitted([], [], True)
        if not self.token_latency_s and gate is None and self.pause_mode != "keep":
            job.generated += len(ids)
            return Emitted(ids, [_span(self.weight_version, 0, len(ids))] if ids else [], False)
        out: list[int] = []
        spans: list[dict[str, Any]] = []
        for token_id in ids:
            await self.sleep(job, self.token_latency_s)
            await self.signal.wait_for(lambda: job.aborted or self.closing or self._may_emit())
            if job.aborted:
                break
            if gate is not None and not self.closing:
                gate.take()
            version = self.weight_version
            if spans and spans[-1]["version"] == version:
                spans[-1]["end"] += 1
            else:
                spans.append(_span(version, len(out), len(out) + 1))
            out.append(token_id)
            job.generated += 1
            self.signal.notify()  # waiters may count tokens (`job.generated`, the KV gauge)
        return Emitted(out, spans, job.aborted)

    def _may_emit(self) -> bool:
        return self.pause_mode != "keep" and (self.token_gate is None or self.token_gate.ready)

    # -- control (vLLM's dev endpoints) -----------------------------------------------------------------

    async def pause(self, mode: PauseMode) -> None:
        """Pause generation as vLLM's `/pause?mode=` does; "wait" returns once no request runs."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"Invalid pause mode: {mode}")
        self.pause_mode = mode
        if mode == "abort":
            self._abort(list(self.running) + list(self.queued))
        self.signal.notify()
        if mode == "wait":
            await self.signal.wait_for(lambda: not self.running or self.closing)

    def resume(self) -> None:
        """Resume generation: frozen requests go on and queued ones start."""
        self.pause_mode = None
        self.signal.notify()

    def abort(self, request_ids: Iterable[str] | None = None) -> int:
        """End requests at once (all of them without ids), as vLLM's `/abort_requests`; returns how many."""
        jobs = list(self.running) + list(self.queued)
        if request_ids is not None:
            wanted = set(request_ids)
            jobs = [job for job in jobs if job.request_id in wanted]
        self._abort(jobs)
        self.signal.notify()
        return len(jobs)

    def _abort(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            job.aborted = True
            job.wake.set()

    def update_weight_version(self, version: str) -> None:
        """Label the tokens generated from now on with `version`."""
        self.weight_version = version
        self.signal.notify()

    def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        """vLLM's rule: the reset fails while running requests hold cache blocks, unless told to reset them."""
        if self.running and not reset_running_requests:
            return False
        self.prefix_cache_resets += 1
        self.signal.notify()
        return True

    def close(self) -> None:
        """Let everything finish now: pauses, gates and sleeps stop holding requests back."""
        self.closing = True
        for job in self.running | self.queued:
            job.wake.set()
        self.signal.notify()


def _span(version: str, start: int, end: int) -> dict[str, Any]:
    """One of vLLM's `WeightVersionSpan`s: output tokens [start, end) were sampled by `version`."""
    return {"version": version, "start": start, "end": end}
