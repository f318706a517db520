"""The rollout service against hostile or careless clients, over real HTTP: each test names the issue-15 item it covers.

Every answer is a precise 4xx (never a 500), nothing a request names is contacted unless the operator
configured it, and auth comes before anything else.
"""

from __future__ import annotations

from service_harness import serving

KEY = {"Authorization": "Bearer k-123"}


# -- item 12: auth first, and the schema behind the key ------------------------------------------------


async def test_auth_is_checked_before_the_body_is_read_and_the_schema_needs_the_key() -> None:
    async with serving(api_key="k-123") as served, served.client() as client:
        malformed = await client.post(
            "/v1/rollouts", content=b"{not json", headers={"content-type": "application/json"}
        )
        wrong_type = await client.post("/v1/rollouts", content=b"hello", headers={"content-type": "text/plain"})
        schema_open = [await client.get(path) for path in ("/openapi.json", "/docs", "/no/such/path")]
        schema_keyed = [await client.get(path, headers=KEY) for path in ("/openapi.json", "/docs")]
        health = await client.get("/healthz")
    assert (malformed.status_code, malformed.json()) == (401, {"detail": "missing bearer token"})
    assert wrong_type.status_code == 401
    assert [r.status_code for r in schema_open] == [401, 401, 401]  # not even which paths exist
    assert [r.status_code for r in schema_keyed] == [200, 200]
    assert health.status_code == 200
