"""The gateway's added latency and CPU per call: agents calling the scripted server directly vs through it.

One scripted server (`FakeModelProcess("echo")`) and one `sparring gateway` each run in a child
process; this process plays the agents (one aiohttp session, orjson). Each agent holds a conversation
that grows call by call (its reply and a new user message appended, as an agent loop does) for
`--turns` calls, then starts over; through the gateway each conversation is a session, created
before and finished (reward 1) after, so session handling, branch matching, the ledger and the
record are all in the figures. The same calls are made directly and through the gateway, round-robin
(`--repeats`), at each concurrency, non-streamed and streamed. Printed: wall ms per call (mean and
p95), the gateway's added latency, and CPU ms per call of the gateway process (from /proc), of the
agents (this process) and of the model server, with the ratio gateway / direct where it means something.

    .venv/bin/python bench/gateway.py              # about 1 minute on 2 cores
    .venv/bin/python bench/gateway.py --quick      # about 20 s, noisier
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparring.testing import FakeModelProcess

TICKS = os.sysconf("SC_CLK_TCK")
SYSTEM = {"role": "system", "content": "You are a helpful assistant. " * 8}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class GatewayProcess:
    """`sparring gateway --port 0` in front of `base_url`, in a child process."""

    def __init__(self, base_url: str) -> None:
        self.command = [
            sys.executable,
            *("-m", "sparring.cli", "gateway", "--port", "0", "--policy-base-url", base_url),
            *("--policy-model", "policy", "--keep-ended", "100"),
        ]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> GatewayProcess:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        match = re.search(r"listening on (http://\S+)", line)
        if not match:
            self.__exit__()
            raise RuntimeError(f"the gateway did not start: {line!r}; run {' '.join(self.command)}")
        self.url = match.group(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            if self.process.stdout is not None:
                self.process.stdout.close()


@dataclass
class Run:
    """One measurement: wall time of every call, and CPU of each process over the run."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    agent_cpu_s: float = 0.0
    gateway_cpu_s: float = 0.0
    server_cpu_s: float = 0.0


async def chat(http: aiohttp.ClientSession, url: str, body: dict, stream: bool) -> dict:
    """One call; a stream is read to its end and put together like an agent framework does."""
    async with http.post(url, data=orjson.dumps({**body, "stream": stream})) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
        if not stream:
            return (await response.json(loads=orjson.loads))["choices"][0]["message"]
        content = []
        async for line in response.content:
            if line.startswith(b"data: {"):
                chunk = orjson.loads(line[6:])
                for choice in chunk["choices"]:
                    content.append(choice["delta"].get("content") or "")
        return {"role": "assistant", "content": "".join(content)}


async def agent(
    http: aiohttp.ClientSession,
    target: str,
    gateway: str | None,
    turns: int,
    conversations: int,
    stream: bool,
    run: Run,
) -> None:
    """`conversations` conversations of `turns` calls each, directly (`gateway` None) or through the gateway."""
    for c in range(conversations):
        session = None
        url = f"{target}/chat/completions"
        if gateway is not None:
            async with http.post(f"{gateway}/v1/sessions", data=b"{}") as response:
                session = await response.json(loads=orjson.loads)
            url = f"{session['base_url']}/chat/completions"
        messages = [SYSTEM, {"role": "user", "content": f"conversation {c}: tell me about item 0"}]
        for turn in range(turns):
            started = time.perf_counter()
            reply = await chat(http, url, {"model": "policy", "messages": messages, "tools": TOOLS}, stream)
            run.latencies.append(time.perf_counter() - started)
            messages += [reply, {"role": "user", "content": f"and about item {turn + 1}, please " * 3}]
        if session is not None:
            finish = f"{gateway}/v1/sessions/{session['session_id']}/finish"
            async with http.post(finish, data=b'{"reward": 1}') as response:
                record = await response.json(loads=orjson.loads)
            assert record["trajectory"]["prefix_mismatches"] == 0 and record["num_policy_calls"] == turns


async def measure(
    server: FakeModelProcess,
    gateway: GatewayProcess,
    through: bool,
    concurrency: int,
    calls: int,
    turns: int,
    stream: bool,
) -> Run:
    run = Run()
    conversations = max(1, calls // (turns * concurrency))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as http:
        before = (time.process_time(), cpu_seconds(gateway.process.pid), cpu_seconds(server.pid))
        started = time.perf_counter()
        target = server.base_url
        await asyncio.gather(
            *(
                agent(http, target, gateway.url if through else None, turns, conversations, stream, run)
                for _ in range(concurrency)
            )
        )
        run.wall_s = time.perf_counter() - started
        after = (time.process_time(), cpu_seconds(gateway.process.pid), cpu_seconds(server.pid))
    run.agent_cpu_s, run.gateway_cpu_s, run.server_cpu_s = (b - a for a, b in zip(before, after, strict=True))
    return run


def summary(runs: list[Run]) -> dict[str, float]:
    """Per call, medians over the repeats (ms)."""
    per_call = [len(r.latencies) for r in runs]

    def median(values: list[float]) -> float:
        return statistics.median(values) * 1000

    return {
        "mean": median([statistics.fmean(r.latencies) for r in runs]),
        "p95": median([statistics.quantiles(r.latencies, n=20)[-1] for r in runs]),
        "agent": median([r.agent_cpu_s / n for r, n in zip(runs, per_call, strict=True)]),
        "gateway": median([r.gateway_cpu_s / n for r, n in zip(runs, per_call, strict=True)]),
        "server": median([r.server_cpu_s / n for r, n in zip(runs, per_call, strict=True)]),
        "calls_per_s": statistics.median([n / r.wall_s for r, n in zip(runs, per_call, strict=True)]),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--calls", type=int, default=400, help="calls per measurement")
    parser.add_argument("--turns", type=int, default=8, help="calls per conversation (session)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="120 calls, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.repeats = 120, 2
    print(f"bench/gateway.py: {args.calls} calls per run, {args.turns} per conversation, {args.repeats} repeats")
    print(
        "| mode | concurrency | path | calls/s | wall ms/call (mean, p95) | added ms/call | gateway CPU ms/call |"
        " agent CPU ms/call | server CPU ms/call |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    with FakeModelProcess("echo") as server, GatewayProcess(server.base_url) as gateway:
        for stream in (False, True):
            for concurrency in args.concurrency:
                for through in (False, True):  # warm-up
                    await measure(server, gateway, through, concurrency, args.turns * concurrency, args.turns, stream)
                runs: dict[bool, list[Run]] = {False: [], True: []}
                for _ in range(args.repeats):
                    for through in (False, True):
                        runs[through].append(
                            await measure(server, gateway, through, concurrency, args.calls, args.turns, stream)
                        )
                direct, gated = summary(runs[False]), summary(runs[True])
                mode = "stream" if stream else "plain"
                for name, row in (("direct", direct), ("gateway", gated)):
                    added = f"{row['mean'] - direct['mean']:+.2f}" if name == "gateway" else ""
                    print(
                        f"| {mode} | {concurrency} | {name} | {row['calls_per_s']:.0f} | "
                        f"{row['mean']:.2f}, {row['p95']:.2f} | {added} | "
                        f"{row['gateway']:.2f} | {row['agent']:.2f} | {row['server']:.2f} |"
                    )


if __name__ == "__main__":
    asyncio.run(main())
