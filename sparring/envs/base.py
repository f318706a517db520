"""The one Environment base class: an environment writes only what it changes.

An environment is stateless and shared by all episodes; each episode's state is a JSON-able value
that the environment returns from `seed` and from every tool call, so the graph state (and Studio)
always holds the truth and nothing hides in the environment object.

Only `name` and `verify` have no default. Everything else defaults to the plainest episode: no
tools, no opening, no observations, the episode never ends by itself (the user or the limits end
it), a turn ends when its actor replies in words. Override what differs:
- `tools(actor)`, or `episode_tools(state, actor)` when the tools depend on the task or the state
  (remote: the row's tools; calendar: tools switched on per task; tic-tac-toe: the user's free
  cells). Return the same sequence object for the same tools (memoise it): the nodes cache the
  tools' wire form by that object.
- `settle_user_turn(state)` when the environment must finish what a user left undone before the
  policy acts (tic-tac-toe: a user that could not move).
- `aclose()` for resources pooled across episodes (remote: its HTTP session).
- `open_episode(task, episode_id)` and `close_episode(episode_id)` when an episode holds something
  that cannot live in its JSON state (openenv: the server's WebSocket session): keep it in a table
  keyed by the episode id, keep only the key in the state, and release it in `close_episode`, which
  is called once the episode is over however it ended (verified, aborted, crashed or cancelled).
- `follow_result(state, result)` when scoring a conversation that ran elsewhere (a NeMo Gym rollout,
  an agent behind the gateway) must read more from a tool result than the replayed call gives.
- `attribution_rules(task, state)` to add the environment's own checks of who made an episode fail
  (core/attribution.py), name the persona text its user may say word for word, or set the reward of a
  success; `judge_prompt(task)` to tell the optional LLM judge what this environment's user must do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from sparring.core.attribution import AttributionRules
from sparring.tools.specs import ToolResult, ToolSpec

Actor = Literal["policy", "user", "env"]

DEFAULT_USER_PERSONA = (
    "You are a user talking to an AI assistant. Ask for what you need in plain words, one thing at a time, "
    "and answer its questions. When you are done, write ###STOP###."
)

DEFAULT_JUDGE_PROMPT = (
    "The simulated user plays a person talking to the assistant, following its own instructions (below). "
    "The user is at fault when it broke that role: it spoke as the assistant, never said what it wanted, "
    "changed or abandoned its request, invented facts it was not given, repeated itself instead of answering, "
    "or ended the conversation before its request was done or refused. A tool is at fault when it failed on "
    "its own (an internal error, not a refusal of a bad call). Otherwise the assistant is at fault: a good "
    "assistant would have succeeded with this user."
)
"""What a user's fault is, when the environment says nothing more specific (`Environment.judge_prompt`)."""


@dataclass(slots=True)
class Verdict:
    """The score of one episode."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


class Environment:
    """Per-episode state plus tools for each actor, a seed, a done signal and a verify."""

    name: ClassVar[str]
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Run settings (EpisodeSettings fields) the environment is meant to be played with; explicit ones win."""

    def tools(self, actor: Actor) -> Sequence[ToolSpec]:
        """The tools `actor` may call (empty for none)."""
        return ()

    def episode_tools(self, state: Any, actor: Actor) -> Sequence[ToolSpec]:
        """The tools `actor` may call in this episode, now; by default its fixed `tools`."""
        return self.tools(actor)

    def default_messages(self) -> list[dict[str, Any]]:
        """The policy's opening messages for a task that brings none."""
        return []

    def user_persona(self, task: dict[str, Any]) -> str:
        """The simulated user's system prompt for this task: the task's own, else a generic user."""
        return task.get("user_persona") or DEFAULT_USER_PERSONA

    async def seed(self, task: dict[str, Any]) -> Any:
        """A fresh episode state from the task's seed data; `SeedError` for a seed that cannot be played."""
        return dict(task.get("env_seed") or {})

    async def open_episode(self, task: dict[str, Any], episode_id: str) -> Any:
        """The state episode `episode_id` starts from; by default `seed(task)`, which holds nothing outside it.

        Raise `SeedError` for a task that cannot be played (invalid_task), `EnvServerError` for a server
        that cannot start it (env_error).
        """
        return await self.seed(task)

    async def close_episode(self, episode_id: str) -> None:
        """Release what `open_episode` holds for `episode_id`; idempotent, and never raises."""

    def is_done(self, state: Any) -> bool:
        """Whether the episode has reached its natural end (asked after every tool step)."""
        return False

    def turn_over(self, state: Any, actor: Actor) -> bool:
        """Whether `actor` has finished its turn (e.g. it moved): the graph then hands over, steps left or not."""
        return False

    async def call_tool(self, state: Any, actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool call by `actor`; bad calls come back as `ToolResult(is_error=True)`, never raise."""
        return ToolResult(content=f"Error: {actor} has no tool {name!r}", state=state, is_error=True)

    def observe(self, state: Any, actor: Actor) -> str | None:
        """An observation for `actor` at the start of its turn (e.g. the board), or None."""
        return None

    def settle_user_turn(self, state: Any) -> ToolResult | None:
        """Called when the user's turn closes: None when there is nothing to settle, else the new state and a
        note for the policy (e.g. a move played for a user that could not make one)."""
        return None

    def follow_result(self, state: Any, result: str) -> Any:
        """Replaying a conversation someone else ran (scoring it): the state after a tool result its actor
        saw, when the result shows more than the replayed call did (tic-tac-toe: the opponent's reply on
        the board). Raise `ReplayError` for a result that cannot follow. Default: nothing more to follow."""
        return state

    async def verify(self, state: Any, messages: Sequence[Any]) -> Verdict:
        """Score the final state."""
        raise NotImplementedError(f"environment {self.name!r} must define verify()")

    def attribution_rules(self, task: dict[str, Any], state: Any) -> AttributionRules:
        """What attribution should know about this task (asked at verify, for episodes that were not aborted):
        the environment's own checks, the persona text its user may say word for word, the reward of a
        success. Default: the built-in checks alone, on a 0..1 reward."""
        return AttributionRules()

    def judge_prompt(self, task: dict[str, Any]) -> str:
        """The optional LLM judge's instructions for this task: what the simulated user must do here and what
        counts as its fault. sparring adds the user's persona, the outcome, the transcript and the answer form."""
        return DEFAULT_JUDGE_PROMPT

    async def aclose(self) -> None:
        """Release what the environment pools across episodes (e.g. HTTP connections)."""

    @classmethod
    def tools_vary(cls) -> bool:
        """Whether `episode_tools` is the environment's own (tools per episode), not the fixed `tools`."""
        return cls.episode_tools is not Environment.episode_tools
