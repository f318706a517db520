"""Benchmark 5: kill -9 in the middle of `sparring collect`, then `--resume`: nothing lost, nothing duplicated.

Against the scripted server in its own process, KILLS times: start (or resume) a collection of
TASKS x REPEATS episodes and SIGKILL it after a random number of new records, checking that the bytes
written before are unchanged; then one last resume runs to the end. Prints per kill the records on disk
and whether the last line was torn, and at the end the pairs missing and duplicated (both must be 0;
the script exits 1 otherwise).

    .venv/bin/python bench/kill_resume.py [--tasks 40] [--repeats 2] [--kills 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from sparring.testing import FakeModelProcess


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    total = args.tasks * args.repeats
    with tempfile.TemporaryDirectory() as work, FakeModelProcess() as server:
        tasks, output = Path(work) / "tasks.jsonl", Path(work) / "out.jsonl"
        tasks.write_text("{}\n" * args.tasks)
        command = [sys.executable, "-m", "sparring.cli", "collect", "--input", str(tasks), "--output", str(output)]
        command += ["--repeats", str(args.repeats), "--concurrency", str(args.concurrency), "--quiet"]
        command += ["--policy-base-url", server.base_url, "--user-base-url", server.base_url]
        torn = 0
        for kill in range(args.kills + 1):
            resume = ["--resume"] if kill else []
            before = output.read_bytes() if output.exists() else b""
            started = time.perf_counter()
            process = subprocess.Popen([*command, *resume], stderr=subprocess.DEVNULL)
            if kill == args.kills:  # the last round runs to the end
                process.wait()
                print(f"final run: exit {process.returncode} in {time.perf_counter() - started:.1f} s")
                break
            target = line_count(output) + rng.randint(1, max(total // (args.kills + 1), 2))
            while line_count(output) < target and process.poll() is None:
                time.sleep(0.005)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            data = output.read_bytes()
            cut = not data.endswith(b"\n")
            torn += cut
            whole = before[: before.rfind(b"\n") + 1]
            assert data.startswith(whole), "records written before were changed"
            print(f"kill {kill + 1}: {line_count(output)} records on disk, torn last line: {cut}")
        records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
        pairs = Counter((r["task_index"], r["repeat_index"]) for r in records)
        expected = {(t, r) for t in range(args.tasks) for r in range(args.repeats)}
        missing = expected - set(pairs)
        duplicated = [pair for pair, n in pairs.items() if n > 1]
        print(
            f"{len(records)} records for {total} pairs after {args.kills} kill -9s ({torn} torn lines cut): "
            f"{len(missing)} missing, {len(duplicated)} duplicated, "
            f"statuses {dict(Counter(r['status'] for r in records))}"
        )
        if missing or duplicated:
            sys.exit(1)


if __name__ == "__main__":
    main()
