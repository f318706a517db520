"""The one protocol every environment follows, in-process or remote.

An environment is stateless and shared by all episodes; each episode's state is a JSON-able value
that the environment returns from `seed` and from every tool call, so the graph state (and Studio)
always holds the truth and nothing hides in the environment object.

Optional members extend the protocol without touching environments that don't need them:
`episode_tools(state, actor)`, for environments whose tools come from the task (remote: the row's
`tools`; calendar: tools switched on per task) or from the state (tictactoe: the user's free cells);
`aclose()`, for environments that hold pooled resources (remote: its HTTP session); and
`settle_user_turn(state)`, for environments that must finish what a user left undone before the
policy acts (tictactoe: a user that could not move). Call them through `episode_tools_hook`,
`close_environment` and `settle_user_turn_hook`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from sparring.tools.specs import ToolResult, ToolSpec

Actor = Literal["policy", "user", "env"]


@dataclass(slots=True)
class Verdict:
    """The score of one episode."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Environment(Protocol):
    """Per-episode state plus tools for each actor, a seed, a done signal and a verify."""

    name: str
    settings: Mapping[str, Any]
    """Run settings (EpisodeConfig fields) the environment is meant to be played with; explicit ones win."""

    def tools(self, actor: Actor) -> Sequence[ToolSpec]:
        """The tools `actor` may call (empty for none)."""
        ...

    def default_messages(self) -> list[dict[str, str]]:
        """The policy's opening messages for a task that brings none."""
        ...

    def user_persona(self, task: dict[str, Any]) -> str:
        """The simulated user's system prompt for this task."""
        ...

    async def seed(self, task: dict[str, Any]) -> Any:
        """A fresh episode state from the task's seed data."""
        ...

    def is_done(self, state: Any) -> bool:
        """Whether the episode has reached its natural end."""
        ...

    def turn_over(self, state: Any, actor: Actor) -> bool:
        """Whether `actor` has finished its turn (e.g. it moved): the graph then hands over, steps left or not."""
        ...

    async def call_tool(self, state: Any, actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool call by `actor`; bad calls come back as `ToolResult(is_error=True)`."""
        ...

    def observe(self, state: Any, actor: Actor) -> str | None:
        """An observation for `actor` at the start of its turn (e.g. the board for the user), or None."""
        ...

    async def verify(self, state: Any, messages: Sequence[Any]) -> Verdict:
        """Score the final state."""
        ...


def episode_tools_hook(env: Environment) -> Callable[[Any, Actor], Sequence[ToolSpec]] | None:
    """The environment's `episode_tools(state, actor)` when its tools depend on the task, else None."""
    return getattr(env, "episode_tools", None)


async def close_environment(env: Environment) -> None:
    """Release what the environment pools across episodes (e.g. HTTP connections), if anything."""
    aclose = getattr(env, "aclose", None)
    if aclose is not None:
        await aclose()


def settle_user_turn_hook(env: Environment) -> Callable[[Any], ToolResult | None] | None:
    """The environment's `settle_user_turn(state)`, else None.

    Called when the user's turn closes and the policy's begins: it returns None when there is
    nothing to settle, else the new state and a note for the policy (e.g. a move played for a user
    that could not make one), so the policy is never handed a position where it cannot act.
    """
    return getattr(env, "settle_user_turn", None)
