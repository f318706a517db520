"""Fault injection for the scripted model server: what a collection meets when its model server misbehaves.

Each generation request (`POST /v1/chat/completions` or `/v1/completions`) draws one fault, seeded:
- `error`: vLLM's 500 body, at once (the responder is not asked);
- `reset`: the connection is dropped with a TCP reset before any answer (the client sees
  `Connection reset by peer`);
- `slow`: the answer comes `slow_s` seconds late (longer than a client's time-out, it is a time-out);
- `ok`: answered as the scripted server answers.
Other endpoints are never touched. With a log file, every generation request appends one JSON line
(`t`, `fault`, `session` (the X-Session-ID header), `model`, `body`: a hash of the body): a retry sends
the same body, so attempts per call can be counted, across a restart too (each process appends).

    python -m sparring.testing.faults --preset tictactoe --port 8123 --errors 0.2 --resets 0.05 \\
        --slow 0.05 --slow-s 3 --seed 1 --log faults.jsonl      # first stdout line: the base URL

`bench/faults.py` runs `sparring collect` against it and restarts it in the middle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from sparring.testing import FakeModelServer
from sparring.testing.responders import Responder, calendar_players, support_desk_players, tictactoe_players

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
PLAYERS: dict[str, Callable[[], dict[str, Responder]]] = {
    "tictactoe": tictactoe_players,
    "calendar": calendar_players,
    "support-desk": support_desk_players,
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Faults:
    """The share of generation requests answered with each fault (the rest are answered normally)."""

    errors: float = 0.0
    resets: float = 0.0
    slow: float = 0.0
    slow_s: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        shares = (self.errors, self.resets, self.slow)
        if any(not 0.0 <= share <= 1.0 for share in shares) or sum(shares) > 1.0:
            raise ValueError(f"fault shares must be in [0, 1] and sum to at most 1, got {shares}")
        if not self.slow_s >= 0.0:
            raise ValueError(f"slow_s must be at least 0, got {self.slow_s}")


class FaultyModelServer(FakeModelServer):
    """The scripted server with faults drawn per generation request (see the module docstring)."""

    def __init__(self, responders: dict[str, Responder], faults: Faults, *, log: Path | None = None, **options: Any):
        super().__init__(responders, **options)
        self.faults = faults
        self.counts = {"ok": 0, "error": 0, "reset": 0, "slow": 0}
        self._random = random.Random(faults.seed)
        self._log = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log is not None else None

    def app(self) -> web.Application:
        """The scripted server's application with the fault middleware innermost."""
        app = super().app()
        app.middlewares.append(self._inject)
        return app

    def draw(self) -> str:
        """One fault, by the configured shares."""
        roll = self._random.random()
        for fault, share in (("error", self.faults.errors), ("reset", self.faults.resets), ("slow", self.faults.slow)):
            if roll < share:
                return fault
            roll -= share
        return "ok"

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path not in GENERATION_PATHS:
            return await handler(request)
        body = await request.read()  # aiohttp keeps it: the handler reads it again
        fault = self.draw()
        self.counts[fault] += 1
        if self._log is not None:
            entry = {
                "t": round(time.time(), 4),
                "fault": fault,
                "session": request.headers.get("X-Session-ID"),
                "model": orjson.loads(body).get("model") if body.startswith(b"{") else None,
                "body": hashlib.blake2b(body, digest_size=8).hexdigest(),
            }
            os.write(self._log, orjson.dumps(entry) + b"\n")
        if fault == "error":
            body_500 = {"error": {"message": "Internal Server Error", "type": "InternalServerError", "code": 500}}
            return web.json_response(body_500, status=500)
        if fault == "reset":
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:  # linger 0: close sends a reset, not a graceful end
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        return await handler(request)

    async def close(self) -> None:
        await super().close()
        if self._log is not None:
            os.close(self._log)
            self._log = None


async def serve(args: argparse.Namespace) -> None:
    """Serve until cancelled; the first stdout line is the base URL."""
    faults = Faults(errors=args.errors, resets=args.resets, slow=args.slow, slow_s=args.slow_s, seed=args.seed)
    server = FaultyModelServer(
        PLAYERS[args.preset](),
        faults,
        log=args.log,
        fallback="policy",
        host=args.host,
        port=args.port,
        record=False,
    )
    async with server:
        print(server.base_url, flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """`python -m sparring.testing.faults`: the scripted server with faults, until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m sparring.testing.faults", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--preset", choices=sorted(PLAYERS), default="tictactoe")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--errors", type=float, default=0.0, help="share of requests answered 500")
    parser.add_argument("--resets", type=float, default=0.0, help="share of connections reset before an answer")
    parser.add_argument("--slow", type=float, default=0.0, help="share of answers sent --slow-s seconds late")
    parser.add_argument("--slow-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", type=Path, help="append one JSON line per generation request")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
