"""Branches: the separate token ledgers of one session, one per line of conversation.

A session may hold several conversations: a call with `n > 1` completions, sub-agents running side
by side, an agent that starts over. Each is a branch with its own ledger; branches are never mixed.
Which branch a call belongs to is decided from its messages (see `history`), at the moment it arrives:

1. **Continuation.** The call's messages start with a branch's whole history (that branch's last
   request plus the reply it took). The longest such history wins. A branch takes one call at a time,
   so a continuation of a branch that is still waiting for its reply forks a new branch instead.
2. **Rewrite.** Otherwise, an idle branch with the same opening (leading system messages plus the
   first message after them), the most recently used one, takes the call: the agent summarised or
   dropped messages. The ledger's prefix check then opens a new segment in that branch and counts it
   as a prefix mismatch; nothing is spliced.
3. **New branch.** Anything else (another opening, or every branch with this opening busy) starts a
   new branch.

With `n > 1`, choice 0 goes to the call's branch and each further choice opens its own branch whose
parent is that call; the history an agent continues with (the choice it kept) then picks the branch.
A new branch's first segment is the call's whole prompt (mask 0) plus its completion (mask 1), so no
sampled token is ever trained twice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from sparring.core.ledger import Ledger, LedgerEntry, ledger_entry, materialize
from sparring.gateway.history import Fingerprint, opening


@dataclass(slots=True)
class Branch:
    """One line of conversation: its ledger entries, the history it expects next, and where it came from."""

    opening: tuple[Fingerprint, ...]
    parent: dict[str, int] | None = None
    """{"branch", "call"} for a branch forked by an `n > 1` call or by a busy continuation."""
    index: int = -1
    """Position in the session's branch list; -1 until its first reply is recorded."""
    history: tuple[Fingerprint, ...] = ()
    messages: list[dict[str, Any]] = field(default_factory=list)
    entries: list[LedgerEntry] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    """Per entry: the gateway call number, the choice index, latency and whether it streamed."""
    busy: bool = False
    last_used: int = 0

    def ledger(self) -> Ledger:
        """Segments, call spans and prefix mismatches of this branch."""
        return materialize(self.entries)


class Branches:
    """The branches of one session, and the rule that sends each call to one of them."""

    def __init__(self) -> None:
        self.items: list[Branch] = []
        self._clock = itertools.count(1)

    def assign(self, prints: tuple[Fingerprint, ...]) -> Branch:
        """The branch a call with these message fingerprints belongs to; it is marked busy until `release`."""
        longest: Branch | None = None
        for branch in self.items:
            size = len(branch.history)
            if size and prints[:size] == branch.history and (longest is None or size > len(longest.history)):
                longest = branch
        if longest is not None:
            chosen = longest if not longest.busy else Branch(longest.opening, self._fork_of(longest))
        else:
            key = opening(prints)
            idle = [b for b in self.items if not b.busy and b.opening == key]
            chosen = max(idle, key=lambda b: b.last_used) if idle else Branch(key)
        chosen.busy = True
        chosen.last_used = next(self._clock)
        return chosen

    def release(self, branch: Branch) -> None:
        """The branch's call ended (answered or not)."""
        branch.busy = False

    def fork(self, branch: Branch, call: int) -> Branch:
        """A new branch for one more choice of `call`, made on `branch`."""
        return Branch(branch.opening, {"branch": branch.index, "call": call}, last_used=next(self._clock))

    def record(
        self,
        branch: Branch,
        request: tuple[list[dict[str, Any]], tuple[Fingerprint, ...]],
        reply: tuple[dict[str, Any], Fingerprint],
        tokens: tuple[list[int], list[int], list[float], str],
        call: dict[str, Any],
    ) -> None:
        """Append one answered choice to its branch's ledger and move the branch's expected history on."""
        messages, prints = request
        prompt_ids, completion_ids, logprobs, finish_reason = tokens
        branch.entries.append(ledger_entry(branch.entries, prompt_ids, completion_ids, logprobs, finish_reason))
        branch.calls.append(call)
        branch.history = (*prints, reply[1])
        branch.messages = [*messages, reply[0]]
        if branch.index < 0:
            branch.index = len(self.items)
            self.items.append(branch)

    def _fork_of(self, branch: Branch) -> dict[str, int]:
        return {"branch": branch.index, "call": branch.calls[-1]["call"] if branch.calls else -1}
