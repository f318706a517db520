"""Outbound URLs: a face contacts only the servers its operator configured, never one a request names.

A request may still name a URL (a task's `env_url`), but only to pick one of the allowed ones; any
other is refused before anything is sent, with a message that says nothing of the target (which
would otherwise make the face a probe of its network: what answers at 169.254.169.254, which ports
are closed). URLs compare exactly, up to a trailing slash.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from sparring.web.serving import SettingError


class OutboundRefused(Exception):
    """A request named a server the operator did not allow (403); nothing was sent to it."""


def check_url(flag: str, url: str) -> str:
    """An allowed server's URL as given, if it is absolute http(s); SettingError naming the flag otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingError(f"{flag}: must be an http:// or https:// URL, got {url!r}")
    return url


class AllowList:
    """The servers a face may contact; `None` entries (an unset flag) are skipped."""

    def __init__(self, urls: Iterable[str | None]) -> None:
        self._urls = frozenset(_normal(url) for url in urls if url)

    def allows(self, url: str) -> bool:
        return _normal(url) in self._urls

    def refusal(self, url: str, where: str, flags: str) -> str | None:
        """Why `url` may not be contacted (`where` names the request's field, `flags` how to allow one), or None."""
        if self.allows(url):
            return None
        return f"{where}: not a server this service may contact; its operator allows them with {flags}"

    def check(self, url: str, where: str, flags: str) -> None:
        """OutboundRefused unless `url` is allowed."""
        refusal = self.refusal(url, where, flags)
        if refusal is not None:
            raise OutboundRefused(refusal)


def _normal(url: str) -> str:
    return url.strip().rstrip("/")
