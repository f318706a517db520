"""support-desk: a τ-bench-like retail desk. The policy is the agent, the simulated user a customer.

The customer has a hidden goal (the task's `instructions`) and a persona, and ends with `###STOP###`.
The agent works through the desk's tools under the policy document (`policy.md`): authenticate
first, confirm before writing, one change per confirmation. Reward 1 only when the final database
hashes like the one the task's expected actions produce and every required fact reached the
customer; components say which part failed (users table, orders table, transfer, facts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from types import MappingProxyType
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparring.core.attribution import AttributionRules
from sparring.core.errors import SeedError
from sparring.envs.base import Actor, Environment, Verdict
from sparring.envs.support_desk.world import (
    AUTH_TOOLS,
    DATA,
    TOOL_SPECS,
    TOOLS,
    WRITE_TOOLS,
    DeskError,
    db_hash,
    load_world,
)
from sparring.tools.specs import ToolResult, ToolSpec

STOP_TOKEN = "###STOP###"
OWN_DATA_TOOLS = frozenset({"get_user_details", "get_order_details", "modify_user_address"}) | WRITE_TOOLS
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_YES = re.compile(r"\b(yes|yeah|yep|sure|ok|okay|confirm|confirmed|go ahead|please do|proceed|correct)\b", re.I)


class ExpectedAction(BaseModel):
    """One tool call the task expects, played on the shipped world to build the expected database."""

    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class DeskTask(BaseModel):
    """A support-desk task: who the customer is, what they want, and what a correct agent leaves behind."""

    model_config = ConfigDict(extra="forbid")
    id: str
    user_id: str
    known: dict[str, str] = Field(description="What the customer can tell to be found: email, or name and zip.")
    instructions: str = Field(description="The customer's hidden goal.")
    request: str = Field(
        default="",
        description="The goal as the customer's own first line (first person): the persona offers it to copy.",
    )
    persona: str = ""
    expected_actions: list[ExpectedAction] = Field(default_factory=list)
    required_facts: list[list[str]] = Field(
        default_factory=list, description="Facts the agent must tell; each is a list of accepted spellings."
    )


@cache
def _shipped() -> tuple[DeskTask, ...]:
    raw = DATA.joinpath("tasks.json").read_bytes()
    return tuple(DeskTask.model_validate(row) for row in orjson.loads(raw))


def shipped_tasks() -> tuple[DeskTask, ...]:
    """The hand-written tasks shipped with the package."""
    return _shipped()


def task_rows() -> list[dict[str, Any]]:
    """The shipped tasks as task rows (for `--input` files and benchmarks)."""
    return [{"id": t.id, "env": "support-desk", "env_seed": {"task_id": t.id}} for t in _shipped()]


def resolve_task(task: Mapping[str, Any]) -> DeskTask:
    """The desk task a row names: `env_seed.task_id` (shipped), `env_seed.task` (inline), or the first shipped."""
    seed = task.get("env_seed") or {}
    unknown = set(seed) - {"task_id", "task"}
    if unknown:
        raise SeedError(f"env_seed: unknown field(s) {', '.join(sorted(unknown))}; expected task_id or task")
    if "task" in seed:
        try:
            return DeskTask.model_validate(seed["task"])
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise SeedError(f"env_seed.task.{where}: {first['msg']}") from None
    wanted = seed.get("task_id", _shipped()[0].id)
    for desk_task in _shipped():
        if desk_task.id == wanted:
            return desk_task
    raise SeedError(f"env_seed.task_id: no shipped task {wanted!r}; known: {_shipped()[0].id} .. {_shipped()[-1].id}")


POLICY_DOCUMENT = DATA.joinpath("policy.md").read_text()
POLICY_PROMPT = (
    POLICY_DOCUMENT + "\nThe customer writes first. Use the tools to look things up and make changes; "
    "answer the customer in short plain sentences."
)


GREETING = "Hi! This is the shop's support desk. How can I help you today?"


def customer_persona(desk_task: DeskTask, db: Mapping[str, Any]) -> str:
    """The simulated customer's system prompt: who they are, their goal, how to answer and how to end.

    Written for small models, which copy what they see and lean to the assistant's side of a chat: the
    role is said first and last (a customer never offers help), the goal comes with a first-person line
    to open with (`DeskTask.request`), and the stop token is shown once, in the exact line that ends.
    """
    user = db["users"][desk_task.user_id]
    name = f"{user['name']['first_name']} {user['name']['last_name']}"
    known = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in desk_task.known.items())
    opening = (
        f'Your first message says it, for example: "{desk_task.request}"\n'
        if desk_task.request
        else ("Your first message says it, in your own words.\n")
    )
    return (
        f"You are {name}, a customer of an online shop, chatting with the shop's support agent to get something "
        "done. You are the customer, not the agent: you never offer help, never ask the agent for its details, "
        f"and never say you are an AI or an assistant. {desk_task.persona}\n"
        f"Your goal: {desk_task.instructions}\n"
        f"{opening}"
        "Then answer the agent's questions in a few words of your own. Never copy the agent's words, and never "
        f"send the same message twice. If the agent asks who you are, give {known}. Never invent order ids or "
        "details you were not given. When the agent proposes a change that matches your goal, say yes; "
        "otherwise say no and say what you want.\n"
        "When the agent says your goal is done or cannot be done, or hands you to a human agent, write: "
        f"Thanks, bye! {STOP_TOKEN}\n"
        "Remember: you are the customer. Write one or two short sentences, never the agent's lines."
    )


class SupportDesk(Environment):
    """The support desk; the episode state is a JSON-able dict holding the database and the session."""

    name = "support-desk"
    # The agent may look things up and act several times a turn; the customer has no tools.
    settings: ClassVar[Mapping[str, Any]] = MappingProxyType(
        {
            "max_turns": 10,
            "max_steps_per_turn": 6,
            "max_user_steps_per_turn": 1,
            "user_stop_tokens": [STOP_TOKEN],
            "policy_max_tokens": 256,
        }
    )

    def tools(self, actor: Actor) -> Sequence[ToolSpec]:
        """The agent's desk tools; the customer only talks."""
        return TOOL_SPECS if actor == "policy" else ()

    def default_messages(self) -> list[dict[str, str]]:
        """The agent's instructions and policy, and its greeting: the customer answers it with the request.

        Without a greeting a small user model starts from an empty chat and often writes only the stop token.
        """
        return [{"role": "system", "content": POLICY_PROMPT}, {"role": "assistant", "content": GREETING}]

    def user_persona(self, task: dict[str, Any]) -> str:
        """The task's own persona, else the customer built from the desk task."""
        return task.get("user_persona") or customer_persona(resolve_task(task), load_world())

    def attribution_rules(self, task: dict[str, Any], state: Any) -> AttributionRules:
        """The customer may say its goal, its opening line and its identifiers word for word: they are its to tell."""
        desk_task = resolve_task(task)
        return AttributionRules(may_say=(desk_task.instructions, desk_task.request, *desk_task.known.values()))

    def judge_prompt(self, task: dict[str, Any]) -> str:
        """What a fair customer of this task does, and what the agent owes it."""
        desk_task = resolve_task(task)
        return (
            "The simulated user is a customer writing to an online shop's support chat; the assistant is the "
            f"shop's support agent, bound by the shop's policy. The customer's goal: {desk_task.instructions} "
            "The customer is at fault when it never states that goal, changes or abandons it, invents order "
            "ids or details it was not given, refuses a change that matches its goal, answers as the agent "
            "would (offering help, asking for the customer's details), or ends the chat before the agent said "
            "the goal was done or cannot be done. The agent is at fault when it does not identify the "
            "customer, makes the wrong change or none, changes without the customer's yes, or does not tell "
            "the customer what it must (amounts, statuses)."
        )

    async def seed(self, task: dict[str, Any]) -> dict[str, Any]:
        """The shipped world, and the expected outcome from playing the task's expected actions on it."""
        desk_task = resolve_task(task)
        db = load_world()
        if desk_task.user_id not in db["users"]:
            raise SeedError(f"env_seed: user_id {desk_task.user_id!r} is not in the world")
        expected, transfer = db, False
        for i, action in enumerate(desk_task.expected_actions):
            if action.name not in TOOLS:
                raise SeedError(f"env_seed expected_actions[{i}]: unknown tool {action.name!r}")
            try:
                _, expected = TOOLS[action.name](expected, **action.arguments)
            except (DeskError, TypeError) as exc:
                raise SeedError(f"env_seed expected_actions[{i}] ({action.name}): {exc}") from None
            transfer = transfer or action.name == "transfer_to_human_agents"
        return {
            "task_id": desk_task.id,
            "db": db,
            "user_id": None,
            "transferred": False,
            "actions": [],
            "expected": {
                "users": db_hash(expected, ("users",)),
                "orders": db_hash(expected, ("orders",)),
                "transferred": transfer,
            },
            "required_facts": desk_task.required_facts,
        }

    def is_done(self, state: dict[str, Any]) -> bool:
        """A transfer to a human ends the conversation; otherwise the customer ends it."""
        return state["transferred"]

    async def call_tool(self, state: dict[str, Any], actor: Actor, name: str, arguments: dict[str, Any]) -> ToolResult:
        """One desk tool call by the agent; refusals (policy or data) come back as errors with the state unchanged."""
        if actor != "policy" or name not in TOOLS:
            return _refuse(state, f"{actor} cannot call {name!r}")
        user_id = state["user_id"]
        if name in OWN_DATA_TOOLS:
            if user_id is None:
                return _refuse(
                    state, "authenticate the customer first (find_user_id_by_email or find_user_id_by_name_zip)"
                )
            owner = arguments.get("user_id") or state["db"]["orders"].get(arguments.get("order_id"), {}).get("user_id")
            if owner is not None and owner != user_id:
                return _refuse(state, f"that belongs to another customer; the authenticated customer is {user_id}")
        try:
            result, db = TOOLS[name](state["db"], **arguments)
        except (DeskError, TypeError) as exc:
            return _refuse(state, str(exc))
        new_state = state
        if name in AUTH_TOOLS:
            new_state = {**state, "user_id": result}
        elif name in WRITE_TOOLS:
            new_state = {**state, "db": db, "actions": [*state["actions"], {"name": name, "arguments": arguments}]}
        elif name == "transfer_to_human_agents":
            new_state = {**state, "transferred": True}
        return ToolResult(content=orjson.dumps(result).decode(), state=new_state)

    async def verify(self, state: dict[str, Any], messages: Sequence[Any]) -> Verdict:
        """Reward 1 when both tables hash as expected, the transfer matches, and every required fact was told."""
        expected = state["expected"]
        told = " ".join(_policy_texts(messages))
        missing = [fact for fact in state["required_facts"] if not _fact_told(fact, told)]
        components = {
            "users": float(db_hash(state["db"], ("users",)) == expected["users"]),
            "orders": float(db_hash(state["db"], ("orders",)) == expected["orders"]),
            "transfer": float(state["transferred"] == expected["transferred"]),
            "facts": 1.0 - len(missing) / len(state["required_facts"]) if state["required_facts"] else 1.0,
        }
        return Verdict(
            reward=float(all(value == 1.0 for value in components.values())),
            components=components,
            result={
                "task_id": state["task_id"],
                "db_hash": db_hash(state["db"]),
                "actions": state["actions"],
                "facts_missing": missing,
                "rule_breaks": rule_breaks(messages),
            },
        )


