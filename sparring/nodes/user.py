"""user: the simulated user's step, on its own role-flipped view, with its own tools and stop tokens."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from sparring.core.errors import ContextLengthExceeded, ModelCallError
from sparring.core.messages import assistant_message, raw_tool_calls, to_wire_list
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.handover import hand_over
from sparring.nodes.human import human_reply
from sparring.nodes.outcome import add_usage, call_id_prefix, ended
from sparring.tools.parsing import adopt_text_calls

NOTHING_SHOWN = "(The assistant has not replied yet.)"


async def user(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """One user model call; its text (stop tokens removed) becomes the policy's next user message."""
    _, client = deps.clients.clients(runtime.context)
    limits = state["limits"]
    step = state["user_steps"] + 1
    shown = [] if state["user_steps"] else shown_of_policy_turn(state, deps)
    human_turn = state.get("human_turn")
    if human_turn is not None:  # a person plays this step (Studio, nodes/human.py)
        reply, text = human_reply(human_turn, f"human_{len(state['user_messages'])}")
        update = {"human_turn": None, "user_steps": step, "user_messages": [*shown, reply], "turn_holder": "user"}
        return update if raw_tool_calls(reply) else {**update, **deliver_text(state, text, deps)}
    if step >= limits["max_user_steps_per_turn"] or (step > 1 and state["turn_over"]):
        tool_choice = "none"  # the user's turn ends in words: its steps ran out, or it has moved
    else:
        tool_choice = limits["user_tool_choice"] if step == 1 else "auto"
    update: dict[str, Any] = {"user_steps": step, "turn_holder": "user"}
    tools = deps.tools_for("user", state["env_state"])
    try:
        completion = await client.chat(
            to_wire_list([*state["user_messages"], *shown]),
            episode_id=state["episode_id"],
            sampling=state["sampling"]["user"],
            tools=tools.wire,
            tool_choice=tool_choice,
        )
    except ContextLengthExceeded as exc:
        return {**update, "user_messages": shown, **ended("truncated", "context_length", exc)}
    except ModelCallError as exc:
        return {**update, "user_messages": shown, **ended("aborted", "model_error", exc)}
    update["num_user_calls"] = state["num_user_calls"] + 1  # answered calls only, as for the policy
    completion.text = cut_at_first(completion.text, runtime.context.user_stop_strings)
    if tool_choice != "none":
        completion.text, completion.tool_calls = adopt_text_calls(
            completion.text, completion.tool_calls, tools.names, call_id_prefix(state, "user")
        )
    update["usage"] = add_usage(state, "user", completion.prompt_tokens, completion.completion_tokens)
    update["model_s"] = state["model_s"] + completion.latency_s
    reply = assistant_message(completion.text, completion.tool_calls, {"finish_reason": completion.finish_reason})
    update["user_messages"] = [*shown, reply]
    if completion.tool_calls:
        return update
    return {**update, **deliver_text(state, completion.text, deps)}


def cut_at_first(text: str, markers: list[str]) -> str:
    """The text before the first marker (template tokens a server that ignores `stop` let through)."""
    cut = min((i for marker in markers if marker and (i := text.find(marker)) >= 0), default=len(text))
    return text[:cut]


def shown_of_policy_turn(state: EpisodeState, deps: EpisodeDeps) -> list[BaseMessage]:
    """The message that shows the user the policy's turn; none when there is nothing to show and the
    opening already left the user something to answer (a placeholder there makes small models stop)."""
    seen = policy_turn_for_user(state, deps)
    if seen == NOTHING_SHOWN and isinstance(state["user_messages"][-1], HumanMessage):
        return []
    return [HumanMessage(content=seen)]


def policy_turn_for_user(state: EpisodeState, deps: EpisodeDeps) -> str:
    """What the user sees of the policy's turn: its visible replies, then the environment's observation."""
    parts = [
        m.content
        for m in state["messages"][state["turn_start"] :]
        if isinstance(m, AIMessage) and isinstance(m.content, str) and m.content.strip()
    ]
    observation = deps.env.observe(state["env_state"], "user")
    if observation:
        parts.append(observation)
    return "\n\n".join(parts) or NOTHING_SHOWN


def deliver_text(state: EpisodeState, text: str, deps: EpisodeDeps) -> dict[str, Any]:
    """Pass the user's text to the policy and hand the turn over, or end the episode on a stop token or silence.

    A stop token before the policy has said anything ends nothing (small user models echo the stop
    token of their instructions in their first message); it is removed, and the rest is delivered.
    """
    stop_tokens = [token for token in state["limits"]["user_stop_tokens"] if token]
    stopped = state["num_policy_calls"] > 0 and any(token in text for token in stop_tokens)
    visible = text
    for token in stop_tokens:
        visible = visible.replace(token, "")
    visible = visible.strip()
    delivered = [HumanMessage(content=visible)] if visible else []
    if stopped:
        return {"messages": delivered, **ended("completed", "user_stop")}
    if not visible:
        return ended("truncated", "user_empty")
    return hand_over(state, deps, state["env_state"], delivered)
