"""One gateway session: what it was opened with, its branches (ledgers), counters, and whether it is ending."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from sparring.gateway.branches import Branches
from sparring.gateway.schemas import SessionLimits

Outcome = tuple[Literal["completed", "truncated", "aborted"], str]


@dataclass(slots=True)
class Session:
    """One agent run in flight."""

    id: str
    task: dict[str, Any]
    metadata: dict[str, Any]
    limits: SessionLimits
    idle_timeout_s: float
    task_index: int | None
    repeat_index: int
    created_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    branches: Branches = field(default_factory=Branches)
    num_calls: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_s: float = 0.0
    truncation: str | None = None
    unrecorded: list[dict[str, Any]] = field(default_factory=list)
    closing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def summary(self) -> dict[str, Any]:
        """What `GET /v1/sessions/{id}` shows of a session in flight."""
        now = time.monotonic()
        return {
            "session_id": self.id,
            "status": "finishing" if self.closing else "active",
            "created_at": self.created_at,
            "idle_s": round(now - self.last_active, 3) if not self.in_flight else 0.0,
            "idle_timeout_s": self.idle_timeout_s,
            "num_calls": self.num_calls,
            "in_flight": self.in_flight,
            "branches": len(self.branches.items),
            "prefix_mismatches": sum(b.ledger()["prefix_mismatches"] for b in self.branches.items),
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "truncation": self.truncation,
            "unrecorded_calls": len(self.unrecorded),
            "task": self.task,
            "metadata": self.metadata,
            "limits": self.limits.model_dump(),
        }
