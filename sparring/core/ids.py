"""Episode ids: unique, and readable in model servers' logs (they travel as `X-Session-ID`)."""

from __future__ import annotations

import uuid


def new_episode_id(task_index: int | None = None, repeat_index: int = 0) -> str:
    """`t<task>-r<repeat>-<12 hex>` for an episode of a batch, `ep-<12 hex>` for a lone one."""
    prefix = "ep" if task_index is None else f"t{task_index}-r{repeat_index}"
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
