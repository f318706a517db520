"""Bearer-token auth, checked before anything else of a request is read, and where the key comes from.

`BearerAuth` is ASGI middleware, not a route dependency: FastAPI parses a body before it solves a
route's dependencies, so a dependency would answer a malformed body without a token with 400/422
instead of 401. Here every path but the open ones (`/healthz`) needs the key when one is set: the
OpenAPI schema and `/docs` too, and an unknown path is 401 rather than 404, so nothing about the
routes shows without it. Tokens are compared in constant time.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from sparring.web import API_KEY_VARIABLE
from sparring.web.body import send_json_error

OPEN_PATHS = frozenset({"/healthz"})


class SecurityError(ValueError):
    """A key setting that cannot be used; the message says what to fix."""


def resolve_api_key(api_key_file: str | Path | None = None) -> str | None:
    """The bearer token from `--api-key-file` (first line, stripped), else `$SPARRING_API_KEY`; None: auth off."""
    if api_key_file is not None:
        path = Path(api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecurityError(f"--api-key-file {path}: cannot read it ({exc.strerror})") from None
        if not key:
            raise SecurityError(f"--api-key-file {path}: the file is empty")
        return key
    return os.environ.get(API_KEY_VARIABLE, "").strip() or None


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


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the API key; everything passes when there is none."""

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if same_secret(token, self.api_key):
            await self.app(scope, receive, send)
            return
        detail = "missing bearer token" if token is None else "invalid bearer token"
        await send_json_error(send, 401, detail, {b"www-authenticate": b"Bearer"})
