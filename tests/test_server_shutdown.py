"""SIGTERM in the middle of a batch, on a real `sparring serve` process: drain, grace, aborted records, whole lines."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import httpx

from sparring.testing import FakeModelServer, Hang, ModelRequest, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

GRACE_S = 4


class Timed:
    """Plays X; an opening saying SLOW makes its first call take 1 s (done within the grace), HANG hangs for good."""

    def __init__(self) -> None:
        self.player = TicTacToePlayer(X_PREFERENCE)

    def __call__(self, request: ModelRequest) -> Any:
        opening = " ".join(str(m.get("content")) for m in request.messages[:2])
        if "HANG" in opening:
            return Hang(120)
        if "SLOW" in opening and request.call_index == 0:
            return Hang(1.0, then=self.player(request))
        return self.player(request)


def task(marker: str) -> dict[str, Any]:
    return {"id": marker, "messages": [{"role": "system", "content": "Play X."}, {"role": "user", "content": marker}]}


async def test_sigterm_mid_batch_finishes_in_flight_within_grace_and_reports_the_rest_as_aborted() -> None:
    async with FakeModelServer({"policy": Timed(), "user": TicTacToePlayer(O_PREFERENCE)}) as models:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "sparring.cli", "serve", "--port", "0", "--shutdown-grace", str(GRACE_S)),
            *("--policy-base-url", models.base_url, "--user-base-url", models.base_url, "--timeout", "300"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            banner = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            url = banner.split("listening on ")[1].split()[0]
            body = {"tasks": [task("SLOW"), task("HANG"), task("never")], "concurrency": 2}
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                async with client.stream("POST", "/v1/rollouts/batch", json=body) as stream:
                    metrics = ""
                    for _ in range(300):  # SLOW and HANG are playing, "never" waits for a slot
                        metrics = (await client.get("/metrics")).text
                        if "sparring_episodes_in_flight 2.0" in metrics:
                            break
                        await asyncio.sleep(0.02)
                    assert "sparring_episodes_in_flight 2.0" in metrics
                    process.send_signal(signal.SIGTERM)
                    raw = b"".join([chunk async for chunk in stream.aiter_raw()])
                refused = None
                try:
                    await client.get("/healthz")
                except httpx.ConnectError as exc:
                    refused = exc
                assert refused is not None, "the server still accepted connections after SIGTERM"
            returncode = await asyncio.wait_for(process.wait(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    # A clean shutdown; uvicorn then re-raises the signal, so the exit status says what stopped the server.
    assert returncode == -signal.SIGTERM, (await process.stderr.read()).decode()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode().splitlines()]  # every line whole and valid
    *records, last = lines
    by_task = {r["task_id"]: r for r in records}
    assert set(by_task) == {"SLOW", "HANG", "never"}
    assert (by_task["SLOW"]["status"], by_task["SLOW"]["reward"]) == ("completed", 1.0)
    for name in ("HANG", "never"):
        assert (by_task[name]["status"], by_task[name]["stop_reason"]) == ("aborted", "interrupted")
        assert by_task[name]["reward"] is None
    assert "started" in by_task["never"]["error"]["message"]
    assert last["summary"]["counts"] == {"completed": 1, "aborted": 2}
    assert last["summary"]["stop_reasons"] == {"env_done": 1, "interrupted": 2}
