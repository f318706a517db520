"""Replicas of one model endpoint: sticky per episode, even spread, failing replicas taken out for a while.

vLLM's prefix cache only helps when every call of an episode reaches the same server, so an episode
(or a gateway session) is pinned to one replica by rendezvous hashing of its id: the spread is even,
and a replica leaving or coming back moves only the episodes that hash to it. A replica that fails
`failure_threshold` times in a row is out for `cooldown_s`; its episodes move to their next choice,
and after the cooldown it gets traffic again (one more failure takes it out again at once).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class ReplicaHealth:
    """What one replica has done so far; `episodes` counts distinct episodes pinned to it."""

    url: str
    requests: int = 0
    failures: int = 0
    episodes: int = 0
    in_flight: int = 0
    consecutive_failures: int = 0
    out_until: float = 0.0
    times_taken_out: int = 0


class ReplicaSet:
    """Chooses a replica per key (episode or session id) and tracks each replica's health."""

    def __init__(
        self,
        urls: tuple[str, ...] | list[str],
        *,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("an endpoint needs at least one base URL")
        self.urls = tuple(urls)
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._health = {url: ReplicaHealth(url) for url in self.urls}
        self._pinned: dict[str, str] = {}

    def pick(self, key: str) -> str:
        """The key's replica: where it is pinned while that replica is in, else its rendezvous choice."""
        pinned = self._pinned.get(key)
        if pinned is not None and (len(self.urls) == 1 or self._is_in(self._health[pinned])):
            return pinned
        url = self._rendezvous(key, self._available())
        self._pin(key, url)
        return url

    def pick_least_loaded(self, key: str) -> str:
        """Pin a new key to the available replica with the fewest requests in flight (ties: fewest pinned keys)."""
        pinned = self._pinned.get(key)
        if pinned is not None and self._is_in(self._health[pinned]):
            return pinned
        candidates = self._available()
        url = min(candidates, key=lambda u: (self._health[u].in_flight, self._health[u].episodes, self.urls.index(u)))
        self._pin(key, url)
        return url

    def release(self, key: str) -> None:
        """Forget a finished episode's pin (its count in `episodes` stays)."""
        self._pinned.pop(key, None)

    def in_use(self) -> bool:
        """Whether any key is pinned here or any request is in flight."""
        return bool(self._pinned) or any(h.in_flight for h in self._health.values())

    def started(self, url: str) -> None:
        """A request to `url` is on its way."""
        health = self._health[url]
        health.requests += 1
        health.in_flight += 1

    def finished(self, url: str, *, ok: bool | None) -> None:
        """A request ended: `ok=False` for 5xx, connection errors and time-outs (not 4xx); None if cancelled."""
        health = self._health[url]
        health.in_flight -= 1
        if ok is None:
            return
        if ok:
            health.consecutive_failures = 0
            return
        health.failures += 1
        health.consecutive_failures += 1
        if len(self.urls) > 1 and health.consecutive_failures >= self.failure_threshold:
            health.out_until = self._clock() + self.cooldown_s
            health.consecutive_failures = self.failure_threshold - 1  # back in on probation: one failure takes it out
            health.times_taken_out += 1

    def stats(self) -> dict[str, dict[str, int | bool]]:
        """Per replica: requests, failures, episodes served, in flight, whether it is in, how often it was out."""
        return {
            url: {
                "requests": h.requests,
                "failures": h.failures,
                "episodes": h.episodes,
                "in_flight": h.in_flight,
                "available": self._is_in(h),
                "times_taken_out": h.times_taken_out,
            }
            for url, h in self._health.items()
        }

    def _pin(self, key: str, url: str) -> None:
        if self._pinned.get(key) != url:
            self._pinned[key] = url
            self._health[url].episodes += 1

    def _is_in(self, health: ReplicaHealth) -> bool:
        return health.out_until <= self._clock()

    def _available(self) -> tuple[str, ...]:
        """The replicas that are in; when every one is out, all of them (failing fast helps nobody)."""
        if len(self.urls) == 1:
            return self.urls
        available = tuple(url for url in self.urls if self._is_in(self._health[url]))
        return available or self.urls

    @staticmethod
    def _rendezvous(key: str, urls: tuple[str, ...]) -> str:
        if len(urls) == 1:
            return urls[0]
        return max(urls, key=lambda url: hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest())
