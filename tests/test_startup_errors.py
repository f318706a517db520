"""`sparring serve` and `sparring gateway` refuse what they cannot use: one line on stderr, no traceback, exit 2.

Issue 15 items 4 (a port in use or out of range), 5 (`--keep-ended -1`) and 10 (bounds below their
minimum, seconds that are negative or not finite); and both bind loopback unless told otherwise.
The commands run in-process through `cli.main` with uvicorn's `Server.run` replaced, so one that
starts serving instead of refusing fails at once; one case runs as a real process, for its exit status.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import uvicorn

from sparring.cli import main

DEAD = "http://127.0.0.1:9/v1"  # never contacted: the commands refuse before any model call
ENDPOINTS = ("--policy-base-url", DEAD, "--user-base-url", DEAD)


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A loopback port something else is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def refuse_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    def started(self: uvicorn.Server, *args: object, **kwargs: object) -> None:
        raise AssertionError("the command started serving instead of refusing its flags")

    monkeypatch.setattr(uvicorn.Server, "run", started)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "--port", "99999"), "--port: must be from 0 to 65535 (0: a free one), got 99999"),
        (("gateway", "--port", "-1"), "--port: must be from 0 to 65535 (0: a free one), got -1"),
        (("serve", "--max-body-bytes", "-1"), "--max-body-bytes: must be an integer of at least 1, got -1"),
        (("serve", "--max-repeats", "0"), "--max-repeats: must be an integer of at least 1, got 0"),
        (("serve", "--shutdown-grace", "-5"), "--shutdown-grace: must be at least 0 seconds, got -5"),
        (("serve", "--shutdown-grace", "nan"), "--shutdown-grace: must be a finite number of seconds, got nan"),
        (("gateway", "--keep-ended", "-1"), "--keep-ended: must be an integer of at least 0, got -1"),
        (("gateway", "--idle-timeout", "inf"), "--idle-timeout: must be a finite number of seconds, got inf"),
        (("gateway", "--max-body-bytes", "0"), "--max-body-bytes: must be an integer of at least 1, got 0"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(
    args: tuple[str, ...], message: str, refuse_to_serve: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, *ENDPOINTS]) == 2
    assert capsys.readouterr().err.splitlines() == [f"sparring: error: {message}"]


@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_a_port_in_use_is_one_line_and_exit_2(
    command: str, busy_port: int, refuse_to_serve: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--port", str(busy_port), *ENDPOINTS]) == 2
    expected = f"sparring: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    assert capsys.readouterr().err.splitlines() == [expected]


def test_the_process_exits_2_without_a_traceback(busy_port: int) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sparring.cli", "serve", "--port", str(busy_port), *ENDPOINTS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"sparring: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    ]


@pytest.mark.parametrize("command", ["serve", "gateway"])
def test_binds_loopback_by_default_and_warns_before_binding_wider_without_a_key(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bound: list[str] = []

    def run(self: uvicorn.Server, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            bound.append(sock.getsockname()[0])
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.delenv("SPARRING_API_KEY", raising=False)
    assert main([command, "--port", "0", *ENDPOINTS]) == 0
    quiet = capsys.readouterr().err
    assert main([command, "--host", "0.0.0.0", "--port", "0", *ENDPOINTS]) == 0
    warned = capsys.readouterr().err
    monkeypatch.setenv("SPARRING_API_KEY", "k")
    assert main([command, "--host", "0.0.0.0", "--port", "0", *ENDPOINTS]) == 0
    keyed = capsys.readouterr().err
    assert bound == ["127.0.0.1", "0.0.0.0", "0.0.0.0"]
    assert "warning" not in quiet and "warning" not in keyed
    assert f"sparring {command}: warning: binding 0.0.0.0 without an API key" in warned
