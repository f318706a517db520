"""Faults: `sparring collect` against a model server that fails, resets, stalls and restarts.

The scripted server runs in its own process with faults drawn per generation request
(`sparring.testing.faults`: by default 20% answered 500, 5% connections reset before an answer, 5%
answered `--slow-s` seconds late, longer than the client's `--timeout`, so a time-out). When half the
records are written it is killed (SIGKILL) and started again on the same port: calls in flight are
cut and new ones are refused until it is back. Then, with `--retry-failed` (the default), a second
`collect --retry-failed` reruns the aborted episodes against the same faulty server.

Reported per phase: records written, lost (pairs with no record), duplicated (pairs with more than
one), untyped (no status or stop reason), by status and stop reason, what the last attempt of each
aborted episode's failed call met; the model calls the records count (answered calls, whole output);
the server's requests by fault, the calls they were (requests with the same session and body are
one call and its retries), attempts per call and retries per call. Goal:
0 lost, 0 duplicated, every episode with a typed status (the script exits 1 otherwise).

    .venv/bin/python bench/faults.py [--episodes 500] [--concurrency 64] [--errors 0.2] [--resets 0.05]
        [--slow 0.05] [--slow-s 3] [--timeout 2] [--no-retry-failed] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

STATUSES = {"completed", "truncated", "aborted"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, seed: int, log: Path) -> tuple[subprocess.Popen[str], float]:
    """The faulty server on `port`; returns it and the seconds until it answered."""
    command = [sys.executable, "-m", "sparring.testing.faults", "--port", str(port), "--seed", str(seed)]
    command += ["--errors", str(args.errors), "--resets", str(args.resets), "--slow", str(args.slow)]
    command += ["--slow-s", str(args.slow_s), "--log", str(log)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 120)
    if not ready or not process.stdout.readline().startswith("http"):
        process.kill()
        raise RuntimeError(f"the faulty server did not start: {' '.join(command)}")
    return process, time.perf_counter() - started


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def collect(args: argparse.Namespace, work: Path, base_url: str, *extra: str) -> subprocess.Popen[bytes]:
    """`sparring collect` of the tasks, its stderr appended to collect.log."""
    command = [sys.executable, "-m", "sparring.cli", "collect", "--input", str(work / "tasks.jsonl")]
    command += ["--output", str(work / "out.jsonl"), "--concurrency", str(args.concurrency), "--quiet"]
    command += ["--policy-base-url", base_url, "--user-base-url", base_url, "--timeout", str(args.timeout)]
    with open(work / "collect.log", "ab") as err:
        return subprocess.Popen([*command, *extra], stderr=err)


def outcome(work: Path, episodes: int) -> dict[str, Any]:
    """Records, lost and duplicated pairs, statuses, from the output as it is on disk."""
    records = [orjson.loads(line) for line in (work / "out.jsonl").read_bytes().splitlines()]
    pairs = Counter((r["task_index"], r["repeat_index"]) for r in records)
    return {
        "records": len(records),
        "lost": sum(1 for t in range(episodes) if (t, 0) not in pairs),
        "duplicated": sum(n - 1 for n in pairs.values() if n > 1),
        "untyped": sum(1 for r in records if r.get("status") not in STATUSES or not r.get("stop_reason")),
        "by_status": dict(Counter(f"{r['status']}/{r['stop_reason']}" for r in records)),
        "last_errors": dict(Counter(last_error(r) for r in records if r["error"])),
        "calls_in_records": sum(r["num_policy_calls"] + r["num_user_calls"] for r in records),
    }


def last_error(record: dict[str, Any]) -> str:
    """What the last attempt of an aborted episode's failed call met: HTTP 500, a reset, a refusal, a time-out."""
    message = record["error"]["message"]
    last = message.split("; last: ", 1)[-1]
    return last.split(":", 1)[0] if "; last: " in message else record["error"]["type"]


def attempts(log: Path, since: float, until: float) -> dict[str, Any]:
    """From the server's request log: requests by fault, calls, attempts per call (a retry has the same body)."""
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    lines = [line for line in lines if since <= line["t"] <= until]
    calls: dict[tuple[str, str, str], list[str]] = {}
    for line in lines:
        calls.setdefault((line["session"], line["model"], line["body"]), []).append(line["fault"])
    per_call = Counter(len(faults) for faults in calls.values())
    return {
        "requests": len(lines),
        "by_fault": dict(Counter(line["fault"] for line in lines)),
        "calls": len(calls),
        "attempts_per_call": dict(sorted(per_call.items())),
        "retries_per_call": round((len(lines) - len(calls)) / len(calls), 3) if calls else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--errors", type=float, default=0.2)
    parser.add_argument("--resets", type=float, default=0.05)
    parser.add_argument("--slow", type=float, default=0.05)
    parser.add_argument("--slow-s", type=float, default=3.0, help="how late a slow answer is (default 3)")
    parser.add_argument("--timeout", type=float, default=2.0, help="collect's --timeout per call (default 2)")
    parser.add_argument("--restart-at", type=float, default=0.5, help="share of records written at the restart")
    parser.add_argument("--no-retry-failed", dest="retry_failed", action="store_false")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "requests.jsonl"
        (work / "tasks.jsonl").write_text("".join(f'{{"id": "t{i}"}}\n' for i in range(args.episodes)))
        port = free_port()
        server, _ = start_server(args, port, seed=1, log=log)
        base_url = f"http://127.0.0.1:{port}/v1"
        report: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "keep"}}
        try:
            started = time.time()
            run = collect(args, work, base_url)
            while line_count(work / "out.jsonl") < args.restart_at * args.episodes and run.poll() is None:
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            restarted_at = line_count(work / "out.jsonl")
            server, down_s = start_server(args, port, seed=2, log=log)
            report["restart"] = {"records_before": restarted_at, "down_s": round(down_s, 2)}
            code = run.wait()
            ended = time.time()
            report["collect"] = {
                "exit": code,
                "wall_s": round(ended - started, 1),
                **outcome(work, args.episodes),
                **attempts(log, started, ended),
            }
            if args.retry_failed:
                retry = collect(args, work, base_url, "--retry-failed")
                code = retry.wait()
                report["retry_failed"] = {
                    "exit": code,
                    "wall_s": round(time.time() - ended, 1),
                    **outcome(work, args.episodes),
                    **attempts(log, ended, time.time()),
                }
        finally:
            stop(server)
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
        phases = [report[phase] for phase in ("collect", "retry_failed") if phase in report]
        if any(phase["lost"] or phase["duplicated"] or phase["untyped"] for phase in phases):
            sys.exit(1)


if __name__ == "__main__":
    main()
