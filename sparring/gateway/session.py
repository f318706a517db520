"""One gateway session: who opened it, what with, its branches (ledgers), counters, and whether it is ending.

A session has two ids. `id` is public: the record's `id`, the `X-Session-ID` header the policy
server sees, what listings show. Its handle (`session_id` in the API, in every URL of the session)
is a secret returned once, to whoever opened the session: holding it is owning the session. The
gateway keeps only the handle's SHA-256 (`key`), never the handle itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from sparring.gateway.branches import Branches
from sparring.gateway.schemas import SessionLimits

Outcome = tuple[Literal["completed", "truncated", "aborted"], str]


def new_handle() -> tuple[str, bytes]:
    """A fresh session handle (256 random bits) and the key it is found by."""
    handle = secrets.token_urlsafe(32)
    return handle, handle_key(handle)


def handle_key(handle: str) -> bytes:
    """What a handle is stored and looked up as (so lookups leak nothing usable about stored handles)."""
    return hashlib.sha256(handle.encode()).digest()


@dataclass(slots=True)
class Session:
    """One agent run in flight."""

    key: bytes
    owner: bytes | None
    """The credential that opened it (`sparring.web.auth.credential_id`): whose listing shows it."""
    seq: int
    """Its place in the order sessions were opened (the listing's cursor)."""
    task: dict[str, Any]
    metadata: dict[str, Any]
    limits: SessionLimits
    idle_timeout_s: float
    task_index: int | None
    repeat_index: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
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
        """What `GET /v1/sessions/{session_id}` and the listing show of a session in flight (never its handle)."""
        now = time.monotonic()
        return {
            "record_id": self.id,
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
