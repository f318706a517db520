"""The episode state: everything an episode knows, explicit, so Studio and checkpoints see the truth.

Two histories are kept: `messages` is the policy's view (what it is trained on), `user_messages` is
the simulated user's role-flipped view (its persona as system prompt, the policy's replies as `user`
messages, its own as `assistant`, its own tool calls and results). Both only grow, and so does
`ledger`: one immutable entry per policy call (core/ledger.py). Nodes return updates and never
change a value they were given, so every checkpoint holds exactly its own step's state.
"""

from __future__ import annotations

import operator
from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic (Studio's schemas) needs it on Python < 3.12
)

from langchain_core.messages import AnyMessage
from pydantic import WithJsonSchema
from typing_extensions import TypedDict

from sparring.core.attribution import Attribution
from sparring.core.ledger import LedgerEntry
from sparring.core.task import TASK_JSON_SCHEMA

Status = Literal["completed", "truncated", "aborted"]


class HumanToolCall(TypedDict):
    """A tool call typed by a person: the tool's name and its arguments."""

    name: str
    arguments: dict[str, Any]


class HumanTurn(TypedDict, total=False):
    """A person's step in place of the user model: words, or tool calls (then words at the next pause)."""

    content: str
    tool_calls: list[HumanToolCall]


class EpisodeInput(TypedDict, total=False):
    """What a run starts from: one task row, and optionally the episode's id."""

    task: Annotated[dict[str, Any], WithJsonSchema(TASK_JSON_SCHEMA)]
    episode_id: str


class Limits(TypedDict):
    """The episode's limits: the run's settings with the task's own overrides applied."""

    max_turns: int
    max_steps_per_turn: int
    max_user_steps_per_turn: int
    user_stop_tokens: list[str]
    user_tool_choice: str
    policy_tool_choice: str
    user_words_after_move: bool


class Sampling(TypedDict, total=False):
    """What one role's calls send besides the messages: temperature, top_p, max_tokens, stop."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: list[str]


class EpisodeState(TypedDict):
    """The whole episode. What `seed` sets is required (nodes after it rely on it); the rest comes later."""

    task: dict[str, Any]
    episode_id: str
    limits: Limits
    sampling: dict[str, Sampling]
    messages: Annotated[list[AnyMessage], operator.add]
    user_messages: Annotated[list[AnyMessage], operator.add]
    env_state: Any
    turn: int
    turn_start: int
    policy_steps: int
    user_steps: int
    turn_over: bool
    # Who holds the turn; "policy" once the user's turn was handed over (nodes/handover.py), read by the routers.
    turn_holder: Literal["policy", "user"]
    num_policy_calls: int
    num_user_calls: int
    ledger: Annotated[list[LedgerEntry], operator.add]
    usage: dict[str, dict[str, int]]
    model_s: float
    tool_s: float
    started_at: float
    status: Status | None
    stop_reason: str | None
    error: dict[str, str] | None
    wall_s: NotRequired[float]
    reward: NotRequired[float | None]
    reward_components: NotRequired[dict[str, float]]
    env_result: NotRequired[dict[str, Any]]
    attribution: NotRequired[Attribution | None]
    """Who made the episode fail, with the reasons (core/attribution.py); set by verify."""
    weight_version: NotRequired[str | None]  # the policy's weight version sparring was told when the episode ended
    # Set by a person while the run is paused before `user` (Studio); the user node plays it instead of
    # calling the user model, and clears it. Text, or a HumanTurn with tool calls.
    human_turn: NotRequired[str | HumanTurn | None]
