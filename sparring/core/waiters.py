"""Tasks parked until a condition may have changed: the wait-and-recheck loop that `GenerationControl`
(models/generation.py) and the batch runner's adjustable cap (engine/batch.py) both need."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Waiters:
    """Parked tasks, each a future of the loop it runs on, so tasks of several event loops can share one."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._futures)

    async def until(self, ready: Callable[[], bool]) -> None:
        """Return once `ready()` holds, checked now and after each `wake_all` (cancellation leaves no trace)."""
        while not ready():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._futures.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._futures:
                    self._futures.remove(waiter)

    def wake_all(self, *, threadsafe: bool = False) -> None:
        """Let every parked task check its condition again. `threadsafe`: the caller may be on another
        thread than a waiter's loop, so each is woken through its own loop."""
        futures, self._futures = self._futures, []
        for waiter in futures:
            if waiter.done():
                continue
            if threadsafe:
                waiter.get_loop().call_soon_threadsafe(_release, waiter)
            else:
                waiter.set_result(None)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
