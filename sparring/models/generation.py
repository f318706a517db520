"""What the weight-sync protocol changes under running episodes, read by every policy call.

One `GenerationControl` per policy endpoint (its `ModelClient` holds it). The weight sync
(pause / update / resume, `engine/weights.py`) closes it, sets the adapter and version, and opens it
again; a policy call waits while it is closed (`await control.wait_open()`), then sends to the
current adapter. The open check is one attribute read on the hot path; waiters are futures of the
loop they run on, so several event loops (a CLI run, a test, a server) can share a control.
"""

from __future__ import annotations

from sparring.core.waiters import Waiters


class GenerationControl:
    """Whether policy calls may start, which model name they use, and the version sparring was told."""

    def __init__(self) -> None:
        self.is_open = True
        self.adapter: str | None = None
        """The LoRA adapter policy calls go to (its name, as the server serves it); None: the endpoint's model."""
        self.version: str | None = None
        """The weight version sparring was last told (`update`); None: never told."""
        self._waiters = Waiters()

    async def wait_open(self) -> None:
        """Return at once when open, else when `open()` is called (cancellation leaves no trace)."""
        await self._waiters.until(lambda: self.is_open)

    def close(self) -> None:
        """New policy calls wait from now on."""
        self.is_open = False

    def open(self) -> None:
        """Waiting policy calls go on."""
        self.is_open = True
        self._waiters.wake_all(threadsafe=True)

    @property
    def waiting(self) -> int:
        """Policy calls waiting right now."""
        return len(self._waiters)
