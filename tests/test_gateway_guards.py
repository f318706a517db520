"""The agent gateway against hostile or careless clients, over real HTTP: each test names the issue-15 item it covers.

Sessions belong to whoever opened them, memory is bounded, every bad input is a precise 4xx (never a
500), and an agent never gets an empty 200 stream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from gateway_harness import running_gateway
from outbound_target import BANNER, Target

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


# -- item 9: NaN, Infinity and numbers too large for a double -----------------------------------------

JSON = {"content-type": "application/json"}


async def test_non_finite_numbers_are_a_422_naming_the_field_and_a_refused_finish_keeps_the_session() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                idle_nan = await http.post("/v1/sessions", content=b'{"limits": {"idle_timeout_s": NaN}}', headers=JSON)
                session = (await http.post("/v1/sessions", json={})).json()
                finish = f"/v1/sessions/{session['session_id']}/finish"
                refused = [
                    await http.post(finish, content=body, headers=JSON)
                    for body in (
                        b'{"reward": NaN}',
                        b'{"reward": Infinity}',
                        b'{"reward": 1e400}',
                        b'{"reward_components": {"a": -Infinity}}',
                        b'{"reward": 1, "metadata": {"score": NaN}}',
                    )
                ]
                overflow = await http.post(finish, json={"reward_components": {"a": 1e308, "b": 1e308}})
                chat = await http.post(
                    f"/sessions/{session['session_id']}/v1/chat/completions",
                    content=b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                    headers=JSON,
                )
                record = (await http.post(finish, json={"reward": 0.5})).json()
    assert idle_nan.status_code == 422
    assert idle_nan.json()["detail"][0]["loc"] == ["body", "limits", "idle_timeout_s"]
    assert [r.status_code for r in refused] == [422] * 5
    assert [r.json()["detail"][0]["loc"] for r in refused] == [
        ["body", "reward"],
        ["body", "reward"],
        ["body", "reward"],
        ["body", "reward_components", "a"],
        ["body", "metadata", "score"],
    ]
    assert overflow.status_code == 422 and "not a finite number" in overflow.json()["detail"]
    assert chat.status_code == 422 and chat.json()["error"]["message"].startswith("temperature: ")
    assert (record["status"], record["reward"]) == ("completed", 0.5)


# -- item 14: a body that is not JSON -----------------------------------------------------------------


async def test_a_body_that_is_not_json_is_415_in_each_surfaces_shape() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                plain = {"content-type": "text/plain"}
                management = await http.post("/v1/sessions", content=b"{}", headers=plain)
                session = (await http.post("/v1/sessions", json={})).json()
                chat = await http.post(
                    f"/sessions/{session['session_id']}/v1/chat/completions", content=b"{}", headers=plain
                )
    assert management.status_code == 415 and "is not JSON" in management.json()["detail"]
    assert chat.status_code == 415 and chat.json()["error"]["code"] == 415


# -- item 5: keeping no ended records still ends and writes every session ------------------------------


async def test_keep_ended_0_answers_finish_and_writes_the_record(tmp_path: Any) -> None:
    output = tmp_path / "sessions.jsonl"
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], output=output, options={"keep_ended": 0}) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={})).json()
                finished = await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})
                shown = await http.get(f"/v1/sessions/{session['session_id']}")
    assert finished.status_code == 200 and finished.json()["status"] == "completed"
    assert shown.status_code == 404  # not kept
    assert [json.loads(line)["reward"] for line in output.read_text().splitlines()] == [1]


# -- item 8: a remote verifier contacts only the servers the operator allowed ----------------------------


def remote_state(url: str) -> dict[str, Any]:
    """The remote environment's state, as a harness would pass it to `finish` for the verifier."""
    return {"url": url, "cookies": {}, "tools": [], "row": {}, "input_len": 0}


async def test_a_remote_verifier_is_403_for_a_server_the_operator_did_not_allow() -> None:
    async with Target() as target, FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={"task": {"env_url": target.url}})).json()
                finish = f"/v1/sessions/{session['session_id']}/finish"
                refused = await http.post(finish, json={"verifier": "remote", "env_state": remote_state(target.url)})
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("env_state.url: not a server this service may contact")
    assert "127.0.0.1" not in refused.text and BANNER not in refused.text
    assert target.hits == []


async def test_a_remote_verifier_contacts_an_allowed_server() -> None:
    async with Target() as allowed, FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], options={"env_urls": (allowed.url,)}) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={})).json()
                finish = f"/v1/sessions/{session['session_id']}/finish"
                tried = await http.post(finish, json={"verifier": "remote", "env_state": remote_state(allowed.url)})
    assert tried.status_code == 422 and allowed.hits == ["/verify"]  # asked, and its refusal reported
