"""A LangGraph ReAct agent on langchain-openai's ChatOpenAI plays tic-tac-toe through the sparring gateway.

The agent is ordinary LangGraph: a model node (ChatOpenAI with a `make_move` tool bound), LangGraph's
prebuilt ToolNode, and a loop between them. Turning its runs into training data takes three lines,
marked GATEWAY below: open a session, point ChatOpenAI at the session's base URL, finish the session.

    .venv/bin/sparring gateway &                       # in front of `sparring models up`'s vLLM
    .venv/bin/python examples/langgraph_agent.py --gateway http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any, Literal

import httpx
from langchain_core.messages import HumanMessage, convert_to_openai_messages
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.errors import GraphRecursionError
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from tictactoe_tools import Game


def build_agent(llm: ChatOpenAI, game: Game, tool_choice: str = "auto") -> CompiledStateGraph:
    """model -> tools -> model ... until the model answers in words or the game is over."""

    @tool
    async def make_move(position: int) -> str:
        """Place your X on an empty cell. Positions are 0-8, row by row: 0 1 2 / 3 4 5 / 6 7 8."""
        return await game.move(position)

    model = llm.bind_tools([make_move], tool_choice=tool_choice, strict=True)

    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def after_agent(state: MessagesState) -> Literal["tools", "__end__"]:
        return "tools" if state["messages"][-1].tool_calls else END

    def after_tools(state: MessagesState) -> Literal["agent", "__end__"]:
        return END if game.over else "agent"

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([make_move]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", after_agent)
    graph.add_conditional_edges("tools", after_tools)
    return graph.compile()


async def play(
    gateway: str,
    *,
    api_key: str | None = None,
    task: dict[str, Any] | None = None,
    turns: int = 5,
    steps_per_turn: int = 3,
    tool_choice: str = "auto",
    stream: bool = False,
) -> dict[str, Any]:
    """One game through the gateway; the rollout record the gateway made of it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=600) as http:
        session = (await http.post("/v1/sessions", json={"task": task or {}})).raise_for_status().json()  # GATEWAY
        key = api_key or "unused"
        llm = ChatOpenAI(base_url=session["base_url"], api_key=key, model="policy", streaming=stream)  # GATEWAY
        game = Game()
        agent = build_agent(llm, game, tool_choice)
        messages: list[Any] = await game.start(task)
        limit = {"recursion_limit": 2 * steps_per_turn + 1}
        for _ in range(turns):
            try:
                async for state in agent.astream({"messages": messages}, limit, stream_mode="values"):
                    messages = state["messages"]
            except GraphRecursionError:
                break  # the model kept calling tools without finishing the game: stop here, score what happened
            if game.over:
                break
            messages = [*messages, HumanMessage("Your move.")]
        # The final history (with the last move's result, which no model call saw) lets the verifier replay the game.
        done = {"verifier": "tictactoe", "messages": convert_to_openai_messages(messages)}
        finish = await http.post(f"/v1/sessions/{session['session_id']}/finish", json=done)  # GATEWAY
        if finish.status_code != 200:
            raise RuntimeError(f"finish: HTTP {finish.status_code}: {finish.text}")
        return finish.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://127.0.0.1:8090", help="the gateway's URL")
    parser.add_argument("--api-key", help="the gateway's bearer token, if it has one")
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"])
    parser.add_argument("--stream", action="store_true", help="let ChatOpenAI stream")
    args = parser.parse_args()
    record = asyncio.run(play(args.gateway, api_key=args.api_key, tool_choice=args.tool_choice, stream=args.stream))
    trained = sum(sum(segment["loss_mask"]) for segment in record["trajectory"]["segments"])
    print(json.dumps({key: record[key] for key in ("id", "status", "reward", "env_result", "num_policy_calls")}))
    print(f"{len(record['trajectory']['segments'])} segments, {trained} sampled tokens with logprobs")


if __name__ == "__main__":
    main()
