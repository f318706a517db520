"""remote: any resources server in NeMo Gym's shape, over HTTP, as a sparring environment.

Per episode: `POST /seed_session` with the row, `POST /{tool}` with each tool call's arguments,
and `POST /verify` with the row plus the conversation as NeMo Gym's `response` (Responses-API
output items). The server keeps its per-episode state behind a session cookie, which lives in the
episode's state (JSON-able, visible in Studio) and goes with every request of that episode. The
HTTP session is shared and pooled across episodes, with no cookie jar, so episodes never mix cookies.

The server comes from the run's `env_url` setting (`--env-url`, `SPARRING_ENV_URL`, Studio), or the
task's own `env_url` when it names one the operator allowed (`--allow-env-url`, core/outbound.py).
The tools come from the row (`responses_create_params.tools`), so an existing NeMo Gym environment
runs through sparring's graph with no new code.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import orjson
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from sparring.core.errors import EnvServerError, SeedError
from sparring.core.messages import raw_tool_calls
from sparring.envs.base import Actor, Environment, Verdict
from sparring.models.transport import Transport
from sparring.tools.specs import StateToolSpecs, ToolResult, ToolSpec

STOP_TOKEN = "###STOP###"
USER_PERSONA = f"The assistant has finished your task. Reply with only {STOP_TOKEN}."
RESERVED = frozenset({"seed_session", "verify", "close_session", "aggregate_metrics", "sandbox_access", "mcp"})
TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class RemoteServerError(EnvServerError):
    """The resources server failed (5xx, unreachable, not JSON where JSON is due): the episode aborts (env_error)."""


class Remote(Environment):
    """A NeMo Gym-shaped resources server; the environment object only pools the HTTP connection."""

    name = "remote"
    # NeMo Gym's agent loop: one user request, as many tool calls as the policy needs, then its answer.
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"max_turns": 1, "max_steps_per_turn": 8, "max_user_steps_per_turn": 1, "user_tool_choice": "none"}
    )

    def __init__(self, timeout_s: float = 60.0) -> None:
        # Tool calls change the server's state: a failed one is never sent again (no retries).
        self._transport = Transport(timeout_s=timeout_s, max_retries=0, unavailable=RemoteServerError)
        self._specs = StateToolSpecs()

    def episode_tools(self, state: dict[str, Any], actor: Actor) -> Sequence[ToolSpec]:
        """The row's tools, for the policy only."""
        if actor != "policy" or not state or not state.get("tools"):
            return ()
        return self._specs.of(state["tools"])

    def user_persona(self, task: dict[str, Any]) -> str:
        """The row's request is already made: the simulated user only ends the episode."""
        return task.get("user_persona") or USER_PERSONA

    async def seed(self, task: dict[str, Any]) -> dict[str, Any]:
        """Post the row to `/seed_session` and keep the server, the session cookie, the row and its tools."""
        url = (task.get("env_url") or "").rstrip("/")
        if not url:
            raise SeedError(
                "env remote needs a resources server: pass --env-url URL, set SPARRING_ENV_URL, "
                "or give the task an env_url"
            )
        if not task.get("messages"):
            raise SeedError("messages: a remote task needs its conversation (responses_create_params.input)")
        row = nemo_gym_row(task)
        tools = [_wire_tool(tool, i) for i, tool in enumerate(row["responses_create_params"].get("tools") or [])]
        status, _, cookies = await self._post(url, "seed_session", row, {})
        if status >= 400:
            raise SeedError(f"{url}/seed_session refused the row: HTTP {status}")
        return {"url": url, "cookies": cookies, "tools": tools, "row": row, "input_len": len(task["messages"])}

    async def call_tool(self, state: dict[str, Any], actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """`POST /{name}` with the arguments; the server's 4xx is the caller's mistake (a tool error), 5xx a failure."""
        if actor != "policy":
            return ToolResult(content=f"Error: {actor} has no tools in a remote episode", state=state, is_error=True)
        status, body, cookies = await self._post(state["url"], name, arguments, state["cookies"])
        new_state = {**state, "cookies": cookies} if cookies != state["cookies"] else state
        if status >= 400:
            return ToolResult(
                content=f"Error: HTTP {status}: {body.decode(errors='replace')}", state=new_state, is_error=True
            )
        return ToolResult(content=body.decode(errors="replace"), state=new_state)

    async def verify(self, state: dict[str, Any], messages: Sequence[Any]) -> Verdict:
        """`POST /verify` with the row and the episode as NeMo Gym's response; the server's reward is ours."""
        response = nemo_gym_response(messages[state["input_len"] :], state["tools"])
        request = {**state["row"], "response": response}
        status, body, _ = await self._post(state["url"], "verify", request, state["cookies"])
        if status >= 400:
            raise RemoteServerError(f"{state['url']}/verify: HTTP {status}: {body.decode(errors='replace')[:500]}")
        try:
            result = orjson.loads(body)
            reward = float(result["reward"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise RemoteServerError(
                f"{state['url']}/verify: expected JSON with a numeric reward, got {body[:200]!r}"
            ) from None
        components = result.get("reward_components") or {"reward": reward}
        extra = {k: v for k, v in result.items() if k not in request and k not in ("reward", "reward_components")}
        return Verdict(reward=reward, components=dict(components), result=extra)

    async def aclose(self) -> None:
        """Close the pooled HTTP session (on the loop that opened it)."""
        await self._transport.aclose()

    async def _post(
        self, url: str, path: str, payload: Any, cookies: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        """One POST; connection failures and 5xx raise, anything else returns (status, body, cookies after)."""
        reply = await self._transport.post(f"{url}/{path}", orjson.dumps(payload), cookies=cookies)
        return reply.status, reply.body, reply.cookies


def nemo_gym_row(task: dict[str, Any]) -> dict[str, Any]:
    """The NeMo Gym row a task stands for: a converted row's own fields, or a sparring task's seed and messages."""
    metadata = task.get("metadata") or {}
    if isinstance(metadata.get("responses_create_params"), dict):
        row = dict(metadata)
        if task.get("env_seed"):
            row["verifier_metadata"] = task["env_seed"]
        return row
    seed = dict(task.get("env_seed") or {})
    params = {**(seed.pop("responses_create_params", None) or {}), "input": task["messages"]}
    if "tools" in seed:
        params["tools"] = seed.pop("tools")
    return {**seed, "responses_create_params": params}


def nemo_gym_response(messages: Sequence[BaseMessage], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The episode after its opening as a Responses-API response: messages, function calls and their outputs."""
    output: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, AIMessage):
            if isinstance(message.content, str) and message.content:
                output.append(
                    {
                        "id": f"msg_{uuid.uuid4().hex[:24]}",
                        "type": "message",
                        "role": "assistant",
                        "status": "completed",
                        "content": [{"type": "output_text", "text": message.content, "annotations": []}],
                    }
                )
            for call in raw_tool_calls(message):
                output.append(
                    {
                        "id": f"fc_{call['id']}",
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": call["function"]["name"],
                        "arguments": call["function"]["arguments"],
                        "status": "completed",
                    }
                )
        elif isinstance(message, ToolMessage):
            output.append({"type": "function_call_output", "call_id": message.tool_call_id, "output": message.content})
        elif isinstance(message, HumanMessage):
            output.append(
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": message.content}]}
            )
    return {
        "id": f"resp_{uuid.uuid4().hex[:24]}",
        "object": "response",
        "created_at": int(time.time()),
        "model": "policy",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": tools,
    }


def _wire_tool(tool: Any, index: int) -> dict[str, Any]:
    """A row's tool in Responses form ({type, name, parameters, ...}); chat-completions form is accepted too."""
    where = f"responses_create_params.tools[{index}]"
    if not isinstance(tool, dict):
        raise SeedError(f"{where}: must be an object, got {tool!r}")
    flat = {**tool, **tool["function"]} if isinstance(tool.get("function"), dict) else dict(tool)
    flat.pop("function", None)
    name = flat.get("name")
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise SeedError(f"{where}.name: must be letters, digits, '_' or '-', got {name!r}")
    if name in RESERVED:
        raise SeedError(f"{where}.name: {name!r} is one of the server's own endpoints")
    if not isinstance(flat.get("parameters", {}), dict):
        raise SeedError(f"{where}.parameters: must be a JSON schema object")
    return {"type": "function", **flat}
