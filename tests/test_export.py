"""`sparring export`: a Parquet row is its record's ledger segment; advantages per group; counts."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from sparring.cli import main, make_parser
from sparring.cli.collect import collect_command
from sparring.core.errors import InputError
from sparring.engine import export as export_module
from sparring.engine.export import export
from sparring.testing import FakeModelServer
from sparring.testing.responders import tictactoe_players


def synthetic(task_index: int | None, repeat: int, reward: float | None, status: str = "completed") -> dict[str, Any]:
    """A record with two segments (as after one prefix mismatch), token ids that say where they came from."""
    base = 1000 * (task_index or 0) + 10 * repeat
    segments = [
        {"token_ids": [base, base + 1, base + 2], "loss_mask": [0, 1, 1], "logprobs": [0.0, -0.25, -1.5]},
        {"token_ids": [base + 3, base + 4], "loss_mask": [0, 1], "logprobs": [0.0, -0.125]},
    ]
    return {
        "id": f"t{task_index}-r{repeat}",
        "env": "tictactoe",
        "task_index": task_index,
        "repeat_index": repeat,
        "task_id": None,
        "status": status,
        "stop_reason": "env_done" if status == "completed" else "model_error",
        "reward": reward,
        "num_turns": 3,
        "trajectory": {"segments": segments if status != "aborted" else [], "prefix_mismatches": 1},
    }


def write_records(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


KNOWN = [
    synthetic(0, 0, 1.0),
    synthetic(0, 1, 0.0),
    synthetic(0, 2, 0.5),
    synthetic(0, 3, None, status="aborted"),
    synthetic(1, 0, 0.5),
    synthetic(1, 1, 0.5),
    synthetic(None, 0, 1.0),
]


async def test_round_trip_every_parquet_row_equals_its_records_ledger_segment(tmp_path: Path) -> None:
    tasks = write_records(
        tmp_path / "tasks.jsonl", [{}, {"env_seed": {"initial_moves": [{"position": 0, "mark": "X"}]}}]
    )
    out = tmp_path / "out.jsonl"
    async with FakeModelServer(tictactoe_players(), record=False) as server:
        argv = ["collect", "--input", str(tasks), "--output", str(out), "--repeats", "2", "--quiet"]
        argv += ["--policy-base-url", server.base_url, "--user-base-url", server.base_url]
        assert await collect_command(make_parser().parse_args(argv)) == 0
    stats = export(out, tmp_path / "train.parquet")
    table = pq.read_table(tmp_path / "train.parquet").to_pylist()
    by_id = {r["id"]: r for r in map(orjson.loads, out.read_bytes().splitlines())}
    assert stats.rows == len(table) == sum(len(r["trajectory"]["segments"]) for r in by_id.values()) > 0
    for row in table:
        record = by_id[row["episode_id"]]
        segment = record["trajectory"]["segments"][row["segment_index"]]
        assert row["token_ids"] == segment["token_ids"]
        assert row["loss_mask"] == segment["loss_mask"]
        assert row["logprobs"] == segment["logprobs"], "logprobs are exact (float64), not rounded"
        assert (row["reward"], row["task_index"], row["repeat_index"]) == (
            record["reward"],
            record["task_index"],
            record["repeat_index"],
        )
        assert row["group_id"] == f"tictactoe:{record['task_index']}" and row["group_size"] == 2


def test_advantages_on_a_known_group_and_what_is_left_out(tmp_path: Path) -> None:
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    stats = export(source, tmp_path / "rows.jsonl")
    rows = [orjson.loads(line) for line in (tmp_path / "rows.jsonl").read_bytes().splitlines()]
    advantage = {(r["task_index"], r["repeat_index"]): r["advantage"] for r in rows}
    assert advantage[(0, 0)] == pytest.approx(0.5) and advantage[(0, 1)] == pytest.approx(-0.5)
    assert advantage[(0, 2)] == pytest.approx(0.0)
    assert advantage[(1, 0)] == advantage[(1, 1)] == advantage[(None, 0)] == 0.0
    assert (0, 3) not in advantage, "aborted episodes are left out"
    assert stats.aborted_left_out == 1 and stats.records == 7 and stats.episodes_exported == 6
    assert stats.rows == 12 == len(rows), "two segments per episode, two rows"
    assert stats.groups == 3 and stats.equal_reward_groups == 2 and stats.equal_reward_groups_dropped == 0
    assert {r["group_size"] for r in rows if r["task_index"] == 0} == {3}, "the aborted repeat is not in the group"


def test_normalize_std_divides_by_the_group_sample_std(tmp_path: Path) -> None:
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    export(source, tmp_path / "rows.parquet", normalize="std")
    rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    std = statistics.stdev([1.0, 0.0, 0.5])
    winner = next(r for r in rows if (r["task_index"], r["repeat_index"]) == (0, 0))
    assert winner["advantage"] == pytest.approx(0.5 / (std + 1e-6))
    assert math.isclose(std, 0.5)


def test_equal_reward_groups_can_be_dropped_and_are_counted(tmp_path: Path) -> None:
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    stats = export(source, tmp_path / "rows.parquet", drop_equal_groups=True)
    rows = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    assert {r["group_id"] for r in rows} == {"tictactoe:0"}
    assert stats.equal_reward_groups == stats.equal_reward_groups_dropped == 2 and stats.episodes_exported == 3


def test_cli_prints_the_counts_and_rejects_an_unknown_extension(tmp_path: Path, capsys) -> None:
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    assert main(["export", str(source), "--output", str(tmp_path / "rows.parquet")]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["rows"] == 12 and summary["aborted_left_out"] == 1 and summary["equal_reward_groups"] == 2
    assert main(["export", str(source), "--output", str(tmp_path / "rows.csv")]) == 2
    assert ".parquet or .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "rows.csv").exists()


def test_a_damaged_record_line_is_named_and_no_half_file_is_left(tmp_path: Path) -> None:
    source = tmp_path / "records.jsonl"
    source.write_bytes(orjson.dumps(KNOWN[0]) + b"\n{broken\n" + orjson.dumps(KNOWN[1]) + b"\n")
    with pytest.raises(ValueError, match=r"records\.jsonl:2: not a rollout record"):
        export(source, tmp_path / "rows.parquet")
    assert not (tmp_path / "rows.parquet").exists() and not list(tmp_path.glob(".rows*"))


def with_segment(**changes: Any) -> dict[str, Any]:
    """KNOWN[0] with its first segment changed."""
    record = orjson.loads(orjson.dumps(KNOWN[0]))
    record["trajectory"]["segments"][0].update(changes)
    return record


BAD_RECORDS = [
    (
        with_segment(loss_mask=[0, 1]),
        r"field trajectory\.segments\.0: token_ids, loss_mask and logprobs must have one entry per token, "
        r"got lengths 3, 2 and 3",
    ),
    (with_segment(loss_mask=[0, 2, 1]), r"field trajectory\.segments\.0\.loss_mask\.1: must be 0 or 1, got 2"),
    (with_segment(loss_mask=[0, True, 1]), r"field trajectory\.segments\.0\.loss_mask\.1: must be 0 or 1, got True"),
    (
        with_segment(token_ids=["x", 1, 2]),
        r"field trajectory\.segments\.0\.token_ids\.0: must be a token id .* got 'x'",
    ),
    (with_segment(token_ids=[1, 2**40, 2]), r"field trajectory\.segments\.0\.token_ids\.1: must be a token id"),
    (with_segment(logprobs=[0.0, "-0.5", -1.0]), r"field trajectory\.segments\.0\.logprobs\.1: must be a number"),
    (
        orjson.dumps(KNOWN[0]).replace(b"-1.5", b"-1e400"),
        r"field trajectory\.segments\.0\.logprobs\.2: must be a finite number, got -inf",
    ),
    (
        orjson.dumps(KNOWN[0]).replace(b"-0.25", b"NaN"),  # what Python's json writes for a NaN
        r"field trajectory\.segments\.0\.logprobs\.1: must be a finite number, got nan",
    ),
    ({**KNOWN[0], "reward": "1.0"}, r"field reward: Input should be a valid number, got '1.0'"),
    (orjson.dumps(KNOWN[0]).replace(b'"reward":1.0', b'"reward":Infinity'), r"field reward: .*finite number"),
    ({**KNOWN[0], "task_index": "0"}, r"field task_index: Input should be a valid integer"),
    ({**KNOWN[0], "status": "done"}, r"field status: Input should be 'completed', 'truncated' or 'aborted'"),
    ({k: v for k, v in KNOWN[0].items() if k != "id"}, r"field id: Field required"),
    ({**KNOWN[0], "trajectory": {"segments": [[1, 2]]}}, r"field trajectory\.segments\.0: must be an object"),
    ([1, 2], r"field \(record\): must be a JSON object, got list"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_RECORDS, ids=range(len(BAD_RECORDS)))
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_a_bad_record_fails_the_export_naming_file_line_and_field_and_writes_no_file(
    tmp_path: Path, bad: Any, message: str, suffix: str
) -> None:
    """Issue 15, 2: a misaligned or mistyped record became a row (2136/2133/2136 elements) with exit 0."""
    source = tmp_path / "records.jsonl"
    line = bad if isinstance(bad, bytes) else orjson.dumps(bad)
    source.write_bytes(orjson.dumps(KNOWN[1]) + b"\n" + line + b"\n" + orjson.dumps(KNOWN[2]) + b"\n")
    output = tmp_path / f"rows{suffix}"
    with pytest.raises(InputError, match=rf"^{source}:2: {message}"):
        export(source, output)
    assert not output.exists() and not list(tmp_path.glob(".rows*")), "a failed export leaves no file"


def test_skip_leaves_bad_records_out_counts_and_reports_them(tmp_path: Path, capsys) -> None:
    rows = [KNOWN[0], with_segment(loss_mask=[0, 1]), *KNOWN[1:4], {**KNOWN[4], "reward": "x"}, *KNOWN[4:]]
    source = write_records(tmp_path / "records.jsonl", rows)
    skipped: list[str] = []
    stats = export(source, tmp_path / "rows.parquet", on_bad_record="skip", on_skip=skipped.append)
    assert stats.bad_records == 2 and [s.split(": field")[0] for s in skipped] == [f"{source}:2", f"{source}:6"]
    assert stats.records == 7 and stats.rows == 12, "the good records export exactly as without the bad ones"
    assert {r["episode_id"] for r in pq.read_table(tmp_path / "rows.parquet").to_pylist()} == {
        r["id"] for r in KNOWN if r["status"] != "aborted"
    }
    assert main(["export", str(source), "-o", str(tmp_path / "cli.jsonl"), "--on-bad-record", "skip"]) == 1
    captured = capsys.readouterr()
    assert f"sparring export: skipped {source}:2: field trajectory.segments.0" in captured.err
    assert orjson.loads(captured.out)["bad_records"] == 2
    assert main(["export", str(source), "-o", str(tmp_path / "fail.parquet")]) == 2
    assert f"{source}:2: field trajectory.segments.0" in capsys.readouterr().err
    assert not (tmp_path / "fail.parquet").exists()


def test_a_torn_last_line_is_reported_never_dropped_silently(tmp_path: Path, capsys) -> None:
    source = tmp_path / "records.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in KNOWN) + orjson.dumps(KNOWN[0])[:40])
    with pytest.raises(InputError, match=rf"{source}:8: a torn last line \(40 bytes"):
        export(source, tmp_path / "rows.parquet")
    assert not (tmp_path / "rows.parquet").exists()
    assert main(["export", str(source), "-o", str(tmp_path / "rows.parquet"), "--on-bad-record", "skip"]) == 1
    assert f"skipped {source}:8: a torn last line" in capsys.readouterr().err
    assert len(pq.read_table(tmp_path / "rows.parquet")) == 12


def test_rows_come_from_the_bytes_the_first_pass_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collect appending while export runs adds nothing the first pass did not check (nor a group it never saw)."""
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    statistics_of = export_module.group_statistics

    def statistics_then_append(rewards: dict[str, list[float]]) -> Any:
        with open(source, "ab") as handle:  # between the two passes, as a running collect would
            handle.write(orjson.dumps(synthetic(9, 0, 1.0)) + b"\n" + b'{"torn')
        return statistics_of(rewards)

    monkeypatch.setattr(export_module, "group_statistics", statistics_then_append)
    stats = export(source, tmp_path / "rows.jsonl")
    assert stats.records == 7 and stats.rows == 12


