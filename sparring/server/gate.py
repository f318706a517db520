"""Overload control: a bound on episodes playing at once, a bounded queue in front of it, 429 past the queue.

A request first *claims* room for the episodes it may run at once (a single rollout: its repeats; a
batch: its concurrency). Claims beyond `max_running + max_queued` are refused up front with a
Retry-After estimate, so a request is either admitted whole or not at all. An admitted episode
then waits for one of the `max_running` slots, first come first served. `drain` (on shutdown) wakes
every waiter with "no", so nothing new starts.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class Overloaded(Exception):
    """No room for this request; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EpisodeGate:
    """Slots for running episodes plus a bounded queue of admitted ones (see the module docstring)."""

    def __init__(self, max_running: int, max_queued: int) -> None:
        if max_running < 1 or max_queued < 0:
            raise ValueError("max_running must be at least 1 and max_queued at least 0")
        self.max_running = max_running
        self.max_queued = max_queued
        self.claimed = 0
        self.running = 0
        self.draining = False
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._mean_episode_s = 1.0

    @property
    def queued(self) -> int:
        """Episodes admitted but not playing (waiting for a slot, or between a batch's episodes)."""
        return max(self.claimed - self.running, 0)

    def claim(self, episodes: int) -> None:
        """Admit room for `episodes` at once, or raise Overloaded."""
        capacity = self.max_running + self.max_queued
        if self.claimed + episodes > capacity:
            raise Overloaded(
                f"server is full: {self.running} episodes running (--max-concurrent-episodes {self.max_running}), "
                f"{self.queued} queued (--max-queued-episodes {self.max_queued}); this request needs room for "
                f"{episodes}",
                self.retry_after(),
            )
        self.claimed += episodes

    def unclaim(self, episodes: int) -> None:
        """Give back room a request no longer needs."""
        self.claimed = max(self.claimed - episodes, 0)

    async def acquire(self) -> bool:
        """Wait for a slot; False when the server is draining (the episode must not start)."""
        if self.draining:
            return False
        if self.running < self.max_running and not self._waiters:
            self.running += 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # the slot was handed over just as we were cancelled
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self, episode_s: float | None = None) -> None:
        """Free a slot (handing it to the next waiter); `episode_s` feeds the Retry-After estimate."""
        if episode_s is not None:
            self._mean_episode_s += 0.1 * (episode_s - self._mean_episode_s)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)  # the slot passes on: `running` stays the same
                return
        self.running = max(self.running - 1, 0)

    def drain(self) -> None:
        """Start nothing new: current and future waiters get False."""
        self.draining = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)

    def retry_after(self) -> int:
        """Seconds until room is likely: the queue ahead, at the mean episode time, spread over the slots."""
        ahead = self.queued + 1
        return min(max(math.ceil(self._mean_episode_s * ahead / self.max_running), 1), 300)
