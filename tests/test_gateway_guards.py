"""The agent gateway against hostile or careless clients, over real HTTP: each test names the issue-15 item it covers.

Sessions belong to whoever opened them, memory is bounded, every bad input is a precise 4xx (never a
500), and an agent never gets an empty 200 stream.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
from aiohttp import web
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


async def test_half_a_surrogate_pair_is_a_422_and_big_integers_reach_the_record(tmp_path: Any) -> None:
    output = tmp_path / "sessions.jsonl"
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], output=output) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={"task_index": 2**70})).json()
                chat = await http.post(
                    f"/sessions/{session['session_id']}/v1/chat/completions",
                    content=rb'{"messages": [{"role": "user", "content": "\ud800"}]}',
                    headers=JSON,
                )
                finish = f"/v1/sessions/{session['session_id']}/finish"
                lone = await http.post(finish, content=rb'{"reward": 1, "metadata": {"x": "\ud800"}}', headers=JSON)
                record = await http.post(finish, json={"reward": 1})
    assert chat.status_code == 422 and chat.json()["error"]["message"].startswith("messages.0.content: ")
    assert lone.status_code == 422 and lone.json()["detail"][0]["loc"] == ["body", "metadata", "x"]
    assert record.status_code == 200 and record.json()["task_index"] == 2**70
    assert json.loads(output.read_text())["task_index"] == 2**70


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
    assert refused.json()["detail"].startswith("env_state.url: not a server this run may contact")
    assert "127.0.0.1" not in refused.text and BANNER not in refused.text
    assert target.hits == []


async def test_a_remote_verifier_contacts_an_allowed_server() -> None:
    async with Target() as allowed, FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], allow_env_urls=[allowed.url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={})).json()
                finish = f"/v1/sessions/{session['session_id']}/finish"
                tried = await http.post(finish, json={"verifier": "remote", "env_state": remote_state(allowed.url)})
    assert tried.status_code == 422 and allowed.hits == ["/verify"]  # asked, and its refusal reported


async def test_an_openenv_verifier_and_a_replayed_task_are_held_to_the_same_servers() -> None:
    async with Target() as target, FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={"task": {"env_url": target.url}})).json()
                finish = f"/v1/sessions/{session['session_id']}/finish"
                kept = await http.post(finish, json={"verifier": "openenv", "env_state": {"url": target.url}})
                replayed = await http.post(finish, json={"verifier": "remote"})
    assert [kept.status_code, replayed.status_code] == [403, 403]
    assert kept.json()["detail"].startswith("env_state.url: not a server this run may contact")
    assert replayed.json()["detail"].startswith("task.env_url: not a server this run may contact")
    assert target.hits == []


async def test_a_replay_without_a_task_env_url_goes_to_the_configured_server() -> None:
    async with Target() as configured, FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], env_url=configured.url) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                task = {"messages": [{"role": "user", "content": "Count to 3."}]}
                session = (await http.post("/v1/sessions", json={"task": task})).json()
                tried = await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"verifier": "remote"})
    assert tried.status_code == 422 and configured.hits == ["/seed_session"]  # asked, and its refusal reported


# -- item 6: a session belongs to whoever opened it --------------------------------------------------------


async def test_another_client_with_the_same_key_cannot_see_touch_or_finish_a_session() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], api_key="s3cret") as gw:
            async with (
                httpx.AsyncClient(base_url=gw.url, headers=KEY) as alice,
                httpx.AsyncClient(base_url=gw.url, headers=KEY) as mallory,
            ):
                mine = (await alice.post("/v1/sessions", json={"task": {"id": "alice"}})).json()
                listed = (await mallory.get("/v1/sessions")).json()["sessions"]
                # Whatever id Mallory learns (from a listing, a record, the policy server's logs), it opens nothing.
                ids = [s.get("record_id") or s.get("session_id") for s in listed]
                attempts = []
                for sid in ids:
                    attempts += [
                        await mallory.get(f"/v1/sessions/{sid}"),
                        await mallory.post(f"/sessions/{sid}/v1/chat/completions", json={"messages": OPENING}),
                        await mallory.get(f"/sessions/{sid}/v1/models"),
                        await mallory.post(f"/v1/sessions/{sid}/finish", json={"reward": 1.0}),
                        await mallory.delete(f"/v1/sessions/{sid}"),
                    ]
                record = (await alice.post(f"/v1/sessions/{mine['session_id']}/finish", json={"reward": 0.25})).json()
    assert [r.status_code for r in attempts] == [404] * 5
    assert {r.json().get("detail") or r.json()["error"]["message"] for r in attempts} == {"no such session"}
    assert ids == [mine["record_id"]] and mine["record_id"] != mine["session_id"]
    assert (record["id"], record["status"], record["reward"]) == (mine["record_id"], "completed", 0.25)
    assert fake.requests == []  # nothing of Mallory's reached the policy server


async def test_the_listing_shows_the_callers_own_sessions_and_the_operator_sees_all() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], options={"operator_key": "op-key"}) as gw:
            clients = {
                name: httpx.AsyncClient(base_url=gw.url, headers={"Authorization": f"Bearer {name}-token"})
                for name in ("carol", "dave")
            }
            async with clients["carol"] as carol, clients["dave"] as dave, httpx.AsyncClient(base_url=gw.url) as anon:
                opened = {
                    "carol": [(await carol.post("/v1/sessions", json={})).json()["record_id"] for _ in range(2)],
                    "dave": [(await dave.post("/v1/sessions", json={})).json()["record_id"]],
                    "anonymous": [(await anon.post("/v1/sessions", json={})).json()["record_id"]],
                }
                seen = {
                    "carol": (await carol.get("/v1/sessions")).json()["sessions"],
                    "dave": (await dave.get("/v1/sessions")).json()["sessions"],
                    "anonymous": (await anon.get("/v1/sessions")).json()["sessions"],
                    "operator": (await anon.get("/v1/sessions", headers={"Authorization": "Bearer op-key"})).json()[
                        "sessions"
                    ],
                }
    ids = {who: [s["record_id"] for s in sessions] for who, sessions in seen.items()}
    assert ids["carol"] == opened["carol"] and ids["dave"] == opened["dave"]
    assert ids["anonymous"] == []  # no credential: nothing provably its own
    assert ids["operator"] == [*opened["carol"], *opened["dave"], *opened["anonymous"]]
    assert all("session_id" not in s for sessions in seen.values() for s in sessions)  # handles never listed


async def test_the_operator_key_passes_auth() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], api_key="s3cret", options={"operator_key": "op-key"}) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                operator = await http.get("/v1/sessions", headers={"Authorization": "Bearer op-key"})
                other = await http.get("/v1/sessions", headers={"Authorization": "Bearer op-ke"})
    assert (operator.status_code, other.status_code) == (200, 401)


# -- item 7: bounded memory ----------------------------------------------------------------------------------


async def test_sessions_idle_timeouts_and_metadata_are_bounded() -> None:
    options = {"max_sessions": 2, "max_metadata_bytes": 1000, "max_idle_timeout_s": 60.0}
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], idle_timeout_s=30.0, options=options) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                forever = [
                    await http.post("/v1/sessions", json={"limits": {"idle_timeout_s": 1e308}}),
                    await http.post("/v1/sessions", content=b'{"limits": {"idle_timeout_s": Infinity}}', headers=JSON),
                ]
                heavy = await http.post("/v1/sessions", json={"metadata": {"blob": "x" * 1000}})
                first = (await http.post("/v1/sessions", json={"metadata": {"run": 1}})).json()
                second = (await http.post("/v1/sessions", json={})).json()
                full = await http.post("/v1/sessions", json={})
                finish = f"/v1/sessions/{first['session_id']}/finish"
                grown = await http.post(finish, json={"reward": 1, "metadata": {"blob": "x" * 1000}})
                done = await http.post(finish, json={"reward": 1, "metadata": {"ok": True}})
                room = await http.post("/v1/sessions", json={})
    assert [r.status_code for r in forever] == [422, 422]
    assert forever[0].json()["detail"] == (
        "limits.idle_timeout_s: must be at most 60 seconds (--max-idle-timeout), got 1e+308"
    )
    assert heavy.status_code == 422 and "the limit is 1000 bytes (--max-metadata-bytes)" in heavy.json()["detail"]
    assert full.status_code == 429 and "--max-sessions 2" in full.json()["detail"]
    assert 1 <= int(full.headers["retry-after"]) <= 300
    assert grown.status_code == 422 and "--max-metadata-bytes" in grown.json()["detail"]
    assert done.status_code == 200 and done.json()["metadata"] == {"run": 1, "ok": True}  # the refusal kept it open
    assert room.status_code == 201 and second["session_id"] != first["session_id"]


async def test_the_listing_comes_a_page_at_a_time() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], api_key="s3cret") as gw:
            async with httpx.AsyncClient(base_url=gw.url, headers=KEY) as http:
                opened = [(await http.post("/v1/sessions", json={})).json()["record_id"] for _ in range(5)]
                pages = []
                cursor = None
                while True:
                    params = {"limit": 2} | ({"cursor": cursor} if cursor is not None else {})
                    page = (await http.get("/v1/sessions", params=params)).json()
                    pages.append([s["record_id"] for s in page["sessions"]])
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                too_big = await http.get("/v1/sessions", params={"limit": 10_000})
    assert pages == [opened[0:2], opened[2:4], opened[4:5]]
    assert too_big.status_code == 422


# -- item 13: an agent never gets an empty or silently cut 200 stream ----------------------------------------


class OddUpstream:
    """A policy server that misbehaves on streams: plain JSON for "json", a stream without [DONE] for "cut"."""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = {
            "id": "c1",
            "object": "chat.completion",
            "model": "policy",
            "prompt_token_ids": [1, 2],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        }
        if body["messages"][-1]["content"] == "json":
            return web.json_response(reply)
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "h"}}]}
        await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        return stream  # ends without [DONE]

    async def __aenter__(self) -> OddUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_stream_answered_with_plain_json_or_cut_before_done_is_an_error_for_the_agent() -> None:
    async with OddUpstream() as upstream:
        with running_gateway([upstream.url], max_retries=0) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = (await http.post("/v1/sessions", json={})).json()
                client = openai.AsyncOpenAI(base_url=session["base_url"], api_key="unused", max_retries=0)
                errors = []
                for text in ("json", "cut"):
                    try:
                        stream = await client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": text}], stream=True
                        )
                        chunks = [chunk async for chunk in stream]
                    except openai.APIError as exc:
                        errors.append(exc)
                    else:
                        raise AssertionError(f"{text}: the agent got {len(chunks)} chunks and no error")
                record = (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 0})).json()
    as_json, cut = errors
    assert isinstance(as_json, openai.APIStatusError) and as_json.status_code == 502
    assert "'application/json', not an event stream" in as_json.message
    assert "ended the stream before [DONE]" in cut.message
    assert [c["reason"] for c in record["unrecorded_calls"]] == [
        "the policy server answered a streaming request with 'application/json', not an event stream",
        "the stream ended before [DONE]",
    ]
