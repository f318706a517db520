"""The policy's seat taken by an outside client: sparring's own episode, whose policy calls wait for it.

`sparring env-serve` (an OpenEnv server) and the OpenEnv harness session play sparring's
environments for a client that is itself the policy (a trainer's model behind OpenEnv's client,
TRL, NeMo Gym's adapter). Everything else runs as in any episode, through the Engine and its graph:
the simulated user (a model endpoint of the server's), the environment's tools, its settlements and
observations, the limits, verify, and the record.

The Engine's pool hands the graph a `PolicyBridge` as the policy's model client; each policy call
goes to the episode's `Seat`, which passes the policy's view and tools to the client and waits for
its action: a tool call (`act`), or words for the user (`say`, offered to the client as the tool
`send_message`, since OpenEnv has no channel for text). The client then gets what the policy would
see next: the tool's result, the user's reply, the environment's notes, and at the end the record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson
from langchain_core.messages import AIMessage, ToolMessage

from sparring.core.errors import ModelCallError
from sparring.core.messages import ToolCall, from_wire
from sparring.core.settings import EpisodeSettings
from sparring.engine.engine import Engine
from sparring.envs.base import Verdict
from sparring.models.client import Completion, ModelClient
from sparring.models.generation import GenerationControl
from sparring.models.pool import ClientPool
from sparring.tools.specs import ToolSpec

SAY = ToolSpec(
    name="send_message",
    description="Say something to the user; this ends your turn, and the user's reply comes back.",
    parameters={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "What you say to the user."}},
        "required": ["text"],
        "additionalProperties": False,
    },
)


CANCELLED: dict[str, Any] = {}
"""The event of an episode cancelled before its end (compared by identity)."""


@dataclass(slots=True)
class PolicyCall:
    """One policy call of the graph, waiting for the client: the policy's view, its tools, the reply to give."""

    messages: list[dict[str, Any]]
    tools: list[ToolSpec]
    reply: asyncio.Future[Completion]


@dataclass(slots=True)
class Progress:
    """What the client sees after an action: the policy's new messages, its next tools, or the episode's record."""

    messages: list[dict[str, Any]]
    tools: list[ToolSpec] = field(default_factory=list)
    record: dict[str, Any] | None = None
    tool_error: bool = False
    """Whether the action was a tool call whose result is a tool error (unknown tool, bad arguments, refused)."""


class Seat:
    """One episode whose policy is the client: `start`, then `act` or `say` until `record` is set."""

    def __init__(self, engine: Engine, bridge: PolicyBridge, env: str, task: dict[str, Any], episode_id: str) -> None:
        self.engine, self.bridge, self.env, self.task, self.episode_id = engine, bridge, env, task, episode_id
        self.record: dict[str, Any] | None = None
        self.env_state: Any = None
        self.view: list[dict[str, Any]] = []
        """The policy's view so far (chat-completions form), as the client has been shown it."""
        self._events: asyncio.Queue[PolicyCall | dict[str, Any]] = asyncio.Queue()
        self._pending: PolicyCall | None = None
        self._statuses: dict[str, str] = {}
        self._calls = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def tools(self) -> list[ToolSpec]:
        """What the client may call now: the environment's policy tools and `send_message`; none once over."""
        return [*self._pending.tools, SAY] if self._pending is not None else []

    async def start(self) -> Progress:
        """Play the episode up to the policy's first call (seed, and the user's turn if it speaks first)."""
        self._loop = asyncio.get_running_loop()
        self.bridge.seats[self.episode_id] = self
        self._task = asyncio.create_task(self._play())
        return await self._next()

    async def act(self, name: str, arguments: dict[str, Any]) -> Progress:
        """The policy calls one tool; the graph checks and runs it as it would a model's call."""
        self._calls += 1
        call_id = f"client_{self._calls}"
        call = ToolCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode())
        progress = await self._answer(Completion("", [call], "tool_calls", 0, 0))
        progress.tool_error = self._statuses.get(call_id) == "error"
        return progress

    async def say(self, text: str) -> Progress:
        """The policy replies in words, which ends its turn: the user answers (or ends the episode)."""
        return await self._answer(Completion(text, [], "stop", 0, 0))

    async def score_now(self, final_text: str | None = None) -> Verdict:
        """The verdict on the state as the client left it, then the episode is cancelled.

        For a client that stops before the episode's end: OpenEnv's harness ends a rollout when its model
        stops calling tools, and its last words (`final_text`) reach the verifier, not the user.
        """
        messages = [from_wire(message) for message in self.view]
        if final_text:
            messages.append(AIMessage(content=final_text))
        try:
            return await self.engine.environment(self.env).verify(self.env_state, messages)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """End the episode now (the client went away); safe from any thread."""
        if self._task is not None and self._loop is not None and not self._task.done():
            self._loop.call_soon_threadsafe(self._task.cancel)

    async def policy_call(self, messages: list[dict[str, Any]], tools: list[ToolSpec]) -> Completion:
        """From the graph's policy node (through the bridge): wait for the client's action."""
        reply: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._events.put_nowait(PolicyCall(messages, tools, reply))
        return await reply

    async def _answer(self, completion: Completion) -> Progress:
        if self._pending is None:
            raise EpisodeOver("the episode is over" if self.record is not None else "no episode: reset first")
        pending, self._pending = self._pending, None
        self.view = [*pending.messages, _assistant(completion)]
        pending.reply.set_result(completion)
        return await self._next()

    async def _next(self) -> Progress:
        """The next event: the policy's next call (its view grew by what it now sees), or the episode's end."""
        event = await self._events.get()
        if event is CANCELLED:
            raise EpisodeOver("the episode was cancelled")
        seen = len(self.view)
        if isinstance(event, PolicyCall):
            self._pending, self.view = event, event.messages
            return Progress(event.messages[seen:], self.tools)
        self.record = event
        self.view = [{k: v for k, v in m.items() if k != "actor"} for m in event["messages"]]
        return Progress(self.view[seen:], record=event)

    async def _play(self) -> None:
        try:
            record = await self.engine.play(self.task, env=self.env, episode_id=self.episode_id, on_update=self._saw)
        except asyncio.CancelledError:
            self._events.put_nowait(CANCELLED)  # an action still waiting hears of it
            raise
        finally:
            self.bridge.seats.pop(self.episode_id, None)
        self._events.put_nowait(record)

    def _saw(self, node: str, update: dict[str, Any]) -> None:
        """Keep what the client cannot read off the messages: the environment's state, tool results' status."""
        if "env_state" in update:
            self.env_state = update["env_state"]
        for message in update.get("messages") or ():
            if isinstance(message, ToolMessage):
                self._statuses[message.tool_call_id] = message.status


