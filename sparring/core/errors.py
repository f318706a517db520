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
