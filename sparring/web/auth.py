"""Bearer-token auth for every sparring HTTP face, and where the key comes from.

`/healthz` is included without the dependency so probes work without a key. Tokens are compared in
constant time.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sparring.web import API_KEY_VARIABLE


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


class BearerAuth:
    """FastAPI dependency: 401 unless `Authorization: Bearer <key>` matches; a no-op when the key is None."""

    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self._expected = api_key.encode() if api_key else b""
        self._scheme = HTTPBearer(auto_error=False, description="Set when the server has an API key.")

    @property
    def enabled(self) -> bool:
        return self.api_key is not None

    async def __call__(self, request: Request) -> None:
        if self.api_key is None:
            return
        credentials: HTTPAuthorizationCredentials | None = await self._scheme(request)
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, self._expected):
            detail = "missing bearer token" if credentials is None else "invalid bearer token"
            raise HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})