def _refuse(state: dict[str, Any], message: str) -> ToolResult:
    return ToolResult(content=orjson.dumps({"error": message}).decode(), state=state, is_error=True)


def _as_wire(message: Any) -> dict[str, Any]:
    """Role, content and raw tool calls of a LangChain message or a wire dict."""
    if isinstance(message, Mapping):
        return dict(message)
    role = {"ai": "assistant", "human": "user", "tool": "tool", "system": "system"}[message.type]
    return {
        "role": role,
        "content": message.content,
        "tool_calls": message.additional_kwargs.get("tool_calls") if role == "assistant" else None,
        "actor": message.additional_kwargs.get("actor"),
    }


def _policy_texts(messages: Sequence[Any]) -> list[str]:
    """What the agent said to the customer (its visible text, tool calls excluded)."""
    texts = []
    for message in map(_as_wire, messages):
        if message["role"] == "assistant" and isinstance(message.get("content"), str):
            texts.append(message["content"])
    return texts


def _fact_told(spellings: Sequence[str], text: str) -> bool:
    """A number is told when the same amount appears (74.9 = $74.90, sign ignored); words by substring."""
    numbers = {abs(float(n.replace(",", ""))) for n in _NUMBER.findall(text)}
    for spelling in spellings:
        try:
            if abs(float(spelling)) in numbers:
                return True
        except ValueError:
            if spelling.lower() in text.lower():
                return True
    return False


def rule_breaks(messages: Sequence[Any]) -> list[str]:
    """Changes made without a fresh yes from the customer, or several changes after one yes (diagnostic only)."""
    breaks: list[str] = []
    confirmed = False
    for message in map(_as_wire, messages):
        if message["role"] == "user" and message.get("actor") != "env":
            confirmed = bool(_YES.search(str(message.get("content") or "")))
        elif message["role"] == "assistant":
            writes = [
                c["function"]["name"] for c in message.get("tool_calls") or () if c["function"]["name"] in WRITE_TOOLS
            ]
            if len(writes) > 1:
                breaks.append(f"{len(writes)} changes in one reply ({', '.join(writes)})")
            for name in writes:
                if not confirmed:
                    breaks.append(f"{name} without a yes from the customer since the last change")
                confirmed = False
    return breaks
