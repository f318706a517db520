"""A plain `openai` SDK agent loop plays tic-tac-toe through the sparring gateway.

The loop is what many teams already have: call the model with tools, run the tool calls, append the
results, repeat. The three lines marked GATEWAY make its runs training data.

    .venv/bin/python examples/openai_sdk_agent.py --gateway http://127.0.0.1:8090
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import httpx
import openai
from tictactoe_tools import Game

MAKE_MOVE = {
    "type": "function",
    "function": {
        "name": "make_move",
        "description": "Place your X on an empty cell. Positions are 0-8, row by row: 0 1 2 / 3 4 5 / 6 7 8.",
        "parameters": {
            "type": "object",
            "properties": {"position": {"type": "integer", "minimum": 0, "maximum": 8}},
            "required": ["position"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


async def run_tools(game: Game, message: Any) -> list[dict[str, Any]]:
    """One tool message per call, in order; arguments that are not an object with a position are the model's error."""
    results = []
    for call in message.tool_calls or ():
        try:
            position = json.loads(call.function.arguments)["position"]
            content = await game.move(position)
        except (ValueError, KeyError, TypeError) as exc:
            content = json.dumps({"error": f"bad arguments {call.function.arguments!r}: {exc}"})
        results.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return results


async def play(
    gateway: str, *, api_key: str | None = None, max_steps: int = 12, tool_choice: str = "auto", stream: bool = False
) -> dict[str, Any]:
    """One game through the gateway; the rollout record the gateway made of it."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=600) as http:
        session = (await http.post("/v1/sessions", json={})).raise_for_status().json()  # GATEWAY
        client = openai.AsyncOpenAI(base_url=session["base_url"], api_key=api_key or "unused")  # GATEWAY
        game = Game()
        messages: list[Any] = await game.start()
        for _ in range(max_steps):
            if stream:
                chunks = [
                    c
                    async for c in await client.chat.completions.create(
                        model="policy", messages=messages, tools=[MAKE_MOVE], tool_choice=tool_choice, stream=True
                    )
                ]
                message = merge_stream(chunks)
            else:
                reply = await client.chat.completions.create(
                    model="policy", messages=messages, tools=[MAKE_MOVE], tool_choice=tool_choice
                )
                message = reply.choices[0].message
            messages.append(message.model_dump(exclude_none=True))
            messages += await run_tools(game, message)
            if game.over:
                break
            if not message.tool_calls:
                messages.append({"role": "user", "content": "Your move."})
        # The final history (with the last move's result, which no model call saw) lets the verifier replay the game.
        done = {"verifier": "tictactoe", "messages": messages}
        finish = await http.post(f"/v1/sessions/{session['session_id']}/finish", json=done)  # GATEWAY
        if finish.status_code != 200:
            raise RuntimeError(f"finish: HTTP {finish.status_code}: {finish.text}")
        return finish.json()


def merge_stream(chunks: list[Any]) -> Any:
    """The assistant message a stream adds up to (the SDK's own ChatCompletionMessage type)."""
    content, calls = "", {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or ():
            slot = calls.setdefault(
                call.index, {"id": call.id, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            slot["function"]["name"] += call.function.name or ""
            slot["function"]["arguments"] += call.function.arguments or ""
    return openai.types.chat.ChatCompletionMessage.model_validate(
        {"role": "assistant", "content": content or None, "tool_calls": [calls[i] for i in sorted(calls)] or None}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://127.0.0.1:8090", help="the gateway's URL")
    parser.add_argument("--api-key", help="the gateway's bearer token, if it has one")
    parser.add_argument("--tool-choice", default="auto", choices=["auto", "required"])
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    record = asyncio.run(play(args.gateway, api_key=args.api_key, tool_choice=args.tool_choice, stream=args.stream))
    print(json.dumps({key: record[key] for key in ("id", "status", "reward", "env_result", "num_policy_calls")}))


if __name__ == "__main__":
    main()
