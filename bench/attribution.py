"""Who made the episodes fail: the share of each attribution label per environment, from collect's records.

    sparring collect --env support-desk --input tasks.jsonl --output sd.jsonl ...   # real episodes
    .venv/bin/python bench/attribution.py sd.jsonl ttt.jsonl cal.jsonl
    .venv/bin/python bench/attribution.py --rescore --tasks support-desk=tasks.jsonl before/*.jsonl after/*.jsonl

Prints one Markdown row per (file, environment): episodes, the count and share of each label (none,
agent, user, tool, env), the checks behind the faults (episodes per check; `user` ones bare, other
actors' prefixed), the mean reward of the scored episodes and how the episodes ended (a share that
falls because users quit early would show there). `--paired` keeps only the episodes (environment,
task, repeat) that every file holding that environment has, so runs cut short compare like with like.
`--rescore` runs the rule checks again with this code instead of reading each record's own
`attribution`, so records collected before and after a change are judged by the same rules (the
environment's own rules need the task rows a record ran: `--tasks ENV=FILE`, matched by `task_index`;
the user's stop tokens are the environment's default ones). No judge: the rules alone.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from sparring.core.attribution import LABELS, attribute
from sparring.core.errors import InputError
from sparring.core.task import read_tasks
from sparring.engine.export import checked_record
from sparring.engine.settings import default_settings
from sparring.envs.registry import get_environment


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record of a JSONL file, each checked as export checks it (a bad line names file:line and field)."""
    with open(path, "rb") as handle:
        return [checked_record(line, f"{path}:{n}") for n, line in enumerate(handle, start=1) if line.strip()]


def episode_key(record: dict[str, Any]) -> tuple[str, Any, Any]:
    """Which episode of a run a record is: its environment, task and repeat."""
    return (str(record.get("env")), record.get("task_index"), record.get("repeat_index"))


def paired(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each file's records cut to the episodes that every file holding their environment has too."""
    holders: dict[str, list[set[tuple[str, Any, Any]]]] = {}
    for records in runs.values():
        keys = {episode_key(r) for r in records}
        for env in {key[0] for key in keys}:
            holders.setdefault(env, []).append({key for key in keys if key[0] == env})
    common = {env: set.intersection(*sets) for env, sets in holders.items()}
    return {path: [r for r in records if episode_key(r) in common[str(r.get("env"))]] for path, records in runs.items()}


def rescored(record: dict[str, Any], tasks: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The record's attribution by this code's rules (and its environment's, given its task)."""
    env_name = str(record.get("env"))
    stop_tokens = default_settings(env_name).user_stop_tokens
    if record.get("status") == "aborted":
        return attribute(record, stop_tokens=stop_tokens)
    by_index = tasks.get(env_name)
    if by_index is None or record.get("task_index") not in by_index:
        sys.exit(f"--rescore: no task for {env_name} record {record.get('id')} (pass --tasks {env_name}=FILE)")
    rules = get_environment(env_name).attribution_rules(by_index[record["task_index"]], None)
    return attribute(record, stop_tokens=stop_tokens, rules=rules)


def table(
    runs: dict[str, list[dict[str, Any]]], rescore: bool, tasks: dict[str, dict[int, dict[str, Any]]]
) -> list[str]:
    """The Markdown table: a header, then a row per file and environment."""
    labels_head = " | ".join(LABELS)
    head = f"| records | env | episodes | {labels_head} | faults (episodes per check) | mean reward | ended |"
    lines = [head, "|---|---|---:|" + "---:|" * len(LABELS) + "---|---:|---|"]
    for path, records in runs.items():
        labels: dict[str, Counter[str]] = {}
        fault_checks: dict[str, Counter[str]] = {}
        rewards: dict[str, list[float]] = {}
        stops: dict[str, Counter[str]] = {}
        for record in records:
            attribution = rescored(record, tasks) if rescore else record.get("attribution") or {}
            env = str(record.get("env"))
            labels.setdefault(env, Counter())[str(attribution.get("label"))] += 1
            stops.setdefault(env, Counter())[str(record.get("stop_reason"))] += 1
            if record.get("reward") is not None:
                rewards.setdefault(env, []).append(float(record["reward"]))
            faults = {
                r["check"] if r["actor"] == "user" else f"{r['actor']}:{r['check']}"
                for r in attribution.get("reasons") or ()
                if r["severity"] == "fault"
            }
            fault_checks.setdefault(env, Counter()).update(faults)
        for env, counts in sorted(labels.items()):
            total = sum(counts.values())
            cells = [f"{counts[label]} ({counts[label] / total:.0%})" if counts[label] else "0" for label in LABELS]
            checks = ", ".join(f"{check} {n}" for check, n in fault_checks[env].most_common()) or "-"
            scored = rewards.get(env) or []
            mean = f"{sum(scored) / len(scored):.2f}" if scored else "-"
            ended = ", ".join(f"{reason} {n}" for reason, n in stops[env].most_common())
            row = f"| {path} | {env} | {total} | " + " | ".join(cells) + f" | {checks} | {mean} | {ended} |"
            lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="JSONL files of rollout records (collect's output)")
    parser.add_argument("--rescore", action="store_true", help="run the rule checks again with this code")
    parser.add_argument(
        "--paired", action="store_true", help="only episodes (env, task, repeat) that every file of their env holds"
    )
    parser.add_argument(
        "--tasks", action="append", default=[], metavar="ENV=FILE", help="the tasks an environment's records ran"
    )
    args = parser.parse_args()
    tasks: dict[str, dict[int, dict[str, Any]]] = {}
    try:
        for spec in args.tasks:
            env, _, path = spec.partition("=")
            if not path:
                parser.error(f"--tasks {spec}: expected ENV=FILE")
            tasks[env] = {index: task for index, _, task in read_tasks(path)}
        runs = {path: read_records(path) for path in args.records}
    except (OSError, InputError) as exc:  # a missing file, a bad line: named, no traceback
        sys.exit(f"error: {exc}")
    print("\n".join(table(paired(runs) if args.paired else runs, args.rescore, tasks)))


if __name__ == "__main__":
    main()
