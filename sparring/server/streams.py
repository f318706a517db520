"""How a request's records reach its client: all at once, or streamed as NDJSON as episodes end.

Either way a client that goes away cancels its episodes: a watcher on the connection notices a
disconnect at once (not at the next write), and the request's slots and room are given back however
the response ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from sparring.server.service import Play
from sparring.web.body import dumps

NDJSON = "application/x-ndjson"


class ClientGone(Exception):
    """The client disconnected before its episodes finished; they were cancelled."""


class RecordStream(StreamingResponse):
    """NDJSON records of a batch, one whole line per chunk, then the summary line.

    A client that goes away cancels the stream at once (not at the next write), which cancels the
    batch's running episodes; the batch's slots and room are given back however the stream ends.
    """

    def __init__(self, play: Play) -> None:
        self.play = play
        super().__init__(self._lines(), media_type=NDJSON)

    async def _lines(self) -> AsyncIterator[bytes]:
        async for record in self.play.records():
            yield dumps(record) + b"\n"
        yield dumps({"summary": self.play.summary()}) + b"\n"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.create_task(self.stream_response(send))
        gone = asyncio.create_task(disconnected(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            results = await asyncio.gather(stream, gone, return_exceptions=True)
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.play.release()
        failure = results[0]
        if isinstance(failure, BaseException) and not isinstance(failure, (asyncio.CancelledError, OSError)):
            raise failure


async def collect(play: Play, request: Request) -> list[dict[str, Any]]:
    """All of a request's records; a client that disconnects first cancels its episodes."""

    async def gather() -> list[dict[str, Any]]:
        return [record async for record in play.records()]

    work = asyncio.create_task(gather())
    gone = asyncio.create_task(disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise ClientGone("the client disconnected; its episodes were cancelled")
        return work.result()
    finally:
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
        play.release()


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the request body was read already, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass
