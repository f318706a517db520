"""The floor: tic-tac-toe episodes driven by a hand-written asyncio + aiohttp loop, no framework.

It does the work any real driver must do, and nothing more: sends the full history every call, with
the same request bodies sparring sends (tools, tool_choice, token capture for the policy, the
X-Session-ID header); parses the tool calls; runs the moves through the same `TicTacToe` environment;
builds the role-flipped user view and the policy's next messages the same way; keeps the policy's
token ledger (prefix check, mask, logprobs); and returns a small record. Same number of model calls
per episode as sparring's graph with the same settings. What it skips: LangGraph, LangChain message
objects, retries, schema validation of tool arguments.
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import orjson

from sparring.envs.tictactoe import TicTacToe

MAX_TURNS = 5
MAX_USER_STEPS = 2
STOP_TOKENS = ("###STOP###",)
_ids = itertools.count()


class AiohttpLoop:
    """One shared aiohttp session; `play` runs one episode; settings mirror sparring's tic-tac-toe bench."""

    name = "aiohttp loop"

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.env = TicTacToe()
        self.tools = {actor: [t.to_openai() for t in self.env.tools(actor)] for actor in ("policy", "user")}
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pooled session (inside the running loop, as aiohttp wants)."""
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))

    async def close(self) -> None:
        """Close the pooled session."""
        if self.session is not None:
            await self.session.close()

    async def _chat(self, body: dict[str, Any], episode_id: str) -> dict[str, Any]:
        """POST one chat completion and return the first choice, with the top-level fields it needs."""
        assert self.session is not None
        headers = {"Content-Type": "application/json", "X-Session-ID": episode_id}
        async with self.session.post(self.url, data=orjson.dumps(body), headers=headers) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {raw[:200]!r}")
        return orjson.loads(raw)

    async def _run_tools(self, state: Any, actor: str, calls: list[dict[str, Any]], out: list[dict[str, Any]]) -> Any:
        """Run each call in order for `actor`, appending one tool message per call to `out`."""
        for call in calls:
            function = call["function"]
            try:
                arguments = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError as exc:
                out.append({"role": "tool", "content": f"Error: {exc}", "tool_call_id": call["id"]})
                continue
            result = await self.env.call_tool(state, actor, function["name"], arguments)  # type: ignore[arg-type]
            state = result.state
            out.append(
                {"role": "tool", "content": result.content, "tool_call_id": call["id"], "name": function["name"]}
            )
        return state

    async def play(self) -> dict[str, Any]:
        """One full episode; returns a record with the fields the benchmark checks."""
        env = self.env
        episode_id = f"aio-{next(_ids)}"
        state = await env.seed({})
        opening = env.default_messages()
        policy_messages: list[dict[str, Any]] = [dict(m) for m in opening]
        policy_messages[-1]["content"] += "\n\n" + (env.observe(state, "policy") or "")
        user_messages: list[dict[str, Any]] = [
            {"role": "system", "content": env.user_persona({})},
            {"role": "assistant", "content": opening[-1]["content"]},
        ]
        ledger: dict[str, list[Any]] = {"token_ids": [], "loss_mask": [], "logprobs": []}
        prefix_mismatches = policy_calls = user_calls = turn = 0
        status: str | None = None
        stop_reason = ""
        while status is None:
            if turn == MAX_TURNS:
                status, stop_reason = "truncated", "max_turns"
                break
            turn += 1
            turn_start = len(policy_messages)
            # The policy: one step per turn, its exact tokens into the ledger.
            policy_calls += 1
            data = await self._chat(
                {
                    "model": "policy",
                    "messages": policy_messages,
                    "temperature": 1.0,
                    "max_tokens": 512,
                    "return_token_ids": True,
                    "logprobs": True,
                    "top_logprobs": 0,
                    "tools": self.tools["policy"],
                    "tool_choice": "auto",
                },
                episode_id,
            )
            choice = data["choices"][0]
            prompt_ids, completion_ids = data["prompt_token_ids"], choice["token_ids"]
            logprobs = [entry["logprob"] for entry in choice["logprobs"]["content"]]
            n = len(ledger["token_ids"])
            if prompt_ids[:n] != ledger["token_ids"]:
                prefix_mismatches += 1
            tail = prompt_ids[n:]
            ledger["token_ids"] += tail + completion_ids
            ledger["loss_mask"] += [0] * len(tail) + [1] * len(completion_ids)
            ledger["logprobs"] += [0.0] * len(tail) + logprobs
            policy_messages.append(_assistant(choice["message"]))
            calls = choice["message"].get("tool_calls") or []
            state = await self._run_tools(state, "policy", calls, policy_messages)
            if env.is_done(state):
                status, stop_reason = "completed", "env_done"
                break
            # The user: sees the policy's visible text and the board, role-flipped.
            parts = [m["content"] for m in policy_messages[turn_start:] if m["role"] == "assistant" and m["content"]]
            parts.append(env.observe(state, "user") or "")
            user_messages.append({"role": "user", "content": "\n\n".join(parts)})
            for step in range(1, MAX_USER_STEPS + 1):
                user_calls += 1
                data = await self._chat(
                    {
                        "model": "user",
                        "messages": user_messages,
                        "temperature": 0.7,
                        "max_tokens": 256,
                        "tools": self.tools["user"],
                        "tool_choice": "none" if step == MAX_USER_STEPS else "required",
                    },
                    episode_id,
                )
                message = data["choices"][0]["message"]
                user_messages.append(_assistant(message))
                calls = message.get("tool_calls") or []
                if calls:
                    state = await self._run_tools(state, "user", calls, user_messages)
                    if env.is_done(state):
                        status, stop_reason = "completed", "env_done"
                        break
                    continue
                text = message.get("content") or ""
                visible = text
                for token in STOP_TOKENS:
                    visible = visible.replace(token, "")
                visible = visible.strip()
                if visible:
                    policy_messages.append({"role": "user", "content": visible})
                if visible != text.strip():
                    status, stop_reason = "completed", "user_stop"
                break
            if status is None and turn < MAX_TURNS:
                policy_messages.append({"role": "user", "content": env.observe(state, "policy") or ""})
        verdict = await env.verify(state, policy_messages)
        return {
            "id": episode_id,
            "status": status,
            "stop_reason": stop_reason,
            "reward": verdict.reward,
            "env_result": verdict.result,
            "num_turns": turn,
            "num_policy_calls": policy_calls,
            "num_user_calls": user_calls,
            "messages": policy_messages,
            "trajectory": {"segments": [ledger], "prefix_mismatches": prefix_mismatches},
        }


def _assistant(message: dict[str, Any]) -> dict[str, Any]:
    """The reply as it goes back into the history: content None beside tool calls, as sparring sends it."""
    calls = message.get("tool_calls")
    if calls:
        return {"role": "assistant", "content": message.get("content") or None, "tool_calls": calls}
    return {"role": "assistant", "content": message.get("content") or ""}
