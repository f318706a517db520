"""The fault-injecting scripted server (sparring/testing/faults.py) does what bench/faults.py counts on."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from sparring.testing.faults import Faults, FaultyModelServer
from sparring.testing.responders import tictactoe_players

CHAT = {"model": "policy", "messages": [{"role": "user", "content": "Let's play."}]}


async def post(url: str, session: str = "s1") -> int | str:
    """The status of one chat request, or the client error's name."""
    async with aiohttp.ClientSession() as client:
        try:
            async with client.post(f"{url}/chat/completions", json=CHAT, headers={"X-Session-ID": session}) as reply:
                await reply.read()
                return reply.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__


@pytest.mark.parametrize(
    ("faults", "answer"),
    [
        (Faults(errors=1.0), 500),
        (Faults(resets=1.0), "ClientOSError"),
        (Faults(slow=1.0, slow_s=0.0), 200),
        (Faults(), 200),
    ],
)
async def test_each_fault_is_what_a_client_sees_and_every_request_is_logged(
    tmp_path: Path, faults: Faults, answer: int | str
) -> None:
    log = tmp_path / "faults.jsonl"
    async with FaultyModelServer(tictactoe_players(), faults, log=log) as server:
        assert await post(server.base_url) == answer
        assert await post(server.base_url) == answer
        async with aiohttp.ClientSession() as client, client.get(f"{server.base_url}/models") as models:
            assert models.status == 200, "only generation requests draw faults"
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    fault = {500: "error", "ClientOSError": "reset"}.get(answer, "slow" if faults.slow else "ok")
    assert [line["fault"] for line in lines] == [fault, fault]
    assert {line["session"] for line in lines} == {"s1"} and lines[0]["body"] == lines[1]["body"]
    assert server.counts[fault] == 2


def test_shares_are_drawn_as_configured_and_seeded() -> None:
    faults = Faults(errors=0.2, resets=0.05, slow=0.05, seed=7)
    server = FaultyModelServer(tictactoe_players(), faults)
    drawn = [server.draw() for _ in range(20_000)]
    again = FaultyModelServer(tictactoe_players(), faults)
    assert [again.draw() for _ in range(20_000)] == drawn
    shares = {fault: drawn.count(fault) / len(drawn) for fault in ("error", "reset", "slow", "ok")}
    assert shares["error"] == pytest.approx(0.2, abs=0.02) and shares["ok"] == pytest.approx(0.7, abs=0.02)
    assert shares["reset"] == pytest.approx(0.05, abs=0.01) and shares["slow"] == pytest.approx(0.05, abs=0.01)
    with pytest.raises(ValueError, match="sum to at most 1"):
        Faults(errors=0.8, resets=0.3)
