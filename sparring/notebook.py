"""What the notebooks share: which model servers to use, and a rollout's page framed for a notebook.

The notebooks in `notebooks/` are thin faces over `build_graph` and `run_episode`. This module only
decides where the models are, so one notebook runs in CI against the scripted server and on a
researcher's machine against real models:

- scripted (the default): a `FakeModelServer` started in the notebook's own event loop, in token
  mode tito (it renders prompts itself, as vLLM does with `--enable-scale-out`);
- real, when `SPARRING_NOTEBOOK_MODEL=real` or `SPARRING_POLICY_BASE_URL` is set: endpoints resolved
  exactly as `sparring run` resolves them (`SPARRING_*` variables, then `sparring models up`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sparring.core.settings import EpisodeSettings
from sparring.engine.settings import default_settings, resolve_settings
from sparring.testing import FakeModelServer
from sparring.testing.responders import tictactoe_players
from sparring.testing.tokenizer import FakeTokenizer
from sparring.views.html import rollout_page
from sparring.views.show import Decoder, token_decoder

MODEL_VARIABLE = "SPARRING_NOTEBOOK_MODEL"
"""`real` runs the notebooks on real model servers; anything else (or unset) on the scripted one."""


def wants_real_model() -> bool:
    """Real servers when asked for by name, or when an endpoint variable is set."""
    return os.environ.get(MODEL_VARIABLE, "").lower() == "real" or bool(os.environ.get("SPARRING_POLICY_BASE_URL"))


@dataclass
class NotebookModels:
    """The settings a notebook runs episodes with, and the scripted server behind them (None when real)."""

    settings: EpisodeSettings
    server: FakeModelServer | None

    @property
    def description(self) -> str:
        """One line saying which servers the episodes go to."""
        kind = "scripted model server" if self.server else "real model servers"
        mode = "" if self.server else f", token mode {self.settings.token_mode}"
        return (
            f"{kind}: policy {self.settings.policy_model} at {', '.join(self.settings.policy_base_urls)}, "
            f"user {self.settings.user_model} at {', '.join(self.settings.user_base_urls)}{mode}"
        )

    @property
    def tokenizer(self) -> str | Decoder | None:
        """What decodes token ids for display: the scripted server's tokenizer, else the policy's folder or server."""
        if self.server is not None:
            return FakeTokenizer(self.server.template)
        return self.settings.policy_tokenizer or self.settings.policy_base_urls[0]

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
        return NotebookModels(resolve_settings(env_name), None)
    scripted = dict(responders or tictactoe_players())
    server = FakeModelServer(scripted, fallback="policy" if "policy" in scripted else None)
    await server.start()
    config = replace(
        default_settings(env_name),
        policy_base_urls=[server.base_url],
        user_base_urls=[server.base_url],
        request_timeout_s=30.0,
        token_mode="tito",  # exact ids, as on real models from `models up`
    )
    return NotebookModels(config, server)


def rollout_frame(record: Mapping[str, Any], models: NotebookModels, height: int = 720) -> str:
    """The page `sparring show --html` writes for this record, framed so its styles stay out of the notebook.

    Token text is decoded for display only, by `models.tokenizer`.
    """
    page = rollout_page(dict(record), token_decoder(models.tokenizer))
    return (  # wrapped in a div: IPython's HTML() warns about a bare iframe
        f'<div><iframe srcdoc="{html.escape(page, quote=True)}" title="rollout {html.escape(str(record.get("id")))}" '
        f'style="width: 100%; height: {height}px; border: 1px solid #ddd"></iframe></div>'
    )