class EpisodeOver(RuntimeError):
    """An action for an episode that has ended, or was never started."""


class PolicyBridge:
    """The policy's model client of an engine whose policy is outside: each call goes to its episode's seat."""

    def __init__(self) -> None:
        self.seats: dict[str, Seat] = {}
        self.control = GenerationControl()  # never closed, no adapter, no version: the policy's weights are not ours

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        episode_id: str,
        sampling: dict[str, Any],
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
    ) -> Completion:
        """Wait for the client holding `episode_id`'s seat (ModelCallError, an aborted episode, when none does)."""
        seat = self.seats.get(episode_id)
        if seat is None:
            raise ModelCallError(f"episode {episode_id}: no client holds the policy's seat")
        return await seat.policy_call(messages, [_spec(tool) for tool in tools or ()])


class BridgedClients(ClientPool):
    """The engine's clients: the bridge as the policy's, real model clients for the user."""

    def __init__(self, bridge: PolicyBridge) -> None:
        super().__init__()
        self.bridge = bridge

    def clients(self, settings: EpisodeSettings) -> tuple[ModelClient, ModelClient]:
        _, user = super().clients(settings)
        return self.bridge, user  # type: ignore[return-value]  # it answers chat(), the only call in chat mode


def serving_engine(env: str, settings: EpisodeSettings) -> tuple[Engine, PolicyBridge]:
    """An engine playing `env` with the policy's seat open to clients (chat token mode: no tokens to take)."""
    bridge = PolicyBridge()
    chat = replace(settings, token_mode="chat", policy_tokenizer=None)
    return Engine(chat, env=env, clients=BridgedClients(bridge)), bridge


T = TypeVar("T")
_background: asyncio.AbstractEventLoop | None = None
_starting = threading.Lock()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on sparring's one background event loop (a daemon thread) and wait for its result.

    For sync callers (NeMo Gym's OpenEnv adapter, OpenEnv's harness): their episodes all live on this
    one loop across calls, as the engine's pooled connections need.
    """
    global _background
    with _starting:
        if _background is None:
            _background = asyncio.new_event_loop()
            threading.Thread(target=_background.run_forever, name="sparring-envserve", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coroutine, _background).result()


def _spec(tool: dict[str, Any]) -> ToolSpec:
    function = tool["function"]
    return ToolSpec(function["name"], function.get("description") or "", function.get("parameters") or {})


def _assistant(completion: Completion) -> dict[str, Any]:
    """The policy's message as the graph records it (the view's next entry, before anything answers it)."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text or None}
    if completion.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ]
    return message
