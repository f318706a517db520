"""Starting a face from the command line: checked flags, the listening socket, the warning for wide binds.

Every problem here is one line for the command to print (exit 2), never a traceback: a port out of
range, a port in use, an address that does not resolve, a bound below its minimum.
"""

from __future__ import annotations

import math
import socket

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class SettingError(ValueError):
    """A flag or setting that cannot be used; the message names it and says what it must be."""


def at_least(flag: str, value: int, minimum: int) -> None:
    """`value` must be an integer no smaller than `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingError(f"{flag}: must be an integer of at least {minimum}, got {value!r}")


def seconds(flag: str, value: float, *, positive: bool = False, maximum: float | None = None) -> None:
    """`value` must be a finite number of seconds, at least 0 (above 0 when `positive`), at most `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingError(f"{flag}: must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise SettingError(f"{flag}: must be {'above' if positive else 'at least'} 0 seconds, got {value:g}")
    if maximum is not None and value > maximum:
        raise SettingError(f"{flag}: must be at most {maximum:g} seconds, got {value:g}")


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket bound to (host, port) and listening, so clients that connect at once wait in the backlog.

    SettingError, in one line, when the port is out of range or the address cannot be bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise SettingError(f"--port: must be from 0 to 65535 (0: a free one), got {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise SettingError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def shown_address(sock: socket.socket) -> str:
    """`http://host:port` of a listening socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


def exposure_warning(command: str, host: str, api_key: str | None, what: str) -> str | None:
    """The warning for binding beyond loopback without a key, or None."""
    if host in LOOPBACK or api_key is not None:
        return None
    return (
        f"sparring {command}: warning: binding {host} without an API key: anyone who can reach this port "
        f"can {what} (set $SPARRING_API_KEY or --api-key-file)"
    )
