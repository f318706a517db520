"""sparring's errors: one root, a branch per cause, messages that say what to do.

Catch `SparringError` for anything sparring raises on purpose. Two branches are the caller's to
fix and make the CLI exit 2 without a traceback: `UsageError` (a setting, a flag, a path) and
`InputError` (a task, record or row in a file, named by file, line and field). Everything else is
either a failure of something sparring talks to (`SparringModelError`: model servers and the local
model launcher; `EnvServerError`: environment servers) or a bug, which keeps its traceback.
"""

from __future__ import annotations


class SparringError(Exception):
    """Base class of every error sparring raises on purpose."""


class UsageError(SparringError, ValueError):
    """A setting, flag or path that cannot work; the message says what to pass instead."""


class InputError(SparringError, ValueError):
    """A task, record or row that cannot be used; the message names where (file:line) and the field."""


class TaskError(InputError):
    """A task row that cannot be run."""


class SeedError(TaskError):
    """A task whose `env_seed` (or other content) the environment rejects; the episode ends `invalid_task`."""


class ReplayError(InputError):
    """A conversation that cannot be replayed into an environment's state (to score it); says which message."""


class StaleEpisode(SparringError):
    """An episode whose oldest policy token lags the current weight version by more than `max_staleness`.

    It ends `aborted` / `stale` before its next policy call (no more tokens are spent on it).
    """


class EnvServerError(SparringError):
    """An environment's server failed: refused, unreachable, gone mid-episode, or answered what cannot be read.

    The episode ends `aborted` / `env_error` with this message, also when it happens while seeding.
    """


class SparringModelError(SparringError):
    """Something about a model or a model server is wrong."""


class ModelCallError(SparringModelError):
    """A model call that could not produce a reply."""


class ContextLengthExceeded(ModelCallError):
    """The prompt no longer fits the model's context window (vLLM's 400): the episode is truncated."""


class ModelRequestError(ModelCallError):
    """The server rejected the request (4xx): retrying would not help; fix the request or the settings."""


class ModelUnavailable(ModelCallError):
    """The server kept failing (5xx, connection errors, time-outs) after every retry."""


class WeightSyncError(SparringError):
    """A weight-sync step (pause, update, resume) that could not be done; the message says what changed."""


class WeightUpdateRefused(WeightSyncError, UsageError):
    """A weight update (or pause) that is the caller's to fix, refused before anything changed: a version
    not newer than the current one, an adapter path that is malformed, not allowed or not found.
    `status` is the HTTP status the service answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class WeightSyncFailed(WeightSyncError):
    """Every policy server failed the step (unreachable, no dev mode, an error): nothing changed."""


class ServiceError(SparringError):
    """The sparring service answered with an error (`sparring.client`): `status` and its `detail`."""

    def __init__(self, message: str, status: int, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ServiceRequestError(ServiceError, UsageError):
    """The service refused the request (4xx): fix the request; retrying it as is will not help."""


class ServiceAuthError(ServiceRequestError):
    """No bearer token, or the wrong one (401)."""


class ServiceOverloaded(ServiceError):
    """No room for the episodes right now (429): retry after `retry_after_s`."""

    def __init__(self, message: str, status: int, detail: object = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status, detail)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(ServiceError):
    """The service is shutting down, unreachable, or failed (5xx, connection errors)."""
