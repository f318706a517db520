"""Outbound URLs: an episode contacts only the environment servers its operator configured.

A task may name a server (`env_url`, for `remote` and `openenv`), but only to pick one of the
allowed ones: the run's own `env_url` and each `allow_env_urls` entry (`--env-url`,
`--allow-env-url`, the service's and the gateway's flags of the same names). Any other is refused
before anything is sent, with a message that names the field and says nothing of the target (which
would otherwise make a face a probe of its network). URLs compare exactly, up to a trailing slash.

Every face calls this one check: the seed node (run, collect, serve, Ray, Studio, notebooks),
`sparring env-serve` (a reset's task), and the service and gateway before they admit a request.
"""

from __future__ import annotations

from collections.abc import Iterable

from sparring.core.errors import TaskError

ALLOW_FLAGS = "--env-url and --allow-env-url"


class OutboundRefused(TaskError):
    """A task named a server the operator did not allow; nothing was sent to it."""


class AllowList:
    """The servers a face may contact; `None` entries (an unset flag) are skipped."""

    def __init__(self, urls: Iterable[str | None]) -> None:
        self._urls = frozenset(_normal(url) for url in urls if url)

    def allows(self, url: str) -> bool:
        """Whether `url` is one of the allowed servers."""
        return _normal(url) in self._urls

    def refusal(self, url: str, where: str, flags: str = ALLOW_FLAGS) -> str | None:
        """Why `url` may not be contacted (`where` names the task's field, `flags` how to allow one), or None."""
        if self.allows(url):
            return None
        return f"{where}: not a server this run may contact; its operator allows them with {flags}"

    def check(self, url: str, where: str, flags: str = ALLOW_FLAGS) -> None:
        """OutboundRefused unless `url` is allowed."""
        refusal = self.refusal(url, where, flags)
        if refusal is not None:
            raise OutboundRefused(refusal)


def task_env_url(
    task_url: str | None, run_url: str | None, allowed: Iterable[str], where: str = "env_url"
) -> str | None:
    """The server a task's episode talks to: the task's own when the operator allowed it, else the run's.

    `OutboundRefused` (an `invalid_task`) for a task naming any server but the run's and the allowed ones.
    """
    if not task_url:
        return run_url
    AllowList([run_url, *allowed]).check(task_url, where)
    return task_url


def _normal(url: str) -> str:
    return url.strip().rstrip("/")
