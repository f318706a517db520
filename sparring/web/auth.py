"""Bearer-token auth, checked before anything else of a request is read, and where the keys come from.

`BearerAuth` is ASGI middleware, not a route dependency: FastAPI parses a body before it solves a
route's dependencies, so a dependency would answer a malformed body without a token with 400/422
instead of 401. Here every path but the open ones (`/healthz`) needs the key when one is set: the
OpenAPI schema and `/docs` too, and an unknown path is 401 rather than 404, so nothing about the
routes shows without it. Tokens are compared in constant time. The operator key, when set, passes
wherever the API key does and marks its bearer as the operator (the gateway lists every session to it).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from sparring.web import API_KEY_VARIABLE, OPERATOR_KEY_VARIABLE
from sparring.web.body import send_json_error

OPEN_PATHS = frozenset({"/healthz"})


class SecurityError(ValueError):
    """A key setting that cannot be used; the message says what to fix."""


def resolve_api_key(
    api_key_file: str | Path | None = None, *, variable: str = API_KEY_VARIABLE, flag: str = "--api-key-file"
) -> str | None:
    """The token from the key file (first line, stripped), else from `$variable`; None: not set (auth off)."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecurityError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
        if not key:
            raise SecurityError(f"{flag} {path}: the file is empty")
        return key
    return os.environ.get(variable, "").strip() or None


def resolve_operator_key(operator_key_file: str | Path | None = None) -> str | None:
    """The operator's token from `--operator-key-file`, else `$SPARRING_OPERATOR_KEY`; None: no operator."""
    return resolve_api_key(operator_key_file, variable=OPERATOR_KEY_VARIABLE, flag="--operator-key-file")


def bearer_token(scope: Scope) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def same_secret(given: str | None, expected: str | None) -> bool:
    """Whether two secrets are equal, in time independent of where they differ."""
    if given is None or expected is None:
        return False
    return secrets.compare_digest(given.encode(), expected.encode())


def credential_id(token: str | None) -> bytes | None:
    """A stable, non-reversible name for the credential a request came with (who opened a session)."""
    return hashlib.sha256(token.encode()).digest() if token is not None else None


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the API key or the operator key; all pass without a key."""

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        operator_key: str | None = None,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.operator_key = operator_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if same_secret(token, self.api_key) or same_secret(token, self.operator_key):
            await self.app(scope, receive, send)
            return
        detail = "missing bearer token" if token is None else "invalid bearer token"
        await send_json_error(send, 401, detail, {b"www-authenticate": b"Bearer"})
