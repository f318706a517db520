"""A deterministic byte-level tokenizer and a fixed ChatML chat template, for the scripted server.

Every UTF-8 byte is one token (id = byte + `NUM_SPECIAL`); the few special tokens come first. The
template is Qwen-like, so rendering a conversation, generating `reply + <|im_end|>`, and rendering the
conversation again with that reply appended gives a prompt that starts with the first prompt plus the
generated ids: the property a token ledger relies on. The `rewriting` variant breaks it on purpose by
re-rendering earlier assistant messages differently from how they were generated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, IM_START, IM_END)
NUM_SPECIAL = len(SPECIAL_TOKENS)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = range(NUM_SPECIAL)
VOCAB_SIZE = NUM_SPECIAL + 256

Template = Literal["chatml", "rewriting"]
TEMPLATES: tuple[str, ...] = ("chatml", "rewriting")

DEFAULT_SYSTEM = "You are a helpful assistant."
TOOLS_HEADER = "\n\n# Tools\n\n"
_TOOLS_INTRO = "You may call one or more functions. Their signatures are listed inside <tools></tools>:\n<tools>\n"
_TOOLS_OUTRO = (
    "\n</tools>\n\nTo call a function, write a JSON object with its name and arguments inside "
    '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-object>}\n'
    "</tool_call>"
)

_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIAL_TOKENS) + ")")
_SPECIAL_IDS = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
_PIECES: tuple[bytes, ...] = tuple(s.encode() for s in SPECIAL_TOKENS) + tuple(bytes([b]) for b in range(256))
_PIECES_NO_SPECIAL: tuple[bytes, ...] = (b"",) * NUM_SPECIAL + _PIECES[NUM_SPECIAL:]
_shift_up = NUM_SPECIAL.__add__


def _token_string(token_id: int) -> str:
    """How a token is shown in logprobs: the special string, the ASCII character, or `<0xNN>`."""
    if token_id < NUM_SPECIAL:
        return SPECIAL_TOKENS[token_id]
    byte = token_id - NUM_SPECIAL
    return chr(byte) if byte < 0x80 else f"<0x{byte:02X}>"


TOKEN_STRINGS: tuple[str, ...] = tuple(_token_string(i) for i in range(VOCAB_SIZE))
TOKEN_BYTES: tuple[list[int], ...] = tuple(list(piece) for piece in _PIECES)


def encode(text: str) -> list[int]:
    """Byte-level ids; special-token strings in the text become their special ids, as in HF tokenizers."""
    if "<|" not in text:
        return list(map(_shift_up, text.encode()))
    ids: list[int] = []
    for i, part in enumerate(_SPECIAL_RE.split(text)):
        if i % 2:
            ids.append(_SPECIAL_IDS[part])
        elif part:
            ids.extend(map(_shift_up, part.encode()))
    return ids


def decode(ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """The text of `ids`; a sequence cut inside a multi-byte character decodes with U+FFFD."""
    pieces = _PIECES_NO_SPECIAL if skip_special_tokens else _PIECES
    return b"".join(map(pieces.__getitem__, ids)).decode("utf-8", "replace")


_ASSISTANT_HEADER = [IM_START_ID, *(byte + NUM_SPECIAL for byte in b"assistant\n")]


def split_open_reply(ids: list[int]) -> tuple[list[int], list[int]]:
    """A prompt that ends inside an assistant turn, split into (prompt up to the turn's header, the reply
    so far); a prompt that does not gives (ids, []). The token endpoint continues such a reply."""
    try:
        start = len(ids) - 1 - ids[::-1].index(IM_START_ID)
    except ValueError:
        return ids, []
    body = start + len(_ASSISTANT_HEADER)
    if ids[start:body] != _ASSISTANT_HEADER or IM_END_ID in ids[body:] or body == len(ids):
        return ids, []
    return ids[:body], ids[body:]


def content_text(content: Any) -> str:
    """The text of an OpenAI message `content`: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))


def _dumps(value: Any) -> str:
    """JSON the way the template writes it (Python's default separators, like Jinja's `tojson`)."""
    return json.dumps(value, ensure_ascii=False)


def render_arguments(arguments: Any, compact: bool = False) -> str:
    """Tool-call arguments as the template writes them: JSON text is re-dumped, malformed text kept."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return arguments
    if compact:
        return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    return _dumps(arguments)


def render_tool_call(name: str, arguments: Any, compact: bool = False) -> str:
    """One `<tool_call>` block; `compact` is the rewriting template's one-line form."""
    arguments = render_arguments(arguments, compact)
    if compact:
        return f'<tool_call>{{"name":{_dumps(name)},"arguments":{arguments}}}</tool_call>'
    return f'<tool_call>\n{{"name": {_dumps(name)}, "arguments": {arguments}}}\n</tool_call>'


def render_assistant_body(text: str, tool_calls: Sequence[tuple[str, Any]] = (), rewrite: bool = False) -> str:
    """An assistant turn's text between `<|im_start|>assistant\\n` and `<|im_end|>`.

    Without `rewrite` this is exactly what the scripted model generates. With it, the text's whitespace
    is collapsed and tool calls are compacted, as history-rewriting templates do.
    """
    if rewrite:
        text = " ".join(text.split())
    blocks = [render_tool_call(name, arguments, rewrite) for name, arguments in tool_calls]
    if text:
        blocks.insert(0, text)
    return "\n".join(blocks)


