"""The agent gateway against hostile or careless clients, over real HTTP: each test names the issue-15 item it covers.

Sessions belong to whoever opened them, memory is bounded, every bad input is a precise 4xx (never a
500), and an agent never gets an empty 200 stream.
"""

from __future__ import annotations

import httpx
from gateway_harness import running_gateway

from sparring.testing import FakeModelServer, Say

OPENING = [{"role": "system", "content": "You play X."}, {"role": "user", "content": "Your move."}]
KEY = {"Authorization": "Bearer s3cret"}


# -- item 12: auth first, and the schema behind the key ------------------------------------------------


async def test_auth_is_checked_before_the_body_is_read_and_the_schema_needs_the_key() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], api_key="s3cret") as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                malformed = await http.post(
                    "/v1/sessions", content=b"{not json", headers={"content-type": "application/json"}
                )
                chat = await http.post(
                    "/sessions/x/v1/chat/completions", content=b"[", headers={"content-type": "application/json"}
                )
                schema_open = [await http.get(path) for path in ("/openapi.json", "/docs")]
                schema_keyed = [await http.get(path, headers=KEY) for path in ("/openapi.json", "/docs")]
    assert (malformed.status_code, malformed.json()) == (401, {"detail": "missing bearer token"})
    assert chat.status_code == 401
    assert [r.status_code for r in schema_open] == [401, 401]
    assert [r.status_code for r in schema_keyed] == [200, 200]
