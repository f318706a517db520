"""The rollout service against hostile or careless clients, over real HTTP: each test names the issue-15 item it covers.

Every answer is a precise 4xx (never a 500), nothing a request names is contacted unless the operator
configured it, and auth comes before anything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from outbound_target import BANNER, Target
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


# -- item 9: NaN, Infinity and numbers too large for a double -----------------------------------------

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/rollouts", b'{"repeats": NaN}', ["body", "repeats"]),
        ("/v1/rollouts", b'{"settings": {"policy_temperature": NaN}}', ["body", "settings", "policy_temperature"]),
        ("/v1/rollouts", b'{"task": {"metadata": {"x": [1, -Infinity]}}}', ["body", "task", "metadata", "x", 1]),
        ("/v1/rollouts/batch", b'{"tasks": [{}, {"env_seed": {"a": 1e400}}]}', ["body", "tasks", 1, "env_seed", "a"]),
        ("/run", b'{"responses_create_params": {"input": "hi", "temperature": Infinity}}', None),
        ("/aggregate_metrics", b'{"verify_responses": [{"reward": NaN}]}', ["body", "verify_responses", 0, "reward"]),
    ],
)
async def test_non_finite_numbers_are_a_422_naming_the_field(path: str, body: bytes, loc: list[Any] | None) -> None:
    async with serving() as served, served.client() as client:
        response = await client.post(path, content=body, headers=JSON)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "finite_number" and "finite number" in error["msg"]
    if loc is not None:
        assert error["loc"] == loc
    else:
        assert error["loc"][:2] == ["body", "responses_create_params"]


async def test_half_a_surrogate_pair_is_a_422_naming_the_field_and_big_integers_come_back_exact() -> None:
    async with serving() as served, served.client() as client:
        lone = await client.post("/v1/rollouts", content=rb'{"task": {"metadata": {"a": ["\udfff"]}}}', headers=JSON)
        pair = await client.post("/v1/rollouts", content=rb'{"task": {"id": "\ud83d\ude00"}}', headers=JSON)
        big = await client.post("/v1/rollouts", json={"task": {"id": 2**100}})
    assert lone.status_code == 422
    assert lone.json()["detail"][0]["loc"] == ["body", "task", "metadata", "a", 0]
    assert pair.status_code == 200 and pair.json()["records"][0]["task_id"] == "\N{GRINNING FACE}"
    assert big.status_code == 200 and big.json()["records"][0]["task_id"] == 2**100


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"task": {"metadata": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}}", "the body is nested too deeply"),
        (b'{"task": {"id": ' + b"9" * 5000 + b"}}", "the body cannot be read as JSON: Exceeds the limit"),
    ],
)
async def test_a_body_the_parser_gives_up_on_is_a_422_saying_why(body: bytes, message: str) -> None:
    async with serving() as served, served.client() as client:
        response = await client.post("/v1/rollouts", content=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith(message)


async def test_aggregate_metrics_of_huge_rewards_is_an_answer_or_a_422_never_a_500() -> None:
    def rewards(*values: Any) -> dict[str, Any]:
        return {"verify_responses": [{"_ng_task_index": 0, "reward": value} for value in values]}

    async with serving() as served, served.client() as client:
        huge = await client.post("/aggregate_metrics", json=rewards(1e308, 1e308, 1e308))
        spread = await client.post("/aggregate_metrics", json=rewards(1e308, -1e308))
        beyond = await client.post("/aggregate_metrics", json=rewards(1.7e308, -1.7e308))
        bad_index = await client.post("/aggregate_metrics", json={"verify_responses": [{"_ng_task_index": "one"}]})
    assert huge.status_code == 200, huge.text
    metrics = huge.json()["agent_metrics"]
    assert (metrics["mean/reward"], metrics["median/reward"], metrics["std/reward"]) == (1e308, 1e308, 0.0)
    assert spread.status_code == 200 and spread.json()["agent_metrics"]["mean/reward"] == 0.0
    assert beyond.status_code == 422
    assert beyond.json()["detail"][0]["msg"].startswith("std/reward: the spread of 'reward' is beyond")
    assert bad_index.status_code == 422
    assert bad_index.json()["detail"][0]["loc"] == ["body", "verify_responses", 0, "_ng_task_index"]


# -- item 14: the smaller ones ----------------------------------------------------------------------


async def test_a_chunked_body_over_the_limit_says_how_much_was_read() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"task": {"metadata": {"blob": "'
        yield b"x" * 1500
        yield b'"}}}'

    async with serving(max_body_bytes=1000) as served, served.client() as client:
        response = await client.post("/v1/rollouts", content=chunks(), headers=JSON)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail.startswith("request body is over 1000 bytes; the limit is 1000 bytes (--max-body-bytes)")
    assert "(sent without Content-Length;" in detail and "more than that" not in detail


async def test_a_422_does_not_echo_a_large_input_back() -> None:
    async with serving() as served, served.client() as client:
        response = await client.post("/v1/rollouts/batch", json={"tasks": [{"id": "t"}] * 10_001})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "tasks"] and "at most 10000 items" in error["msg"]
    assert "input" not in error and len(response.content) < 1000


async def test_a_body_that_is_not_json_is_415() -> None:
    async with serving() as served, served.client() as client:
        plain = await client.post("/v1/rollouts", content=b"{}", headers={"content-type": "text/plain"})
        form = await client.post("/run", data={"a": "1"})
    assert plain.status_code == 415 and "'text/plain' is not JSON" in plain.json()["detail"]
    assert form.status_code == 415


# -- item 8: only the environment servers the operator configured ---------------------------------------


def remote_task(url: str) -> dict[str, Any]:
    return {"env": "remote", "env_url": url, "messages": [{"role": "user", "content": "Count to 3."}]}


async def test_a_request_naming_another_env_url_is_403_and_nothing_is_sent_to_it() -> None:
    async with Target() as target, serving() as served, served.client() as client:
        single = await client.post("/v1/rollouts", json={"task": remote_task(target.url)})
        batch = await client.post("/v1/rollouts/batch", json={"tasks": [{}, remote_task(f"{target.url}/latest")]})
        row = {"responses_create_params": {"input": "Count to 3."}, "env": "remote", "env_url": target.url}
        run = await client.post("/run", json=row)
    assert [r.status_code for r in (single, batch, run)] == [403, 403, 403]
    assert single.json()["detail"].startswith("task.env_url: not a server this run may contact")
    assert batch.json()["detail"].startswith("tasks.1.env_url: ")
    for response in (single, batch, run):  # nothing about the target: neither its address nor what it says
        assert "127.0.0.1" not in response.text and BANNER not in response.text and "HTTP" not in response.text
    assert target.hits == []


async def test_the_configured_env_url_and_the_allowed_ones_are_used() -> None:
    async with Target() as configured, Target() as allowed:
        flags = ("--env-url", configured.url, "--allow-env-url", f"{allowed.url}/")
        async with serving(cli=flags) as served, served.client() as client:
            answers = [
                await client.post("/v1/rollouts", json={"task": remote_task(url)})
                for url in (f"{configured.url}/", allowed.url)
            ]
    for response in answers:  # the target refuses the seed: an aborted record, but it was asked
        assert response.status_code == 200, response.text
        assert response.json()["records"][0]["stop_reason"] == "invalid_task"
    assert configured.hits == ["/seed_session"] and allowed.hits == ["/seed_session"]


async def test_the_weight_routes_take_json_with_finite_numbers_only() -> None:
    async with serving() as served, served.client() as client:
        plain = await client.post("/v1/weights/pause", content=b"keep", headers={"content-type": "text/plain"})
        infinite = await client.post(
            "/v1/weights/pause", content=b'{"mode": "keep", "timeout_s": Infinity}', headers=JSON
        )
    assert plain.status_code == 415
    assert infinite.status_code == 422
    assert infinite.json()["detail"][0]["loc"] == ["body", "timeout_s"]
    assert served.model_calls() == 0


async def test_the_environment_listing_shows_no_server_key() -> None:
    keys = ("--policy-api-key", "pk-secret", "--user-api-key", "uk-secret", "--judge-api-key", "jk-secret")
    async with serving(cli=("--judge-base-url", "http://127.0.0.1:9/v1", *keys)) as served, served.client() as client:
        listing = await client.get("/v1/envs")
    assert listing.status_code == 200
    assert "secret" not in listing.text
    settings = listing.json()["envs"][0]["settings"]
    assert [settings[f"{role}_api_key"] for role in ("policy", "user", "judge")] == ["***"] * 3