def test_an_output_that_cannot_be_written_fails_in_one_line_before_reading(tmp_path: Path, capsys) -> None:
    source = write_records(tmp_path / "records.jsonl", KNOWN)
    (tmp_path / "rows.parquet").mkdir()
    assert main(["export", str(source), "-o", str(tmp_path / "rows.parquet")]) == 2
    assert (
        capsys.readouterr().err
        == f"sparring: error: --output {tmp_path / 'rows.parquet'}: is a directory; name a file\n"
    )
    assert main(["export", str(source), "-o", "/proc/rows.jsonl"]) == 2
    assert "--output /proc/rows.jsonl: cannot write there" in capsys.readouterr().err


def labelled(record: dict[str, Any], label: str) -> dict[str, Any]:
    return {**record, "attribution": {"label": label, "reasons": [], "judge": None}}


def test_episodes_the_policy_did_not_make_fail_can_be_left_out_and_are_counted(tmp_path: Path, capsys) -> None:
    records = [
        labelled(synthetic(0, 0, 1.0), "none"),
        labelled(synthetic(0, 1, 0.0), "user"),  # left out: the user failed, not the policy
        labelled(synthetic(0, 2, 0.5), "agent"),
        labelled(synthetic(0, 3, None, status="aborted"), "env"),  # left out as aborted, counted there
        labelled(synthetic(1, 0, 0.0), "tool"),
        labelled(synthetic(1, 1, 0.0), "agent"),
    ]
    source = write_records(tmp_path / "records.jsonl", records)
    stats = export(source, tmp_path / "rows.jsonl", drop_attributed=("user", "tool", "env"))
    rows = [orjson.loads(line) for line in (tmp_path / "rows.jsonl").read_bytes().splitlines()]
    assert sorted({(r["task_index"], r["repeat_index"]) for r in rows}) == [(0, 0), (0, 2), (1, 1)]
    assert stats.attributed_left_out == {"user": 1, "tool": 1} and stats.aborted_left_out == 1
    advantage = {(r["task_index"], r["repeat_index"]): r["advantage"] for r in rows}
    assert advantage[(0, 0)] == pytest.approx(0.25), "the user's failure is not in its group's mean (0.75)"
    assert {r["group_size"] for r in rows if r["task_index"] == 0} == {2}
    assert advantage[(1, 1)] == 0.0 and stats.equal_reward_groups == 1, "the tool failure left a group of one"

    assert main(["export", str(source), "-o", str(tmp_path / "r.parquet"), "--drop-attributed", "user, tool"]) == 0
    assert orjson.loads(capsys.readouterr().out)["attributed_left_out"] == {"user": 1, "tool": 1}


def test_dropping_by_attribution_names_bad_labels_and_records_without_one(tmp_path: Path, capsys) -> None:
    source = write_records(tmp_path / "records.jsonl", [labelled(synthetic(0, 0, 1.0), "none"), synthetic(0, 1, 0.0)])
    with pytest.raises(ValueError, match=r"record 't0-r1': field attribution\.label: expected one of none, agent"):
        export(source, tmp_path / "rows.jsonl", drop_attributed=("user",))
    assert not (tmp_path / "rows.jsonl").exists()
    assert export(source, tmp_path / "rows.jsonl").rows == 4, "without the flag, old records export as before"
    with pytest.raises(ValueError, match="unknown label"):
        export(source, tmp_path / "rows.jsonl", drop_attributed=("users",))
    with pytest.raises(SystemExit):
        main(["export", str(source), "-o", str(tmp_path / "r.jsonl"), "--drop-attributed", "user,policy"])
    assert "unknown label(s) policy; the labels: none, agent, user, tool, env" in capsys.readouterr().err
