"""What TRL's GRPOTrainer's loss saw, for the tests that hold it against the ledger (scripted and real model)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sparring.integrations.samples import EpisodeSample

Row = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(prompt ids, completion ids, loss mask over the completion)."""


def recording_trainer(seen: list[dict[str, Any]]) -> type:
    """TRL's GRPOTrainer, keeping every batch its `compute_loss` receives (and the loss) in `seen`."""
    import torch
    from trl import GRPOTrainer

    class Recording(GRPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen[-1]["loss"] = float(loss.detach())
            return loss

    return Recording


def loss_rows(seen: Iterable[dict[str, Any]]) -> list[Row]:
    """Every row the loss saw, padding cut off, sorted: the prompt, the completion and its tool (env) mask."""
    rows = []
    for batch in seen:
        for p_ids, p_mask, c_ids, c_mask, tool in zip(
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["completion_ids"],
            batch["completion_mask"],
            batch["tool_mask"],
            strict=True,
        ):
            n = int(c_mask.sum())
            rows.append((tuple(p_ids[p_mask.bool()].tolist()), tuple(c_ids[:n].tolist()), tuple(tool[:n].tolist())))
    return sorted(rows)


def ledger_rows(samples: Iterable[EpisodeSample]) -> list[Row]:
    """The same rows as the ledger has them, sorted: the first call's prompt, then all the episode said after."""
    return sorted((tuple(s.prompt_ids), tuple(s.response_ids), tuple(s.response_mask)) for s in samples)
