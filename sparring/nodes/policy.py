"""policy: one call of the model being trained, its exact tokens written into the ledger."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from sparring.core.errors import ContextLengthExceeded, ModelCallError, StaleEpisode
from sparring.core.ledger import call_span, ledger_entry, segment_ids
from sparring.core.messages import assistant_message, to_wire, to_wire_list
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeState
from sparring.core.versions import STALE, ledger_staleness
from sparring.models.client import Completion, ModelClient
from sparring.models.tito import PromptRenderer, ServerRenderer, TokenizerUnavailable
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.outcome import add_usage, call_id_prefix, ended, length_stop_reason
from sparring.tools.constraints import cached_tool_call_constraint
from sparring.tools.parsing import adopt_text_calls, parse_reply


async def policy(state: EpisodeState, runtime: Runtime[EpisodeSettings], *, deps: EpisodeDeps) -> dict[str, Any]:
    """Call the policy on its view of the conversation; a full context or a dead server ends the episode."""
    client, _ = deps.clients.clients(runtime.context)
    stale = staleness_problem(state, runtime.context.max_staleness, client.control.version)
    if stale is not None:
        return ended("aborted", STALE, StaleEpisode(stale))
    starts_turn = state["policy_steps"] == 0
    update: dict[str, Any] = {"policy_steps": state["policy_steps"] + 1}
    if starts_turn:
        update["turn"] = state["turn"] + 1
    tokenizer = runtime.context.policy_tokenizer
    token_mode = runtime.context.token_mode
    tools = deps.tools_for("policy", state["env_state"])
    current: list[int] | None = None  # the current segment's ids, when tito has built them already
    try:
        if token_mode == "tito" or (token_mode == "auto" and tokenizer):
            constraint = cached_tool_call_constraint(tools.key, tools.wire, state["limits"]["policy_tool_choice"])
            renderer: PromptRenderer
            if tokenizer:
                renderer = await deps.renderer(tokenizer, tools)
            else:  # the server renders: the tail is cut after the token the last completion ended with
                last = state["ledger"][-1]["completion_ids"][-1:] if state["ledger"] else []
                end_of_turn = last[0] if last else None
                renderer = ServerRenderer(client, tools.wire, episode_id=state["episode_id"], end_of_turn=end_of_turn)
            current = segment_ids(state["ledger"])
            completion = await call_tokens_in_tokens_out(state, client, renderer, tools.names, current, constraint)
        else:
            completion = await client.chat(
                to_wire_list(state["messages"]),
                episode_id=state["episode_id"],
                sampling=state["sampling"]["policy"],
                tools=tools.wire,
                tool_choice=state["limits"]["policy_tool_choice"],
            )
            completion.text, completion.tool_calls = adopt_text_calls(
                completion.text, completion.tool_calls, tools.names, call_id_prefix(state, "policy")
            )
    except ContextLengthExceeded as exc:  # refused, not answered: not counted in num_policy_calls
        return {**update, **ended("truncated", "context_length", exc)}
    except (ModelCallError, TokenizerUnavailable) as exc:
        return {**update, **ended("aborted", "model_error", exc)}
    update["num_policy_calls"] = state["num_policy_calls"] + 1  # answered calls only (a reply to record)
    return {**update, **record_completion(state, completion, current)}


def staleness_problem(state: EpisodeState, bound: int | None, current: str | None) -> str | None:
    """Why the episode's tokens are too old to go on (`max_staleness`), or None."""
    if bound is None or not state["ledger"]:
        return None
    lag = ledger_staleness((entry.get("weight_versions") for entry in state["ledger"]), current)
    if lag is None or lag <= bound:
        return None
    return f"the oldest policy token is {lag} weight versions behind the current one ({current}); max_staleness {bound}"


async def call_tokens_in_tokens_out(
    state: EpisodeState,
    client: ModelClient,
    renderer: PromptRenderer,
    tool_names: frozenset[str],
    current: list[int],
    constraint: dict[str, Any] | None = None,
) -> Completion:
    """Send the current segment's ids plus the new tail; read the tool calls out of the generated text.

    `constraint` (tools/constraints.py) makes vLLM keep tool calls to the tools' schemas.
    """
    messages = state["messages"]
    if not state["ledger"]:
        prompt = await renderer.first_prompt(to_wire_list(messages))
    else:
        last = max(i for i, m in enumerate(messages) if isinstance(m, AIMessage))
        tail = await renderer.tail(to_wire(messages[last]), to_wire_list(messages[last + 1 :]))
        prompt = current + tail
    completion = await client.complete_tokens(
        prompt, episode_id=state["episode_id"], sampling=state["sampling"]["policy"], structured_outputs=constraint
    )
    parsed = parse_reply(completion.text, tool_names, call_id_prefix(state, "policy"))
    completion.text, completion.tool_calls = parsed.text, parsed.tool_calls
    return completion


def record_completion(state: EpisodeState, completion: Completion, current: list[int] | None = None) -> dict[str, Any]:
    """The state update for one policy reply: the message, the ledger entry, usage and timing.

    `current` is the current segment's ids when the caller has them (else the ledger builds them).
    """
    metadata: dict[str, Any] = {"finish_reason": completion.finish_reason}
    update: dict[str, Any] = {}
    if completion.completion_token_ids is not None:
        entry = ledger_entry(
            state["ledger"],
            completion.prompt_token_ids or [],
            completion.completion_token_ids,
            completion.completion_logprobs or [],
            completion.finish_reason,
            current,
            weight_versions=completion.weight_versions,
            resumed=completion.resumed,
        )
        metadata["token_span"] = call_span(entry)
        update["ledger"] = [entry]
    cut = completion.finish_reason == "length"
    message = assistant_message(completion.text, [] if cut else completion.tool_calls, metadata)
    update |= {
        "messages": [message],
        "usage": add_usage(state, "policy", completion.prompt_tokens, completion.completion_tokens),
        "model_s": state["model_s"] + completion.latency_s,
    }
    if cut:
        update.update(ended("truncated", length_stop_reason(completion.completion_tokens, completion.max_tokens)))
    return update
