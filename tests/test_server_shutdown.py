"""SIGTERM in the middle of a batch, on a real `sparring serve` process: drain, grace, aborted records, whole lines.

Nothing here depends on how fast the machine is. The episode that must finish within the grace is
held by the scripted server until SIGTERM has been taken, and then has the whole grace for a few
scripted calls; the stream is read with its own client, and a cut stream fails the test saying so.
The second test reads the stream slowly on purpose: uvicorn's own shutdown timeout (grace + 15 s
before this was fixed) used to cancel a response still being written and cut it before its summary.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from sparring.testing import FakeModelServer, Hang, ModelRequest, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

GRACE_S = 4
# uvicorn's own shutdown timeout was int(grace) + 15 s from when it stopped listening; with grace 0 the
# slow reader pauses this long from then (the margin covers a loaded machine running the timer late).
PAST_UVICORNS_OLD_TIMEOUT_S = 20


class Gated:
    """Plays X. HANG hangs for good; SLOW's first call waits until the test releases it."""

    def __init__(self) -> None:
        self.player = TicTacToePlayer(X_PREFERENCE)
        self.slow_waiting = asyncio.Event()
        self.hang_waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: ModelRequest) -> Any:
        opening = " ".join(str(m.get("content")) for m in request.messages[:2])
        if "HANG" in opening:
            self.hang_waiting.set()
            return Hang(600)
        if "SLOW" in opening and request.call_index == 0:
            self.slow_waiting.set()
            await self.release.wait()
        return self.player(request)


def task(marker: str) -> dict[str, Any]:
    return {"id": marker, "messages": [{"role": "system", "content": "Play X."}, {"role": "user", "content": marker}]}


@asynccontextmanager
async def serve(models: FakeModelServer, *flags: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A `sparring serve` process in front of `models`, and its URL (it listens before it prints it)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sparring.cli", "serve", "--port", "0", *flags),
        *("--policy-base-url", models.base_url, "--user-base-url", models.base_url, "--timeout", "600"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        banner = (await asyncio.wait_for(process.stdout.readline(), 120)).decode()
        yield process, banner.split("listening on ")[1].split()[0]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_to_the_end(stream: httpx.Response) -> bytes:
    """The whole body; a stream cut before its end fails the test, saying so."""
    raw = b""
    try:
        async for chunk in stream.aiter_raw():
            raw += chunk
    except httpx.TransportError as exc:
        lines = raw.count(b"\n")
        pytest.fail(f"the stream was cut after {lines} lines ({len(raw)} bytes), before its summary: {exc!r}")
    return raw


async def accepts_connections(url: str) -> bool:
    """Whether a fresh connection is accepted (never a pooled one, which the server may be closing)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except OSError:
        return False
    writer.close()
    return True


async def test_sigterm_mid_batch_finishes_in_flight_within_grace_and_reports_the_rest_as_aborted() -> None:
    gated = Gated()
    body = {"tasks": [task("SLOW"), task("HANG"), task("never")], "concurrency": 2}
    async with (
        FakeModelServer({"policy": gated, "user": TicTacToePlayer(O_PREFERENCE)}) as models,
        serve(models, "--shutdown-grace", str(GRACE_S)) as (process, url),
    ):
        async with (
            httpx.AsyncClient(base_url=url, timeout=120) as client,
            client.stream("POST", "/v1/rollouts/batch", json=body) as stream,
        ):
            await gated.slow_waiting.wait()  # SLOW and HANG are playing, "never" waits for a slot
            await gated.hang_waiting.wait()
            process.send_signal(signal.SIGTERM)
            assert process.stderr is not None
            said = b""
            while b"shutting down" not in said:  # until the service has taken the signal
                said = await process.stderr.readline()
                assert said, "the server ended without taking SIGTERM"
            gated.release.set()  # SLOW goes on now, within the grace
            raw = await read_to_the_end(stream)
        refused = not await accepts_connections(url)
        returncode = await asyncio.wait_for(process.wait(), 120)
        stderr = (await process.stderr.read()).decode()
    assert refused, "the server still accepted connections after SIGTERM"
    # A clean shutdown; uvicorn then re-raises the signal, so the exit status says what stopped the server.
    assert returncode == -signal.SIGTERM, stderr
    assert raw.endswith(b"\n")
    *records, last = [json.loads(line) for line in raw.decode().splitlines()]  # every line whole and valid
    by_task = {r["task_id"]: r for r in records}
    assert set(by_task) == {"SLOW", "HANG", "never"}
    assert (by_task["SLOW"]["status"], by_task["SLOW"]["reward"]) == ("completed", 1.0)
    for name in ("HANG", "never"):
        assert (by_task[name]["status"], by_task[name]["stop_reason"]) == ("aborted", "interrupted")
        assert by_task[name]["reward"] is None
    assert "started" in by_task["never"]["error"]["message"]
    assert last["summary"]["counts"] == {"completed": 1, "aborted": 2}
    assert last["summary"]["stop_reasons"] == {"env_done": 1, "interrupted": 2}


def tasks_outgrowing_socket_buffers(receive_buffer: int) -> list[dict[str, Any]]:
    """Tasks whose 64 repeats' aborted records outgrow what the kernel holds between server and reader.

    The server's send buffer grows up to `tcp_wmem`'s maximum; past that (and the reader's small
    receive buffer) the server can only go on writing as fast as the reader reads.
    """
    try:
        send_buffer = int(open("/proc/sys/net/ipv4/tcp_wmem").read().split()[2])  # noqa: SIM115
    except (OSError, ValueError, IndexError):
        send_buffer = 4 * 2**20
    records = (send_buffer + 2 * receive_buffer + 2 * 2**20) // 2500  # an aborted record with this id: ~2.6 kB
    return [task(f"never-{i}-" + "x" * 2000) for i in range(records // 64 + 1)]


async def test_a_batch_stream_ends_with_its_summary_however_slowly_it_is_read_after_sigterm() -> None:
    gated = Gated()
    receive_buffer = 256 * 1024
    tasks = [task("HANG"), *tasks_outgrowing_socket_buffers(receive_buffer)]
    body = {"tasks": tasks, "repeats": 64, "concurrency": 2}
    small_window = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)])
    async with (
        FakeModelServer({"policy": gated, "user": TicTacToePlayer(O_PREFERENCE)}) as models,
        serve(models, "--shutdown-grace", "0") as (process, url),
    ):
        async with (
            httpx.AsyncClient(base_url=url, timeout=120, transport=small_window) as client,
            client.stream("POST", "/v1/rollouts/batch", json=body) as stream,
        ):
            await gated.hang_waiting.wait()
            process.send_signal(signal.SIGTERM)
            while await accepts_connections(url):  # until uvicorn's shutdown (and its old timer) has begun
                await asyncio.sleep(0.01)
            await asyncio.sleep(PAST_UVICORNS_OLD_TIMEOUT_S)  # a reader this slow outlived uvicorn's timeout
            raw = await read_to_the_end(stream)
        await asyncio.wait_for(process.wait(), 120)
    lines = raw.splitlines()
    assert len(lines) == len(tasks) * 64 + 1
    assert json.loads(lines[-1])["summary"]["counts"] == {"aborted": len(tasks) * 64}
