"""The episode graph: the single source of truth every face (CLI, HTTP, Studio, notebooks) runs.

    START -> seed -> policy (or user, when the opening leaves the user to speak first)
    policy       --tool calls------------------> policy_tools
    policy       --reply ends the turn---------> user
    policy       --context full / failure------> verify
    policy_tools --env done--------------------> verify
    policy_tools --steps left, turn not over---> policy
    policy_tools --no steps left / turn over---> user
    user         --tool calls (its own move)---> user_tools
    user         --hand over (its words)-------> policy
    user         --stop token / silence / max turns / failure--> verify
    user_tools   --env done--------------------> verify
    user_tools   --steps left------------------> user
    user_tools   --hand over (no steps left, or moved)--> policy (or verify at max turns)
    verify -> END

The hand-over is explicit: the node that closes the user's turn records it (`turn_holder`,
nodes/handover.py), the routers read it, and the drawn edges carry the label "hand over".

Nodes decide and record (status, counters); routing functions only read state. They are plain
functions run through `Route`: LangGraph would run a sync path function in a worker thread and trace
an async one as a callback run of its own, and either cost more than the decision (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal, TypeAlias, get_args, get_type_hints

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer

from sparring.core.messages import raw_tool_calls
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeInput, EpisodeState
from sparring.envs.base import Environment
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.policy import policy
from sparring.nodes.seed import seed
from sparring.nodes.tools import run_tools
from sparring.nodes.user import user
from sparring.nodes.verify import verify


class Route(Runnable[EpisodeState, str]):
    """A routing function run as it is.

    LangGraph wraps a bare path function in a traced runnable (a callback run per decision) and runs a
    sync one in a worker thread; either cost more than the decision itself (bench/README.md). The
    targets are passed from the function's `Literal` return type, so the drawing stays exact.
    """

    def __init__(self, decide: Callable[[EpisodeState], str]) -> None:
        self.decide = decide
        self.name = decide.__name__

    def invoke(self, input: EpisodeState, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return self.decide(input)

    async def ainvoke(self, input: EpisodeState, config: RunnableConfig | None = None, **kwargs: Any) -> str:
        return self.decide(input)


HAND_OVER = "hand over"
EpisodeGraph: TypeAlias = CompiledStateGraph[EpisodeState, EpisodeSettings, EpisodeInput, EpisodeState]
"""The compiled episode graph: its state, its runtime context (the settings), its input, its output."""

NODE_OF_LABEL = {HAND_OVER: "policy"}
"""Route results that name a step rather than a node: the edge is drawn with the label, to the node."""

# Far above any real episode: our own limits (turns, steps) end episodes, never LangGraph's counter.
RECURSION_LIMIT = 100_000


def build_graph(
    env: Environment,
    deps: EpisodeDeps | None = None,
    *,
    checkpointer: Checkpointer = None,
    context_schema: type[EpisodeSettings] = EpisodeSettings,
) -> EpisodeGraph:
    """The compiled episode graph for one environment; settings come per run as the runtime context.

    No checkpointer by default (a rollout needs none; Studio brings its own); pass one to keep every step.
    `context_schema` may be a subclass with other defaults (Studio's settings form shows them).
    """
    deps = deps or EpisodeDeps(env)
    graph = StateGraph(EpisodeState, context_schema=context_schema, input_schema=EpisodeInput)
    graph.add_node("seed", partial(seed, deps=deps))
    graph.add_node("policy", partial(policy, deps=deps))
    graph.add_node("policy_tools", partial(run_tools, deps=deps, actor="policy"))
    graph.add_node("user", partial(user, deps=deps))
    graph.add_node("user_tools", partial(run_tools, deps=deps, actor="user"))
    graph.add_node("verify", partial(verify, deps=deps))

    graph.add_edge(START, "seed")
    for source, route in (
        ("seed", route_after_seed),
        ("policy", route_after_policy),
        ("policy_tools", route_after_policy_tools),
        ("user", route_after_user),
        ("user_tools", route_after_user_tools),
    ):
        labels: tuple[str, ...] = get_args(get_type_hints(route)["return"])
        graph.add_conditional_edges(source, Route(route), {label: NODE_OF_LABEL.get(label, label) for label in labels})
    graph.add_edge("verify", END)
    compiled = graph.compile(checkpointer=checkpointer, name=f"sparring-{env.name}")
    return compiled.with_config(recursion_limit=RECURSION_LIMIT)


def route_after_seed(state: EpisodeState) -> Literal["policy", "user", "verify"]:
    """The policy answers the opening; with no user message yet, the user speaks first."""
    if state["status"]:
        return "verify"
    if isinstance(state["messages"][-1], (HumanMessage, ToolMessage)):
        return "policy"
    return "user"


def route_after_policy(state: EpisodeState) -> Literal["policy_tools", "user", "verify"]:
    """Tool calls are executed; a plain reply ends the policy's turn; a full context or failure ends the episode."""
    if state["status"]:
        return "verify"
    if raw_tool_calls(state["messages"][-1]):
        return "policy_tools"
    return "user"


def route_after_policy_tools(state: EpisodeState) -> Literal["verify", "policy", "user"]:
    """The environment is asked after every tool step: done ends the episode, a finished turn hands over."""
    if state["status"]:
        return "verify"
    if state["policy_steps"] < state["limits"]["max_steps_per_turn"] and not state["turn_over"]:
        return "policy"
    return "user"


def route_after_user(state: EpisodeState) -> Literal["user_tools", "hand over", "verify"]:
    """The user's own tool calls run first; its words hand the turn over, unless they ended the episode."""
    if state["status"]:
        return "verify"
    if raw_tool_calls(state["user_messages"][-1]):
        return "user_tools"
    return HAND_OVER


def route_after_user_tools(state: EpisodeState) -> Literal["verify", "user", "hand over"]:
    """Done ends the episode; a turn the tool node handed over goes to the policy; else the user goes on."""
    if state["status"]:
        return "verify"
    if state["turn_holder"] == "policy":
        return HAND_OVER
    return "user"