def _message_tool_calls(message: Mapping[str, Any]) -> list[tuple[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function", call)
        calls.append((function.get("name", ""), function.get("arguments", {})))
    return calls


def _render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    return TOOLS_HEADER + _TOOLS_INTRO + "\n".join(_dumps(tool) for tool in tools) + _TOOLS_OUTRO


def render_messages(
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    template: Template = "chatml",
) -> str:
    """The prompt text: ChatML blocks, tools inside the system block, tool results as user blocks."""
    rewrite = template == "rewriting"
    parts: list[str] = []
    start = 0
    system: str | None
    if messages and messages[0].get("role") == "system":
        system = content_text(messages[0].get("content"))
        start = 1
    else:
        system = DEFAULT_SYSTEM if tools else None
    if system is not None:
        parts.append(f"{IM_START}system\n{system}{_render_tools(tools) if tools else ''}{IM_END}\n")
    in_tool_block = False
    for message in messages[start:]:
        role = message.get("role")
        if role == "tool":
            if not in_tool_block:
                parts.append(f"{IM_START}user")
            parts.append(f"\n<tool_response>\n{content_text(message.get('content'))}\n</tool_response>")
            in_tool_block = True
            continue
        if in_tool_block:
            parts.append(f"{IM_END}\n")
            in_tool_block = False
        text = content_text(message.get("content"))
        if role == "assistant":
            text = render_assistant_body(text, _message_tool_calls(message), rewrite)
        parts.append(f"{IM_START}{role}\n{text}{IM_END}\n")
    if in_tool_block:
        parts.append(f"{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


class FakeTokenizer:
    """An HF-tokenizer-like object over the byte-level vocabulary and one of the fixed templates."""

    eos_token = IM_END
    eos_token_id = IM_END_ID
    pad_token_id = ENDOFTEXT_ID
    vocab_size = VOCAB_SIZE

    def __init__(self, template: Template = "chatml") -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
        self.template: Template = template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Byte ids, special-token strings mapped to their ids; there is no BOS to add either way."""
        return encode(text)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        return decode(ids, skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
    ) -> list[int] | str:
        """The rendered prompt, as ids (default) or text, like `transformers`' method of that name."""
        text = render_messages(messages, tools, add_generation_prompt, self.template)
        return encode(text) if tokenize else text


_BLOCK_RE = re.compile(re.escape(IM_START) + r"(\w+)\n(.*?)(" + re.escape(IM_END) + r"\n?|$)", re.DOTALL)
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_TOOL_RESPONSE_RE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)
_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]*)"')
_ARGUMENTS_RE = re.compile(r'"arguments"\s*:\s*(.*)\}\s*$', re.DOTALL)


def parse_tool_call(text: str, call_id: str) -> dict[str, Any]:
    """An OpenAI tool call from the JSON inside a `<tool_call>` block; malformed arguments stay raw text."""
    try:
        call = json.loads(text)
        name, arguments = call["name"], _dumps(call.get("arguments", {}))
    except (ValueError, KeyError, TypeError):
        name_match, arguments_match = _NAME_RE.search(text), _ARGUMENTS_RE.search(text)
        name = name_match.group(1) if name_match else ""
        arguments = arguments_match.group(1).strip() if arguments_match else text
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_system(text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    content, _, tools_text = text.partition(TOOLS_HEADER)
    tools_text = tools_text.partition("<tools>\n")[2].partition("\n</tools>")[0]
    tools = [json.loads(line) for line in tools_text.splitlines() if line.strip()]
    return {"role": "system", "content": content}, tools


def _parse_assistant(text: str, index: int) -> dict[str, Any]:
    blocks = _TOOL_CALL_RE.findall(text)
    calls = [parse_tool_call(block, f"call_{index}_{k}") for k, block in enumerate(blocks)]
    if not calls:
        return {"role": "assistant", "content": text}
    content = text[: text.index("<tool_call>")].rstrip("\n")
    return {"role": "assistant", "content": content or None, "tool_calls": calls}


def parse_prompt(text: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Messages and tools back from a rendered prompt, for the token-in `/v1/completions` path.

    The trailing generation prompt is dropped. Tool results get the ids of the calls they answer, in
    order; those ids are made up (`call_<message>_<k>`) because the template does not render them.
    """
    messages: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] = []
    pending_ids: list[str] = []
    for match in _BLOCK_RE.finditer(text):
        role, body, end = match.groups()
        if not end and role == "assistant" and not body:
            continue
        if role == "system" and not messages:
            system, tools = _parse_system(body)
            messages.append(system)
        elif role == "assistant":
            message = _parse_assistant(body, len(messages))
            pending_ids = [call["id"] for call in message.get("tool_calls", ())]
            messages.append(message)
        elif role == "user" and body.startswith("<tool_response>"):
            for result in _TOOL_RESPONSE_RE.findall(body):
                call_id = pending_ids.pop(0) if pending_ids else ""
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        else:
            messages.append({"role": role, "content": body})
    return messages, tools
