"""openenv: any OpenEnv server (made with openenv's `create_app`) as a sparring environment.

OpenEnv's HTTP `/reset` and `/step` build a fresh environment per request, so an episode is one
WebSocket session at `{env_url}/ws` (text frames of JSON):
- open: `{"type": "reset", "data": {...}}` with the task's `env_seed` fields and the episode id; the
  observation it answers is shown to the policy with its opening message;
- tools: MCP `tools/list` inside the session (`{"type": "mcp", "data": <JSON-RPC>}`; servers spell
  the schema `inputSchema` or `input_schema`); a server without MCP tools (a plain action model, as
  `openenv init` makes) gets one tool, `act`, whose arguments are its action (`GET /schema`);
- each tool call is one `step`: `{"type": "call_tool", "tool_name", "arguments"}` for tool servers
  (never MCP `tools/call`, which skips the environment's reward and done), the arguments themselves
  for `act`; the observation is the tool result, an observation `error` a tool error, `done` the end;
- the verdict is the return: the sum of the rewards the observations carried (see `verify`);
- close: exactly `{"type": "close"}` (a `data` key would be refused and the session kept open).

Where the socket lives: the graph state must stay JSON, so the sockets sit in a table in the
environment object keyed by episode id, and the state holds only the key. `close_episode` closes
an episode's socket once the episode is over, however it ended (the verify node, and the Engine for
a crash or a cancellation); `aclose` closes any left (Studio runs stopped half-way).

Failures end the episode `aborted` / `env_error` with the reason (`OpenEnvServerError`):
- `CAPACITY_REACHED` (sent after the handshake, before any request) is retried with exponential
  backoff, a bounded number of times;
- a server that goes away: close code 1006 (killed: no close frame), 1012 (shutting down), ...;
- an error frame (`EXECUTION_ERROR`: the environment raised), or a frame that is not an observation
  of the expected shape: the message names what was wrong.
Rewards: a number, or `true` / `false` (OpenEnv's `Observation.reward` allows bool: 1.0 / 0.0), or
null (no reward on that step; OpenEnv also sends NaN and infinities as null). Anything else is a
malformed observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import aiohttp
import orjson

from sparring.core.errors import EnvServerError, SeedError
from sparring.envs.base import Actor, Environment, Verdict
from sparring.models.transport import Transport
from sparring.tools.specs import StateToolSpecs, ToolResult, ToolSpec

STOP_TOKEN = "###STOP###"
USER_PERSONA = f"The assistant has finished your task. Reply with only {STOP_TOKEN}."
OPENING = "Act in the environment with your tools. It starts like this:"
ACT = "act"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
CAPACITY = "CAPACITY_REACHED"
CLOSE_CODES = {
    1000: "closed normally",
    1001: "going away",
    1006: "the connection dropped without a close frame: the server died or was killed",
    1011: "the server hit an internal error",
    1012: "the server is restarting or shutting down",
}
CLOSE_FRAMES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


class OpenEnvServerError(EnvServerError):
    """The OpenEnv server refused, went away, failed, or sent what is not a valid frame: the episode aborts."""


class ErrorFrame(Exception):
    """An error frame the caller expected and handles (a capacity refusal, a server that has no MCP)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class OpenEnv(Environment):
    """An OpenEnv server, one WebSocket session per episode; the object holds the sockets, the state their keys."""

    name = "openenv"
    # OpenEnv has no user: one request, as many steps as the policy needs, then its answer.
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {"max_turns": 1, "max_steps_per_turn": 16, "max_user_steps_per_turn": 1, "user_tool_choice": "none"}
    )

    def __init__(
        self,
        timeout_s: float = 60.0,
        capacity_attempts: int = 5,
        capacity_backoff_s: float = 0.25,
        max_message_bytes: int = 32 * 2**20,
    ) -> None:
        """`timeout_s` bounds the handshake and each reply; a refused session is tried `capacity_attempts` times,
        waiting `capacity_backoff_s` doubled after each refusal."""
        self.timeout_s = timeout_s
        self.capacity_attempts = capacity_attempts
        self.capacity_backoff_s = capacity_backoff_s
        self.max_message_bytes = max_message_bytes
        self._transport = Transport(timeout_s=timeout_s, max_retries=0, unavailable=OpenEnvServerError)
        self._sessions: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self._specs = StateToolSpecs()

    # -- the episode --------------------------------------------------------------------------------
    def default_messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": OPENING}]

    def user_persona(self, task: dict[str, Any]) -> str:
        """An OpenEnv episode has no user: the simulated one only ends the episode."""
        return task.get("user_persona") or USER_PERSONA

    def episode_tools(self, state: dict[str, Any], actor: Actor) -> Sequence[ToolSpec]:
        """The server's tools, for the policy only."""
        if actor != "policy" or not state:
            return ()
        return self._specs.of(state["tools"])

    async def open_episode(self, task: dict[str, Any], episode_id: str) -> dict[str, Any]:
        """Open the episode's session, reset it with the task's env_seed, and list its tools."""
        url = (task.get("env_url") or "").rstrip("/")
        if not url:
            raise SeedError(
                "env openenv needs an OpenEnv server: pass --env-url URL, set SPARRING_ENV_URL, "
                "or give the task an env_url"
            )
        await self.close_episode(episode_id)  # a key used again: its old socket goes first
        data = {**(task.get("env_seed") or {}), "episode_id": episode_id}
        reply = await self._open(url, episode_id, data)
        opened = read_observation(reply, f"{url}: the reset's observation")
        tools, style = await self._tools(url, self._sessions[episode_id])
        return {
            "url": url,
            "session": episode_id,
            "style": style,
            "tools": tools,
            "opening": opened.text,
            "steps": 0,
            "done": opened.done,
            "rewards": [opened.reward],
        }

    def observe(self, state: dict[str, Any], actor: Actor) -> str | None:
        """The reset's observation, for the policy, until it has acted (then tool results carry what it sees)."""
        return state["opening"] if actor == "policy" and state and not state["steps"] else None

    def is_done(self, state: dict[str, Any]) -> bool:
        return bool(state and state["done"])

    async def call_tool(self, state: dict[str, Any], actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """One step: the tool call as the server's action; its observation is the result."""
        if actor != "policy":
            return ToolResult(content=f"Error: {actor} has no tools in an openenv episode", state=state, is_error=True)
        socket = self._sessions.get(state["session"])
        if socket is None:
            raise OpenEnvServerError(f"{state['url']}: the episode's session is already closed")
        action = (
            arguments if state["style"] == ACT else {"type": "call_tool", "tool_name": name, "arguments": arguments}
        )
        step = state["steps"] + 1
        reply = await self._request(state["url"], socket, {"type": "step", "data": action}, "observation")
        seen = read_observation(reply, f"{state['url']}: step {step}'s observation")
        new_state = {**state, "steps": step, "done": seen.done, "rewards": [*state["rewards"], seen.reward]}
        return ToolResult(content=seen.text, state=new_state, is_error=seen.is_error)

    async def verify(self, state: dict[str, Any], messages: Sequence[Any]) -> Verdict:
        """The return: the sum of the rewards the server reported (null ones add nothing).

        An episode the server ended (`done`) without a single reward cannot be scored (env_error:
        OpenEnv sends a NaN reward as null). One that ended by sparring's limits before the server said
        done, with no reward yet, scores 0 and says why.
        """
        rewards = [reward for reward in state["rewards"] if reward is not None]
        result: dict[str, Any] = {"done": state["done"], "steps": state["steps"], "rewards": state["rewards"]}
        if not rewards:
            if state["done"]:
                raise OpenEnvServerError(
                    f"{state['url']}: the server ended the episode (done) without a reward on any of its "
                    f"{state['steps'] + 1} observations (reward null: none, or NaN/infinity, sent as null)"
                )
            return Verdict(
                reward=0.0, components={"return": 0.0}, result={**result, "reason": "no reward before the end"}
            )
        total = float(sum(rewards))
        if not math.isfinite(total):
            raise OpenEnvServerError(f"{state['url']}: the rewards {rewards} do not sum to a finite number")
        return Verdict(reward=total, components={"return": total}, result=result)

    async def close_episode(self, episode_id: str) -> None:
        """Say close, wait for the server's close frame (the session is destroyed before it), drop the socket."""
        socket = self._sessions.pop(episode_id, None)
        if socket is None:
            return
        try:
            if not socket.closed:
                await socket.send_str('{"type":"close"}')
                async with asyncio.timeout(min(self.timeout_s, 10.0)):
                    while (await socket.receive()).type not in CLOSE_FRAMES:
                        pass
        except (aiohttp.ClientError, ConnectionError, TimeoutError, RuntimeError):
            pass  # the server is gone or slow: closing our end below is all there is left to do
        finally:
            await socket.close()

    async def aclose(self) -> None:
        """Close the sessions of episodes that never reached their end, then the pooled HTTP session."""
        for episode_id in list(self._sessions):
            await self.close_episode(episode_id)
        await self._transport.aclose()

    # -- the protocol -------------------------------------------------------------------------------
    async def _open(self, url: str, episode_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Connect and reset, backing off while the server answers CAPACITY_REACHED."""
        ws_url = "ws" + url.removeprefix("http") + "/ws"  # http -> ws, https -> wss
        refusal: ErrorFrame | None = None
        for attempt in range(self.capacity_attempts):
            if attempt:
                await self._back_off(attempt)
            socket = self._sessions[episode_id] = await self._transport.ws_connect(
                ws_url, max_msg_size=self.max_message_bytes
            )
            try:
                return await self._request(url, socket, {"type": "reset", "data": data}, "observation", (CAPACITY,))
            except ErrorFrame as refused:
                refusal = refused
            await self.close_episode(episode_id)
        raise OpenEnvServerError(f"{url}: the server refused a session {self.capacity_attempts} times ({refusal})")

    async def _back_off(self, attempt: int) -> None:
        """Wait before the `attempt`-th try (1-based retries): the backoff doubles each time."""
        await asyncio.sleep(self.capacity_backoff_s * 2 ** (attempt - 1))

    async def _tools(self, url: str, socket: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], str]:
        """The session's MCP tools; else (no MCP on this server) the action from /schema as the one tool `act`."""
        listing = {"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "params": {}, "id": 1}}
        try:  # servers older than the "mcp" message answer UNKNOWN_TYPE or VALIDATION_ERROR
            reply = await self._request(url, socket, listing, "mcp", ("UNKNOWN_TYPE", "VALIDATION_ERROR"))
        except ErrorFrame:
            reply = {}
        if isinstance(reply.get("result"), dict):
            return mcp_tools(reply["result"]), "mcp"
        return [await self._action_tool(url)], ACT  # a JSON-RPC error: "Environment does not support MCP"

    async def _action_tool(self, url: str) -> dict[str, Any]:
        try:
            status, body = await self._transport.get(url + "/schema")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OpenEnvServerError(f"{url}/schema: {type(exc).__name__}: {exc}") from None
        try:
            action = orjson.loads(body)["action"] if status == 200 else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            action = None
        if not isinstance(action, dict):
            raise OpenEnvServerError(
                f"{url}: no MCP tools and no action schema (GET /schema: HTTP {status}, {body[:200]!r})"
            )
        return action_tool(action)

    async def _request(
        self,
        url: str,
        socket: aiohttp.ClientWebSocketResponse,
        message: dict[str, Any],
        expect: str,
        handled: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Send one request and read its one reply frame's `data`.

        An error frame whose code is in `handled` raises `ErrorFrame`; any other failure OpenEnvServerError.
        """
        kind = message["type"]
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # a refusal or a close may be waiting:
            await socket.send_str(orjson.dumps(message).decode())  # the frame read next says which
        try:
            async with asyncio.timeout(self.timeout_s):
                frame = await socket.receive()
        except TimeoutError:
            raise OpenEnvServerError(f"{url}: no reply to {kind} within {self.timeout_s:g} s") from None
        if frame.type in CLOSE_FRAMES:
            code = socket.close_code if socket.close_code is not None else 1006
            why = CLOSE_CODES.get(code, "closed by the server")
            raise OpenEnvServerError(f"{url}: the session closed during {kind}: code {code} ({why})")
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise OpenEnvServerError(f"{url}: the reply to {kind} is a {frame.type.name} frame, not JSON text")
        try:
            reply = orjson.loads(frame.data)
        except orjson.JSONDecodeError:
            raise OpenEnvServerError(f"{url}: the reply to {kind} is not JSON: {frame.data[:200]!r}") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("data"), dict):
            raise OpenEnvServerError(f"{url}: the reply to {kind} has no data object: {frame.data[:200]!r}")
        data = reply["data"]
        if reply.get("type") == "error":
            code, text = data.get("code"), data.get("message")
            if code in handled:
                raise ErrorFrame(str(code), str(text))
            raise OpenEnvServerError(f"{url}: the server answered {kind} with {code}: {text}")
        if reply.get("type") != expect:
            raise OpenEnvServerError(f"{url}: the reply to {kind} is a {reply.get('type')!r} frame, not {expect!r}")
        return data


class Observation:
    """What one observation says: its text for the policy, whether that is a tool error, the reward, done."""

    __slots__ = ("done", "is_error", "reward", "text")

    def __init__(self, text: str, is_error: bool, done: bool, reward: float | None) -> None:
        self.text, self.is_error, self.done, self.reward = text, is_error, done, reward


def read_observation(data: dict[str, Any], where: str) -> Observation:
    """An observation frame's data, `{"observation": {...}, "reward", "done"}`, checked field by field."""
    observation, done, reward = data.get("observation"), data.get("done"), data.get("reward")
    if not isinstance(observation, dict):
        raise OpenEnvServerError(f"{where}: field observation: must be an object, got {_short(observation)}")
    if not isinstance(done, bool):
        raise OpenEnvServerError(f"{where}: field done: must be true or false, got {_short(done)}")
    if isinstance(reward, bool):
        reward = 1.0 if reward else 0.0
    elif reward is not None and (not isinstance(reward, int | float) or not math.isfinite(reward)):
        raise OpenEnvServerError(f"{where}: field reward: must be a number, true/false or null, got {_short(reward)}")
    text, is_error = observation_text(observation, where)
    return Observation(text, is_error, done, None if reward is None else float(reward))


def observation_text(observation: dict[str, Any], where: str) -> tuple[str, bool]:
    """What the policy reads of an observation, and whether it reports a tool error.

    A tool call's observation (`tool_name`): its `error.message` (a tool error), else its `result`
    (an MCP result's text blocks, a string as is, anything else as JSON). Any other observation: its
    fields but `metadata` and `tools` as JSON (a lone string field as is), or its metadata when it has
    nothing else.
    """
    if "tool_name" in observation:
        error = observation.get("error")
        if error is not None:
            if not isinstance(error, dict) or not isinstance(error.get("message"), str):
                raise OpenEnvServerError(f"{where}: field observation.error: must be {{error_type, message}}")
            return error["message"], True
        result = observation.get("result")
        if isinstance(result, dict) and isinstance(result.get("content"), list):  # an MCP CallToolResult
            blocks = [block.get("text", "") for block in result["content"] if isinstance(block, dict)]
            return "\n".join(block for block in blocks if isinstance(block, str)), bool(result.get("is_error"))
        if isinstance(result, str):
            return result, False
        return _json(result), False
    body = {key: value for key, value in observation.items() if key not in ("metadata", "tools")}
    if len(body) == 1 and isinstance(only := next(iter(body.values())), str):
        return only, False
    return _json(body or observation.get("metadata") or {}), False


def mcp_tools(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools of a JSON-RPC `tools/list` result, as `{name, description, parameters}`."""
    listed = result.get("tools")
    if not isinstance(listed, list):
        raise OpenEnvServerError(f"tools/list: field result.tools: must be a list, got {_short(listed)}")
    tools = []
    for i, tool in enumerate(listed):
        name = tool.get("name") if isinstance(tool, dict) else None
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise OpenEnvServerError(f"tools/list: tools[{i}].name: must be letters, digits, '_' or '-', got {name!r}")
        schema = tool.get("inputSchema", tool.get("input_schema")) or EMPTY_SCHEMA
        if not isinstance(schema, dict):
            raise OpenEnvServerError(f"tools/list: tools[{i}].inputSchema: must be a JSON schema object")
        tools.append({"name": name, "description": tool.get("description") or "", "parameters": schema})
    return tools


def action_tool(action: dict[str, Any]) -> dict[str, Any]:
    """The one tool of a server without MCP: its action schema minus OpenEnv's own `metadata` field."""
    properties = {key: value for key, value in (action.get("properties") or {}).items() if key != "metadata"}
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": [key for key in action.get("required") or () if key != "metadata"],
        "additionalProperties": False,
    }
    if action.get("$defs"):
        parameters["$defs"] = action["$defs"]
    description = action.get("description") or "Take one action in the environment; its fields are the action's."
    return {"name": ACT, "description": description, "parameters": parameters}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
