"""The scripted server's tokenizer as a real Hugging Face tokenizer folder, for trainers that load one by path.

verl (and any trainer) loads its tokenizer with `AutoTokenizer.from_pretrained(model_path)`, and sparring's
token-in-token-out mode loads the policy's the same way (`policy_tokenizer`). `save_hf_tokenizer` writes a
folder both can load that speaks exactly the scripted server's language: the same byte-level ids (a BPE
over the 256 byte symbols with no merges, the three special tokens first) and the ChatML template of
`tokenizer.render_messages` written in Jinja. Tool-call arguments that arrive as JSON text are kept as
text (Jinja cannot parse them); sparring's renderer passes them as objects. Needs `transformers`.
"""

from __future__ import annotations

from pathlib import Path

from sparring.testing.tokenizer import (
    _TOOLS_INTRO,
    _TOOLS_OUTRO,
    DEFAULT_SYSTEM,
    ENDOFTEXT,
    IM_END,
    IM_START,
    NUM_SPECIAL,
    SPECIAL_TOKENS,
    TOOLS_HEADER,
)


def _jinja_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


CHATML_TEMPLATE = (
    "{%- macro text(c) -%}{%- if c is string -%}{{ c }}{%- elif c is iterable and c is not mapping -%}"
    "{%- for p in c -%}{{ p.text if p.text is defined else '' }}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{%- macro tools_block() -%}{{- " + _jinja_literal(TOOLS_HEADER + _TOOLS_INTRO) + " -}}"
    "{%- for t in tools -%}{{- t | tojson -}}{%- if not loop.last -%}{{- '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- " + _jinja_literal(_TOOLS_OUTRO) + " -}}{%- endmacro -%}"
    "{%- set ns = namespace(start=0, in_tool=false, body='') -%}"
    "{%- if messages and messages[0].role == 'system' -%}"
    "{{- " + _jinja_literal(IM_START + "system\n") + " + text(messages[0].content) -}}"
    "{%- if tools -%}{{- tools_block() -}}{%- endif -%}{{- " + _jinja_literal(IM_END + "\n") + " -}}"
    "{%- set ns.start = 1 -%}"
    "{%- elif tools -%}"
    "{{- "
    + _jinja_literal(IM_START + "system\n" + DEFAULT_SYSTEM)
    + " + tools_block() + "
    + _jinja_literal(IM_END + "\n")
    + " -}}"
    "{%- endif -%}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if m.role == 'tool' -%}"
    "{%- if not ns.in_tool -%}{{- " + _jinja_literal(IM_START + "user") + " -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(m.content) + '\\n</tool_response>' -}}"
    "{%- set ns.in_tool = true -%}"
    "{%- else -%}"
    "{%- if ns.in_tool -%}{{- " + _jinja_literal(IM_END + "\n") + " -}}{%- set ns.in_tool = false -%}{%- endif -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set ns.body = text(m.content) -%}"
    "{%- for c in (m.tool_calls or []) -%}"
    "{%- set f = c.function if c.function is defined else c -%}"
    "{%- set a = f.arguments if f.arguments is defined else {} -%}"
    "{%- set block = '<tool_call>\\n{\"name\": ' + (f.name | tojson) + ', \"arguments\": ' "
    "+ (a if a is string else (a | tojson)) + '}\\n</tool_call>' -%}"
    "{%- set ns.body = (ns.body + '\\n' + block) if ns.body else block -%}"
    "{%- endfor -%}"
    "{{- " + _jinja_literal(IM_START + "assistant\n") + " + ns.body + " + _jinja_literal(IM_END + "\n") + " -}}"
    "{%- else -%}"
    "{{- "
    + _jinja_literal(IM_START)
    + " + m.role + '\\n' + text(m.content) + "
    + _jinja_literal(IM_END + "\n")
    + " -}}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.in_tool -%}{{- " + _jinja_literal(IM_END + "\n") + " -}}{%- endif -%}"
    "{%- if add_generation_prompt -%}{{- " + _jinja_literal(IM_START + "assistant\n") + " -}}{%- endif -%}"
)
"""`tokenizer.render_messages(..., template="chatml")` as a Hugging Face chat template."""


def _byte_symbols() -> list[str]:
    """The printable stand-in for each byte that byte-level BPE vocabularies use (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def save_hf_tokenizer(folder: str | Path) -> Path:
    """Write the scripted server's tokenizer and chat template into `folder` (made if missing); returns it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab |= {symbol: NUM_SPECIAL + b for b, symbol in enumerate(_byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=None, bos_token=None
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return path
