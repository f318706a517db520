"""A readable, live transcript of an episode: who acted, what was said, tool calls and their results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from sparring.core.messages import raw_tool_calls

Printer = Callable[[str], None]


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])


def format_message(message: BaseMessage, *, view: str) -> str:
    """One message as transcript lines; `view` is whose history it is in (policy or user)."""
    other = "user" if view == "policy" else "policy"
    if isinstance(message, AIMessage):
        lines = []
        if isinstance(message.content, str) and message.content.strip():
            lines.append(f"{view:>6} says:\n{_indent(message.content.strip())}")
        for call in raw_tool_calls(message):
            function = call["function"]
            lines.append(f"{view:>6} calls {function['name']}({function['arguments']})")
        if message.response_metadata.get("finish_reason") == "length":
            lines.append(f"{view:>6} was cut off (finish_reason length)")
        return "\n".join(lines) or f"{view:>6} said nothing"
    if isinstance(message, ToolMessage):
        marker = "error" if message.status == "error" else "result"
        return f"{'env':>6} {marker} for {view}:\n{_indent(str(message.content))}"
    if isinstance(message, SystemMessage):
        return f"{'system':>6} ({view}'s prompt):\n{_indent(str(message.content))}"
    actor = message.additional_kwargs.get("actor") or other
    who = actor if actor == other else f"{actor} (to {view})"
    return f"{who:>6} says:\n{_indent(str(message.content))}"


def print_update(node: str, update: dict[str, Any], out: Printer = print) -> None:
    """Print what one node added: policy-view messages, and the user's own steps (hidden from the policy)."""
    if not update:
        return
    if node == "seed":
        for message in update.get("messages") or ():
            out(format_message(message, view="policy"))
        out("")
        return
    if node in ("user", "user_tools"):
        for message in update.get("user_messages") or ():
            if not isinstance(message, HumanMessage):  # what the user was shown is the policy's turn, printed already
                out(format_message(message, view="user"))
        for message in update.get("messages") or ():
            if message.additional_kwargs.get("actor") == "env":
                out(format_message(message, view="policy"))
    else:
        for message in update.get("messages") or ():
            out(format_message(message, view="policy"))
    if update.get("status"):
        error = update.get("error")
        reason = f"{update['status']} ({update.get('stop_reason')})"
        out(f"-- episode ends: {reason}" + (f": {error['message']}" if error else ""))
    if node == "verify" and "reward" in update:
        out(f"-- reward: {update['reward']}  {update.get('env_result') or ''}")
