"""Helpers for the gateway tests: a gateway app on uvicorn (its own thread and loop) over the scripted server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sparring.core.ledger import check_invariants
from sparring.core.settings import EpisodeSettings
from sparring.gateway.app import build_gateway, create_app
from sparring.gateway.sessions import Gateway
from sparring.server.background import BackgroundServer


class RunningGateway:
    """A gateway serving at `url`; `gateway` is the object behind it (touch it only between requests)."""

    def __init__(self, server: BackgroundServer, gateway: Gateway) -> None:
        self.server = server
        self.gateway = gateway
        self.url = server.base_url


@contextmanager
def running_gateway(
    base_urls: list[str],
    *,
    api_key: str | None = None,
    output: Path | None = None,
    idle_timeout_s: float = 600.0,
    options: dict[str, Any] | None = None,
    **settings: Any,
) -> Iterator[RunningGateway]:
    """`with running_gateway([fake.base_url]) as gw:` serves a gateway in front of those replicas.

    `options` go to `build_gateway` (keep_ended, ...), `settings` to the policy endpoint's EpisodeSettings.
    """
    config = EpisodeSettings(policy_base_urls=base_urls, **{"request_timeout_s": 5.0, **settings})
    registry = CollectorRegistry()
    gateway = build_gateway(config, idle_timeout_s=idle_timeout_s, output=output, registry=registry, **(options or {}))
    app = create_app(gateway, api_key=api_key, registry=registry)
    with BackgroundServer(app) as server:
        yield RunningGateway(server, gateway)


def assert_exact_ledger(record: dict[str, Any]) -> None:
    """The ledger contract of our own episodes: sound segments, one trained token per sampled token, logprobs."""
    trajectory = record["trajectory"]
    assert check_invariants(trajectory) == []
    trained = sum(sum(seg["loss_mask"]) for seg in trajectory["segments"])
    assert trained == record["usage"]["policy"]["completion_tokens"] > 0
    assert trained == sum(call["completion_len"] for call in trajectory["calls"])
    for seg in trajectory["segments"]:
        assert all(lp < 0 for lp, m in zip(seg["logprobs"], seg["loss_mask"], strict=True) if m)
