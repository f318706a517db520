"""The naive reference: the same episodes on a LangGraph graph calling LangChain's `ChatOpenAI`.

Written the way a first version usually is: `add_messages` histories, `ChatOpenAI(...).bind_tools`
per role and tool_choice, a hand-written tool node, small routing functions. Same request shapes as
sparring (tools, tool_choice, `return_token_ids` and `logprobs` for the policy, X-Session-ID), the
same role-flipped user view, so the scripted server plays the same game. It is what design.md's
"7-9 ms per call" refers to. Note it does less than sparring: ChatOpenAI drops the token ids, so
there is no ledger.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages

from sparring.envs.tictactoe import TicTacToe

MAX_TURNS = 5
MAX_USER_STEPS = 2
_ids = itertools.count()


class State(TypedDict, total=False):
    """Both histories, the board and a few counters."""

    episode_id: str
    messages: Annotated[list[AnyMessage], add_messages]
    user_messages: Annotated[list[AnyMessage], add_messages]
    board: dict[str, Any]
    turn: int
    turn_start: int
    user_steps: int
    done: str | None
    reward: float | None
    num_policy_calls: int
    num_user_calls: int


class NaiveLangChainGraph:
    """Builds the graph once; `play` runs one episode."""

    name = "LangGraph + ChatOpenAI"

    def __init__(self, base_url: str) -> None:
        self.env = TicTacToe()
        tool = self.env.tools("policy")[0].to_openai()

        def model(name: str, temperature: float, max_tokens: int, **extra: Any) -> ChatOpenAI:
            return ChatOpenAI(
                base_url=base_url, api_key="x", model=name, temperature=temperature, max_tokens=max_tokens, **extra
            )

        self.policy_llm = model(
            "policy", 1.0, 512, logprobs=True, extra_body={"return_token_ids": True, "top_logprobs": 0}
        ).bind_tools([tool], tool_choice="auto")
        user_llm = model("user", 0.7, 256)
        self.user_llms = {
            "required": user_llm.bind_tools([tool], tool_choice="required"),
            "none": user_llm.bind_tools([tool], tool_choice="none"),
        }
        self.graph = self._build()

    def _build(self) -> Any:
        env = self.env

        async def seed(state: State) -> dict[str, Any]:
            board = await env.seed({})
            opening = env.default_messages()
            return {
                "board": board,
                "messages": [
                    SystemMessage(opening[0]["content"]),
                    HumanMessage(opening[1]["content"] + "\n\n" + (env.observe(board, "policy") or "")),
                ],
                "user_messages": [SystemMessage(env.user_persona({})), AIMessage(opening[1]["content"])],
                "turn": 0,
                "turn_start": 2,
                "user_steps": 0,
                "done": None,
                "num_policy_calls": 0,
                "num_user_calls": 0,
            }

        async def policy(state: State) -> dict[str, Any]:
            reply = await self.policy_llm.ainvoke(
                state["messages"], extra_headers={"X-Session-ID": state["episode_id"]}
            )
            return {
                "messages": [reply],
                "turn": state["turn"] + 1,
                "turn_start": len(state["messages"]),
                "num_policy_calls": state["num_policy_calls"] + 1,
            }

        async def run_tools(state: State, actor: Literal["policy", "user"]) -> dict[str, Any]:
            key = "messages" if actor == "policy" else "user_messages"
            board = state["board"]
            results = []
            for call in state[key][-1].tool_calls:
                result = await env.call_tool(board, actor, call["name"], call["args"])
                board = result.state
                results.append(ToolMessage(result.content, tool_call_id=call["id"], name=call["name"]))
            return {key: results, "board": board, "done": "env_done" if env.is_done(board) else None}

        async def policy_tools(state: State) -> dict[str, Any]:
            return await run_tools(state, "policy")

        async def user_tools(state: State) -> dict[str, Any]:
            return await run_tools(state, "user")

        async def user(state: State) -> dict[str, Any]:
            shown: list[AnyMessage] = []
            if state["user_steps"] == 0:
                turn = state["messages"][state["turn_start"] :]
                parts = [m.content for m in turn if isinstance(m, AIMessage) and m.content]
                parts.append(env.observe(state["board"], "user") or "")
                shown = [HumanMessage("\n\n".join(parts))]
            step = state["user_steps"] + 1
            llm = self.user_llms["none" if step >= MAX_USER_STEPS else "required"]
            reply = await llm.ainvoke(
                [*state["user_messages"], *shown], extra_headers={"X-Session-ID": state["episode_id"]}
            )
            update: dict[str, Any] = {
                "user_messages": [*shown, reply],
                "user_steps": step,
                "num_user_calls": state["num_user_calls"] + 1,
            }
            if not reply.tool_calls:
                delivered: list[AnyMessage] = [HumanMessage(reply.content)] if reply.content else []
                if state["turn"] < MAX_TURNS:
                    delivered.append(HumanMessage(env.observe(state["board"], "policy") or ""))
                update.update(messages=delivered, user_steps=0)
            return update

        async def verify(state: State) -> dict[str, Any]:
            verdict = await env.verify(state["board"], state["messages"])
            return {"reward": verdict.reward}

        def after_policy(state: State) -> Literal["policy_tools", "user"]:
            return "policy_tools" if state["messages"][-1].tool_calls else "user"

        def after_tools(state: State) -> Literal["verify", "user"]:
            return "verify" if state["done"] else "user"

        def after_user(state: State) -> Literal["user_tools", "policy", "verify"]:
            if state["user_messages"][-1].tool_calls:
                return "user_tools"
            return "policy" if state["turn"] < MAX_TURNS else "verify"

        graph = StateGraph(State)
        graph.add_node("seed", seed)
        graph.add_node("policy", policy)
        graph.add_node("policy_tools", policy_tools)
        graph.add_node("user", user)
        graph.add_node("user_tools", user_tools)
        graph.add_node("verify", verify)
        graph.add_edge(START, "seed")
        graph.add_edge("seed", "policy")
        graph.add_conditional_edges("policy", after_policy)
        graph.add_conditional_edges("policy_tools", after_tools)
        graph.add_conditional_edges("user", after_user)
        graph.add_conditional_edges("user_tools", after_tools)
        graph.add_edge("verify", END)
        return graph.compile()

    async def start(self) -> None:
        """Nothing to open: ChatOpenAI owns its pooled httpx client."""

    async def close(self) -> None:
        """Close the OpenAI SDK's pooled httpx clients."""
        for llm in (self.policy_llm, *self.user_llms.values()):
            client = llm.bound.root_async_client  # type: ignore[attr-defined]
            if client is not None:
                await client.close()

    async def play(self) -> dict[str, Any]:
        """One episode; returns the fields the benchmark checks."""
        state = await self.graph.ainvoke({"episode_id": f"lc-{next(_ids)}"}, {"recursion_limit": 200})
        return {
            "status": "completed" if state["done"] else "truncated",
            "stop_reason": state["done"] or "max_turns",
            "reward": state["reward"],
            "num_policy_calls": state["num_policy_calls"],
            "num_user_calls": state["num_user_calls"],
        }
