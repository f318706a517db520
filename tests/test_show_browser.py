"""The rollout page in a real headless Chromium (Debian's `chromium`, installed by scripts/test.sh).

Driven over the DevTools protocol: the page must load from a file with no console errors, no
uncaught exceptions and no network requests, and show every message of the record.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from sparring.cli import main
from sparring.testing import FakeModelProcess
from sparring.testing.responders import tictactoe_players
from sparring.views.show import load_record

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--hide-scrollbars",
    "--window-size=1400,1000",
)
SHOW_MESSAGES = """JSON.stringify({
  messages: [...document.querySelectorAll('.message')].map(m => ({actor: m.dataset.actor, text: m.innerText})),
  tokens: document.querySelectorAll('.tokens .t').length,
  visible: [...document.querySelectorAll('.message')].every(m => m.getBoundingClientRect().height > 0),
})"""


@dataclass
class PageReport:
    """What the browser saw while loading one page."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    result: Any = None
    screenshot: bytes = b""


class DevTools:
    """A minimal DevTools-protocol client over one page target's websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse, report: PageReport) -> None:
        self.socket = socket
        self.report = report
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        future = self.pending[message_id] = asyncio.get_running_loop().create_future()
        await self.socket.send_str(orjson.dumps({"id": message_id, "method": method, "params": params}).decode())
        return await asyncio.wait_for(future, 30)

    async def _read(self) -> None:
        async for message in self.socket:
            data = orjson.loads(message.data)
            if "id" in data:
                self.pending.pop(data["id"]).set_result(data.get("result") or data)
                continue
            method, params = data.get("method"), data.get("params") or {}
            if method == "Page.loadEventFired":
                self.loaded.set()
            elif method == "Runtime.exceptionThrown":
                self.report.errors.append(str(params["exceptionDetails"].get("exception", params["exceptionDetails"])))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                self.report.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                self.report.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            elif method == "Network.requestWillBeSent":
                self.report.requests.append(params["request"]["url"])


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "headless Chromium is needed: apt-get install chromium (scripts/test.sh installs it)"
    return path


async def open_page(chromium: str, url: str, profile: Path, expression: str) -> PageReport:
    """Load `url` in a fresh headless Chromium, evaluate `expression` (JSON text) and take a full-page screenshot."""
    report = PageReport()
    process = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    drain: asyncio.Task[None] | None = None
    try:
        endpoint = await asyncio.wait_for(_devtools_endpoint(process.stderr), 60)
        drain = asyncio.create_task(_drain(process.stderr))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{endpoint}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                tools = DevTools(socket, report)
                for domain in ("Runtime", "Log", "Page", "Network"):
                    await tools.call(f"{domain}.enable")
                await tools.call("Page.navigate", url=url)
                await asyncio.wait_for(tools.loaded.wait(), 30)
                value = await tools.call("Runtime.evaluate", expression=expression, returnByValue=True)
                report.result = orjson.loads(value["result"]["value"])
                size = (await tools.call("Page.getLayoutMetrics"))["cssContentSize"]
                shot = await tools.call(
                    "Page.captureScreenshot",
                    format="png",
                    captureBeyondViewport=True,
                    clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                )
                report.screenshot = base64.b64decode(shot["data"])
                tools.reader.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()
        if drain:
            drain.cancel()
    return report


async def _devtools_endpoint(stderr: asyncio.StreamReader) -> str:
    while line := await stderr.readline():
        found = re.search(rb"DevTools listening on ws://([^/]+)/", line)
        if found:
            return found.group(1).decode()
    raise AssertionError("Chromium exited before it opened its DevTools port")


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.readline():
        pass


def external(requests: list[str]) -> list[str]:
    return [url for url in requests if not url.startswith(("file://", "data:", "about:"))]


async def test_rollout_page_loads_cleanly_and_shows_every_message(
    make_harness: Any, chromium: str, tmp_path: Path
) -> None:
    async with make_harness(tictactoe_players()) as h:
        record = await h.play()
    records = tmp_path / "rollouts.jsonl"
    records.write_bytes(orjson.dumps(record) + b"\n")
    page = tmp_path / "episode.html"
    with FakeModelProcess() as server:  # token text through its /detokenize
        assert main(["show", str(records), "--html", str(page), "--tokenizer", server.base_url]) == 0

    report = await open_page(chromium, page.as_uri(), tmp_path / "profile", SHOW_MESSAGES)

    assert report.errors == []
    assert external(report.requests) == []
    shown = report.result["messages"]
    record = load_record(records, 0)
    assert [m["actor"] for m in shown[: len(record["messages"])]] == [m["actor"] for m in record["messages"]]
    assert len(shown) == len(record["messages"]) + len(record["user_messages"])
    assert report.result["visible"]
    for box, message in zip(shown, record["messages"] + record["user_messages"], strict=True):
        for line in (message.get("content") or "").splitlines():
            assert line.strip() in box["text"]
        for call in message.get("tool_calls") or ():
            assert call["function"]["arguments"] in box["text"]
    assert report.result["tokens"] == sum(len(s["token_ids"]) for s in record["trajectory"]["segments"])
    assert report.screenshot.startswith(b"\x89PNG")


async def test_the_browser_check_catches_errors_and_network_use(chromium: str, tmp_path: Path) -> None:
    """The same check on a broken page fails, so a clean result above means something."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><div class="message" data-actor="policy">hi</div>'
        '<img src="http://127.0.0.1:9/pixel.png"><script>console.error("boom"); notDefined();</script></body></html>'
    )
    report = await open_page(chromium, page.as_uri(), tmp_path / "profile", SHOW_MESSAGES)
    assert any("boom" in e for e in report.errors)
    assert any("notDefined" in e for e in report.errors)
    assert external(report.requests) == ["http://127.0.0.1:9/pixel.png"]
