"""What the notebooks share: which model servers to use, and the token ledger drawn as HTML.

The notebooks in `notebooks/` are thin faces over `build_graph` and `run_episode`. This module only
decides where the models are, so one notebook runs in CI against the scripted server and on a
researcher's machine against real models:

- scripted (the default): a `FakeModelServer` started in the notebook's own event loop;
- real, when `SPARRING_NOTEBOOK_MODEL=real` or `SPARRING_POLICY_BASE_URL` is set: endpoints resolved
  exactly as `sparring run` resolves them (`SPARRING_*` variables, then `sparring models up`).
"""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sparring.graphs.context import EpisodeConfig
from sparring.options import add_episode_options, default_config, episode_config
from sparring.testing import FakeModelServer
from sparring.testing.responders import tictactoe_players
from sparring.testing.tokenizer import TOKEN_STRINGS

MODEL_VARIABLE = "SPARRING_NOTEBOOK_MODEL"
"""`real` runs the notebooks on real model servers; anything else (or unset) on the scripted one."""

TokenText = Callable[[Sequence[int]], list[str]]


def wants_real_model() -> bool:
    """Real servers when asked for by name, or when an endpoint variable is set."""
    return os.environ.get(MODEL_VARIABLE, "").lower() == "real" or bool(os.environ.get("SPARRING_POLICY_BASE_URL"))


@dataclass
class NotebookModels:
    """The settings a notebook runs episodes with, and the scripted server behind them (None when real)."""

    config: EpisodeConfig
    server: FakeModelServer | None

    @property
    def description(self) -> str:
        """One line saying which servers the episodes go to."""
        kind = "scripted model server" if self.server else "real model servers"
        mode = "" if self.server else f", token mode {self.config.token_mode}"
        return (
            f"{kind}: policy {self.config.policy_model} at {', '.join(self.config.policy_base_urls)}, "
            f"user {self.config.user_model} at {', '.join(self.config.user_base_urls)}{mode}"
        )

    def token_text(self) -> TokenText:
        """Display text for token ids: the scripted byte tokenizer, the policy's own tokenizer, or the ids."""
        if self.server is not None:
            return lambda ids: [TOKEN_STRINGS[i] for i in ids]
        if self.config.policy_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.config.policy_tokenizer)
            return lambda ids: [tokenizer.decode([i]) for i in ids]
        return lambda ids: [f"[{i}]" for i in ids]

    async def close(self) -> None:
        """Stop the scripted server, if this notebook started one."""
        if self.server is not None:
            await self.server.close()


async def open_models(env_name: str, responders: Mapping[str, Any] | None = None) -> NotebookModels:
    """Settings for `env_name` on real servers (see module docstring), or on a scripted server started here.

    `responders` script the fake models (default: the tic-tac-toe players); unknown model names go to
    the policy's responder.
    """
    if wants_real_model():
        parser = argparse.ArgumentParser()
        add_episode_options(parser)
        return NotebookModels(episode_config(parser.parse_args([]), env_name), None)
    scripted = dict(responders or tictactoe_players())
    server = FakeModelServer(scripted, fallback="policy" if "policy" in scripted else None)
    await server.start()
    config = replace(
        default_config(env_name),
        policy_base_urls=[server.base_url],
        user_base_urls=[server.base_url],
        request_timeout_s=30.0,
    )
    return NotebookModels(config, server)


_STYLE = """
<style>
.sp-ledger { font-family: ui-monospace, monospace; font-size: 12px; line-height: 1.7; white-space: pre-wrap; }
.sp-ledger .t { box-shadow: inset -1px 0 rgba(0, 0, 0, 0.08); }  /* a hairline between tokens */
.sp-ledger .m0 { background: #e8e8e8; color: #555; }
.sp-ledger .m1 { background: #b9f0c0; color: #000; }
.sp-ledger .sp { font-weight: bold; }
.sp-legend span { padding: 1px 6px; margin-right: 8px; border-radius: 2px; font-family: ui-monospace, monospace; }
</style>
"""


def ledger_html(record: Mapping[str, Any], token_text: TokenText, max_tokens: int | None = None) -> str:
    """The policy's tokens coloured by loss mask (green: trained, grey: context), logprob on hover.

    The text shown per token is for reading only; training data is the ids themselves. `max_tokens`
    shortens each segment's view from the start (the tail, where the later turns are, is kept).
    """
    trajectory = record["trajectory"]
    parts = [_STYLE]
    trained = sum(sum(segment["loss_mask"]) for segment in trajectory["segments"])
    total = sum(len(segment["token_ids"]) for segment in trajectory["segments"])
    parts.append(
        '<div class="sp-legend"><span class="m1">trained (loss_mask 1)</span><span class="m0">context (loss_mask 0)'
        f"</span>{total} tokens, {trained} trained, {len(trajectory['segments'])} segment(s), "
        f"{trajectory['prefix_mismatches']} prefix mismatch(es)</div>"
    )
    for number, segment in enumerate(trajectory["segments"]):
        ids, mask, logprobs = segment["token_ids"], segment["loss_mask"], segment["logprobs"]
        start = 0 if max_tokens is None else max(0, len(ids) - max_tokens)
        texts = token_text(ids[start:])
        spans = []
        for position in range(start, len(ids)):
            text = texts[position - start]
            hover = f"#{position} id {ids[position]}" + (f" logprob {logprobs[position]:.4f}" if mask[position] else "")
            special = " sp" if text.startswith("<|") and text.endswith("|>") else ""
            spans.append(
                f'<span class="t m{mask[position]}{special}" title="{html.escape(hover)}">{html.escape(text)}</span>'
            )
        skipped = f"<i>({start} earlier tokens not shown)</i> " if start else ""
        parts.append(f"<p><b>segment {number}</b></p><div class='sp-ledger'>{skipped}{''.join(spans)}</div>")
    return "\n".join(parts)
