"""Replicas of one model endpoint: sticky per episode, new episodes to the least-loaded replica, failing
replicas taken out for a while.

vLLM's prefix cache only helps when every call of an episode reaches the same server, so an episode
(or a gateway session) is pinned to one replica when it first calls and stays there. Where it is
pinned is the routing's choice:
- least loaded (`pick_least_loaded`, the default): the replica with the least load right now. Load is
  what this client knows at once, the episodes it has pinned there (or its requests in flight, if
  more), plus, where the server exposes them (vLLM's /metrics, read in the background by the
  transport, never per call), the requests other clients have there: the server's running and waiting
  requests less this client's own in flight when the metrics were read. The server's counts include
  this client's requests, and they are up to a poll old: adding them whole would count a queued request
  twice and keep counting requests that have since finished. Ties go to the replica with fewer of this
  client's requests in flight, then the shorter waiting queue, then the lower KV-cache usage, then in
  turn (not to the replica that served fewest episodes so far: with skewed lengths that is the one
  busy with the long ones).
- rendezvous hashing of the id (`pick`): the spread is even in count, and a replica leaving or coming
  back moves only the episodes that hash to it.
A replica that fails `failure_threshold` times in a row is out for `cooldown_s`; its episodes move to
another replica, and after the cooldown it gets traffic again (one more failure takes it out again at
once). A replica the weight sync took out (`take_out`: it failed a weight update, so its weights are
stale) stays out until `put_back`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """What a server's metrics said at `at` (monotonic seconds): requests running and waiting for every
    client, and the fraction of its KV cache in use (0..1)."""

    running: float
    waiting: float
    kv_cache_usage: float
    at: float


@dataclass(slots=True)
class ReplicaHealth:
    """What one replica has done so far; `episodes` counts distinct episodes pinned to it, `active` those pinned now."""

    url: str
    requests: int = 0
    failures: int = 0
    episodes: int = 0
    active: int = 0
    in_flight: int = 0
    consecutive_failures: int = 0
    out_until: float = 0.0
    times_taken_out: int = 0
    load: ServerLoad | None = None
    in_flight_at_load: int = 0
    """This client's requests in flight when `load` was read (the server counted them too)."""
    removed: str | None = None
    """Why the weight sync took it out (None: it did not); it stays out until put back."""


class ReplicaSet:
    """Chooses a replica per key (episode or session id) and tracks each replica's health."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        load_max_age_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`load_max_age_s`: a server's metrics older than this are ignored (the poller stopped, or the
        server no longer answers them)."""
        if not urls:
            raise ValueError("an endpoint needs at least one base URL")
        self.urls = tuple(urls)
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.load_max_age_s = load_max_age_s
        self._clock = clock
        self._health = {url: ReplicaHealth(url) for url in self.urls}
        self._pinned: dict[str, str] = {}
        self._turn = 0
        """Where the next tie starts looking (index into `urls`)."""

    def pick(self, key: str) -> str:
        """The key's replica: where it is pinned while that replica is in, else its rendezvous choice."""
        pinned = self._pinned.get(key)
        if pinned is not None and (len(self.urls) == 1 or self._is_in(self._health[pinned])):
            return pinned
        url = self._rendezvous(key, self._available())
        self._pin(key, url)
        return url

    def pick_least_loaded(self, key: str) -> str:
        """The key's replica: where it is pinned while that replica is in, else the least loaded one
        (ties as the module docstring says)."""
        pinned = self._pinned.get(key)
        if pinned is not None and (len(self.urls) == 1 or self._is_in(self._health[pinned])):
            return pinned
        count = len(self.urls)
        url = min(self._available(), key=lambda u: (*self._load_key(u), (self.urls.index(u) - self._turn) % count))
        self._turn = (self.urls.index(url) + 1) % count
        self._pin(key, url)
        return url

    def load(self, url: str) -> float:
        """How busy `url` is: see the module docstring (metrics older than `load_max_age_s` are left out)."""
        return self._load_key(url)[0]

    def _load_key(self, url: str) -> tuple[float, int, float, float]:
        """(load, own requests in flight, server's waiting queue, KV-cache usage): least is idlest."""
        health = self._health[url]
        own = max(health.active, health.in_flight)
        server = health.load
        if server is None or self._clock() - server.at > self.load_max_age_s:
            return float(own), health.in_flight, 0.0, 0.0
        others = max(0.0, server.running + server.waiting - health.in_flight_at_load)
        return own + others, health.in_flight, server.waiting, server.kv_cache_usage

    def report_load(self, url: str, load: ServerLoad) -> None:
        """What `url`'s metrics say now (the transport's poller calls this as the reading comes in)."""
        health = self._health[url]
        health.load = load
        health.in_flight_at_load = health.in_flight

    def server_loads(self) -> dict[str, ServerLoad]:
        """The latest metrics of each replica that has fresh ones."""
        now = self._clock()
        return {
            url: h.load
            for url, h in self._health.items()
            if h.load is not None and now - h.load.at <= self.load_max_age_s
        }

    def take_out(self, url: str, reason: str) -> None:
        """Route nothing more to `url` until `put_back` (its episodes move); e.g. its weights are stale."""
        health = self._health[url]
        if health.removed is None:
            health.times_taken_out += 1
        health.removed = reason

    def put_back(self, url: str) -> None:
        """Undo `take_out`."""
        self._health[url].removed = None

    def release(self, key: str) -> None:
        """Forget a finished episode's pin (its count in `episodes` stays)."""
        url = self._pinned.pop(key, None)
        if url is not None:
            self._health[url].active -= 1

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
                "active": h.active,
                "in_flight": h.in_flight,
                "available": self._is_in(h),
                "times_taken_out": h.times_taken_out,
            }
            for url, h in self._health.items()
        }

    def _pin(self, key: str, url: str) -> None:
        previous = self._pinned.get(key)
        if previous != url:
            if previous is not None:
                self._health[previous].active -= 1
            self._pinned[key] = url
            self._health[url].episodes += 1
            self._health[url].active += 1

    def _is_in(self, health: ReplicaHealth) -> bool:
        return health.removed is None and health.out_until <= self._clock()

    def _available(self) -> tuple[str, ...]:
        """The replicas that are in; when every one is out, those not taken out by the weight sync, else all
        (failing fast helps nobody)."""
        if len(self.urls) == 1:
            return self.urls
        available = tuple(url for url in self.urls if self._is_in(self._health[url]))
        if available:
            return available
        return tuple(url for url in self.urls if self._health[url].removed is None) or self.urls

    @staticmethod
    def _rendezvous(key: str, urls: tuple[str, ...]) -> str:
        if len(urls) == 1:
            return urls[0]
        return max(urls, key=lambda url: hashlib.blake2b(f"{key}|{url}".encode(), digest_size=8).digest())
