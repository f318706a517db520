"""The agent gateway over real loopback HTTP: uvicorn in front of the scripted vLLM-shaped server.

Agents are the `openai` SDK and plain httpx; each record is checked against the ledger contract of
our own episodes (`assert_exact_ledger`) and against what the model server actually received.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from gateway_harness import assert_exact_ledger, running_gateway

from sparring.gateway.branches import Branches
from sparring.gateway.history import fingerprints
from sparring.testing import Call, ContextFull, Fail, FakeModelServer, Hang, ModelRequest, Say, Script
from sparring.testing.tokenizer import decode

MAKE_MOVE = {
    "type": "function",
    "function": {
        "name": "make_move",
        "parameters": {"type": "object", "properties": {"position": {"type": "integer"}}, "required": ["position"]},
    },
}
OPENING = [{"role": "system", "content": "You play X."}, {"role": "user", "content": "Your move."}]


async def new_session(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await http.post("/v1/sessions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def agent(session: dict[str, Any], **options: Any) -> openai.AsyncOpenAI:
    """The agent's only change: the base URL (and a key, which the gateway checks when it has one)."""
    return openai.AsyncOpenAI(base_url=session["base_url"], api_key=options.pop("api_key", "unused"), max_retries=0)


def policy_requests(server: FakeModelServer, session_id: str) -> list[dict[str, Any]]:
    return [r for r in server.requests if r["headers"].get("X-Session-ID") == session_id]


# -- lifecycle -------------------------------------------------------------------------------------


async def test_session_lifecycle_tool_call_round_trip_and_record() -> None:
    script = Script([Call("make_move", {"position": 4}), Say("I took the centre.")])
    async with FakeModelServer({"policy": script}) as fake:
        with running_gateway([fake.base_url], policy_model="policy") as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http, task={"id": "t-1"}, metadata={"run": 7}, task_index=3)
                sid = session["session_id"]  # the session's secret handle: in every URL of the session
                assert session["base_url"] == f"{gw.url}/sessions/{sid}/v1"
                client = agent(session)
                models = await client.models.list()
                first = await client.chat.completions.create(model="gpt-4o", messages=OPENING, tools=[MAKE_MOVE])
                call = first.choices[0].message.tool_calls[0]
                history = [
                    *OPENING,
                    first.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": '{"board": ["X"]}'},
                ]
                second = await client.chat.completions.create(model="gpt-4o", messages=history, tools=[MAKE_MOVE])
                in_flight = (await http.get(f"/v1/sessions/{sid}")).json()
                record = (
                    await http.post(f"/v1/sessions/{sid}/finish", json={"reward_components": {"a": 0.5, "b": 0.25}})
                ).json()
                again = await http.post(f"/v1/sessions/{sid}/finish", json={"reward": 1})
                late = await http.post(f"/sessions/{sid}/v1/chat/completions", json={"messages": OPENING})
                shown = (await http.get(f"/v1/sessions/{sid}")).json()
            requests = policy_requests(fake, session["record_id"])  # the public id goes upstream, not the handle
    assert [m.id for m in models.data] == ["policy"]
    assert call.function.name == "make_move" and json.loads(call.function.arguments) == {"position": 4}
    assert second.choices[0].message.content == "I took the centre."
    # the agent sees plain OpenAI: none of what the gateway added for the ledger
    for reply in (first, second):
        extra = reply.model_extra or {}
        assert "prompt_token_ids" not in extra and reply.choices[0].logprobs is None
        assert "token_ids" not in (reply.choices[0].model_extra or {})
    # what went upstream: the policy model, token ids and logprobs asked for, the session id as a header
    assert [r["body"]["model"] for r in requests] == ["policy", "policy"]
    assert all(r["body"]["return_token_ids"] is True and r["body"]["logprobs"] is True for r in requests)
    assert in_flight["status"] == "active" and in_flight["num_calls"] == 2 and in_flight["branches"] == 1
    assert record["status"] == "completed" and record["stop_reason"] == "agent_done"
    assert record["reward"] == 0.75 and record["reward_components"] == {"a": 0.5, "b": 0.25}
    assert (record["task_id"], record["task_index"], record["metadata"]) == ("t-1", 3, {"run": 7})
    assert [m["actor"] for m in record["messages"]] == ["env", "user", "policy", "env", "policy"]
    assert record["messages"][-1]["content"] == "I took the centre."
    assert record["num_policy_calls"] == 2 and record["trajectory"]["prefix_mismatches"] == 0
    assert_exact_ledger(record)
    [segment] = record["trajectory"]["segments"]
    assert (
        segment["token_ids"][: record["trajectory"]["calls"][1]["prompt_len"]]
        == segment["token_ids"][: len(segment["token_ids"]) - record["trajectory"]["calls"][1]["completion_len"]]
    )
    assert again.status_code == 409 and late.status_code == 409
    assert late.json()["error"]["type"] == "conflict_error"
    assert shown == record


async def test_streaming_records_the_same_tokens_and_hides_what_the_gateway_added() -> None:
    steps = [Call("make_move", {"position": 4}), Say("Done, héllo.")]
    async with FakeModelServer({"policy": Script(steps)}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                records = []
                for stream in (False, True):
                    session = await new_session(http)
                    client = agent(session)
                    history = list(OPENING)
                    for _ in steps:
                        if stream:
                            chunks = [
                                c
                                async for c in await client.chat.completions.create(
                                    model="m", messages=history, tools=[MAKE_MOVE], stream=True
                                )
                            ]
                            assert all(not c.usage and "prompt_token_ids" not in (c.model_extra or {}) for c in chunks)
                            assert all(c.choices and c.choices[0].logprobs is None for c in chunks)
                            message = _merge(chunks)
                        else:
                            reply = await client.chat.completions.create(model="m", messages=history, tools=[MAKE_MOVE])
                            message = reply.choices[0].message.model_dump(exclude_none=True)
                        history.append(message)
                        for tool_call in message.get("tool_calls") or ():
                            history.append({"role": "tool", "tool_call_id": tool_call["id"], "content": "ok"})
                    records.append(
                        (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})).json()
                    )
    plain, streamed = records
    for record in records:
        assert_exact_ledger(record)
        assert record["trajectory"]["prefix_mismatches"] == 0
    assert [c["stream"] for c in streamed["trajectory"]["calls"]] == [True, True]
    assert streamed["trajectory"]["segments"][0]["token_ids"] == plain["trajectory"]["segments"][0]["token_ids"]
    assert streamed["trajectory"]["segments"][0]["logprobs"] == plain["trajectory"]["segments"][0]["logprobs"]
    assert streamed["messages"][-1]["content"] == "Done, héllo."
    assert streamed["messages"][2]["tool_calls"][0]["function"]["name"] == "make_move"


def _merge(chunks: list[Any]) -> dict[str, Any]:
    """An assistant message from stream chunks, as an agent framework puts it together."""
    content, calls = "", {}
    for chunk in chunks:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or ():
            slot = calls.setdefault(
                call.index, {"id": call.id, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            slot["function"]["name"] += call.function.name or ""
            slot["function"]["arguments"] += call.function.arguments or ""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


async def test_what_the_agent_asks_for_itself_stays_in_the_reply() -> None:
    async with FakeModelServer({"policy": Say("hi")}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http, limits={"max_tokens_per_call": 40})
                reply = await http.post(
                    f"/sessions/{session['session_id']}/v1/chat/completions",
                    json={"messages": OPENING, "logprobs": True, "return_token_ids": True, "max_tokens": 500},
                )
            body = reply.json()
            sent = fake.requests[0]["body"]
    assert body["prompt_token_ids"] and body["choices"][0]["token_ids"]
    assert len(body["choices"][0]["logprobs"]["content"]) == len(body["choices"][0]["token_ids"])
    assert sent["max_tokens"] == 40 and sent["temperature"] == 1.0  # the session's cap; the policy's sampling default


# -- segments and branches ---------------------------------------------------------------------------


async def test_history_rewrite_opens_a_counted_segment_in_the_same_branch() -> None:
    steps = [Say("one"), Say("two"), Say("three")]
    async with FakeModelServer({"policy": Script(steps)}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http)
                client = agent(session)
                history = list(OPENING)
                for text in ("a", "b"):
                    reply = await client.chat.completions.create(model="m", messages=history)
                    history += [
                        reply.choices[0].message.model_dump(exclude_none=True),
                        {"role": "user", "content": text},
                    ]
                summarised = [*OPENING, {"role": "assistant", "content": "(summary of two turns)"}, history[-1]]
                await client.chat.completions.create(model="m", messages=summarised)
                record = (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 0})).json()
    trajectory = record["trajectory"]
    assert_exact_ledger(record)
    assert trajectory["prefix_mismatches"] == 1 and len(trajectory["segments"]) == 2
    assert [(c["branch"], c["segment"]) for c in trajectory["calls"]] == [(0, 0), (0, 0), (0, 1)]
    assert len(trajectory["branches"]) == 1
    # nothing spliced: the new segment starts with the rewritten prompt, all of it masked 0
    second = trajectory["segments"][1]
    prompt_len = trajectory["calls"][2]["prompt_len"]
    assert "(summary of two turns)" in decode(second["token_ids"][:prompt_len])
    assert second["loss_mask"][:prompt_len] == [0] * prompt_len
    assert record["messages"][-2]["content"] == "b" and record["messages"][-1]["content"] == "three"


async def test_n_choices_become_branches_and_the_kept_choice_continues_its_own() -> None:
    steps = [Say("first idea"), Say("second idea"), Say("going on")]
    async with FakeModelServer({"policy": Script(steps)}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http)
                client = agent(session)
                reply = await client.chat.completions.create(model="m", messages=OPENING, n=2)
                kept = reply.choices[1].message.model_dump(exclude_none=True)
                history = [*OPENING, kept, {"role": "user", "content": "go on"}]
                await client.chat.completions.create(model="m", messages=history)
                record = (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})).json()
    trajectory = record["trajectory"]
    assert_exact_ledger(record)
    assert [c.message.content for c in reply.choices] == ["first idea", "second idea"]
    assert [(c["call"], c["choice"], c["branch"]) for c in trajectory["calls"]] == [(1, 0, 0), (1, 1, 1), (2, 0, 1)]
    branches = trajectory["branches"]
    assert branches[1]["parent"] == {"branch": 0, "call": 1} and trajectory["prefix_mismatches"] == 0
    assert [m["content"] for m in branches[0]["messages"]][-1] == "first idea"
    assert [m["content"] for m in branches[1]["messages"]][-1] == "going on"
    # each branch is one exact sequence; the shared prompt is masked 0 in both
    first_prompt = trajectory["calls"][0]["prompt_len"]
    assert branches[0]["segments"] == [0] and branches[1]["segments"] == [1]
    assert (
        trajectory["segments"][0]["token_ids"][:first_prompt] == trajectory["segments"][1]["token_ids"][:first_prompt]
    )


async def test_parallel_sub_agents_with_one_opening_get_separate_branches() -> None:
    def respond(request: ModelRequest) -> Any:
        last = request.messages[-1]["content"]
        return (
            Hang(0.2, Say(f"{request.session_id}: answer to {last}")) if request.call_index < 2 else Say(f"more {last}")
        )

    async with FakeModelServer({"policy": respond}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http)
                client = agent(session)

                async def sub_agent(name: str) -> None:
                    history = [*OPENING, {"role": "user", "content": name}]
                    first = await client.chat.completions.create(model="m", messages=history)
                    history += [
                        first.choices[0].message.model_dump(exclude_none=True),
                        {"role": "user", "content": f"{name}!"},
                    ]
                    await client.chat.completions.create(model="m", messages=history)

                await asyncio.gather(sub_agent("left"), sub_agent("right"))
                record = (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})).json()
    trajectory = record["trajectory"]
    assert_exact_ledger(record)
    assert len(trajectory["branches"]) == 2 and trajectory["prefix_mismatches"] == 0
    for branch in trajectory["branches"]:
        [segment] = [trajectory["segments"][i] for i in branch["segments"]]
        text = decode(segment["token_ids"])
        name = branch["messages"][2]["content"]
        other = "right" if name == "left" else "left"
        assert f"answer to {name}" in text and f"more {name}!" in text and other not in text


def test_branch_rule_continuation_rewrite_new_opening_and_busy_fork() -> None:
    branches = Branches()
    opening = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    prints = fingerprints(opening)
    first = branches.assign(prints)
    reply = {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}]}
    branches.record(
        first,
        (opening, prints),
        (reply, fingerprints([reply])[0]),
        ([1, 2], [3], [-0.1], "stop"),
        {"call": 1, "choice": 0},
    )
    branches.release(first)
    # LangChain sends the arguments back re-serialised: still the same history
    resent = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    assert branches.assign(fingerprints([*opening, resent, {"role": "tool", "content": "r"}])) is first
    # while it is busy, a second continuation forks
    fork = branches.assign(fingerprints([*opening, resent]))
    assert fork is not first and fork.parent == {"branch": 0, "call": 1}
    branches.release(first)
    # same opening, different middle: a rewrite of the idle branch; another task: a new branch
    assert branches.assign(fingerprints([*opening, {"role": "assistant", "content": "summary"}])) is first
    branches.release(first)
    other = branches.assign(fingerprints([opening[0], {"role": "user", "content": "another task"}]))
    assert other is not first and other.parent is None


async def test_concurrent_sessions_never_mix_their_data() -> None:
    def respond(request: ModelRequest) -> Any:
        return Say(f"reply {request.call_index} for {request.messages[-1]['content']}")

    async with FakeModelServer({"policy": respond}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:

                async def run(name: str, stream: bool) -> dict[str, Any]:
                    session = await new_session(http, task={"id": name})
                    client = agent(session)
                    history = [*OPENING, {"role": "user", "content": name}]
                    for turn in range(3):
                        if stream:
                            reply = _merge(
                                [
                                    c
                                    async for c in await client.chat.completions.create(
                                        model="m", messages=history, stream=True
                                    )
                                ]
                            )
                        else:
                            reply = (
                                (await client.chat.completions.create(model="m", messages=history))
                                .choices[0]
                                .message.model_dump(exclude_none=True)
                            )
                        history += [reply, {"role": "user", "content": f"{name} turn {turn}"}]
                    return (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})).json()

                names = [f"agent {letter}" for letter in "ABCDEFGHIJKL"]
                records = await asyncio.gather(*(run(name, i % 2 == 1) for i, name in enumerate(names)))
    for name, record in zip(names, records, strict=True):
        assert_exact_ledger(record)
        assert record["task_id"] == name and record["trajectory"]["prefix_mismatches"] == 0
        [segment] = record["trajectory"]["segments"]
        text = decode(segment["token_ids"])
        assert f"reply 2 for {name} turn 1" in text
        assert not any(other in text for other in names if other != name)


# -- ending: abort, idle timeout, limits, verifiers, the JSONL output ---------------------------------------


async def test_abort_idle_timeout_and_every_ended_session_in_the_jsonl_output(tmp_path: Any) -> None:
    output = tmp_path / "sessions.jsonl"
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], output=output) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                aborted = await new_session(http)
                await agent(aborted).chat.completions.create(model="m", messages=OPENING)
                deleted = (await http.delete(f"/v1/sessions/{aborted['session_id']}")).json()
                idle = await new_session(http)
                await agent(idle).chat.completions.create(model="m", messages=OPENING)
                # Short only now: a loaded machine may take longer than any short timeout to make the first call.
                [opened] = [s for s in gw.gateway.sessions.values() if s.id == idle["record_id"]]
                opened.idle_timeout_s = 0.2
                for _ in range(300):  # until the reaper (awake at least once a second) has ended it
                    shown = (await http.get(f"/v1/sessions/{idle['session_id']}")).json()
                    if shown["status"] != "active":
                        break
                    await asyncio.sleep(0.1)
                open_at_shutdown = await new_session(http)
                gone = await http.delete(f"/v1/sessions/{aborted['session_id']}")
        lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert deleted["status"] == "aborted" and deleted["stop_reason"] == "cancelled" and deleted["reward"] is None
    assert deleted["error"]["type"] == "cancelled"
    assert_exact_ledger(deleted)  # what was recorded before the abort is kept
    assert shown["status"] == "aborted" and shown["stop_reason"] == "idle_timeout"
    assert shown["trajectory"]["calls"] and shown["reward"] is None
    assert gone.status_code == 409
    assert [(r["id"], r["stop_reason"]) for r in lines] == [
        (aborted["record_id"], "cancelled"),
        (idle["record_id"], "idle_timeout"),
        (open_at_shutdown["record_id"], "shutdown"),
    ]


async def test_limits_context_length_and_verifier_outcomes() -> None:
    async with FakeModelServer({"policy": Script([Say("a"), ContextFull()])}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                limited = await new_session(http, limits={"max_calls": 1})
                client = agent(limited)
                await client.chat.completions.create(model="m", messages=OPENING)
                with pytest.raises(openai.ConflictError, match="limit of 1 calls"):
                    await client.chat.completions.create(model="m", messages=OPENING)
                truncated = (await http.post(f"/v1/sessions/{limited['session_id']}/finish", json={"reward": 1})).json()
                full = await new_session(http)
                client = agent(full)
                await client.chat.completions.create(model="m", messages=OPENING)
                with pytest.raises(openai.BadRequestError, match="maximum context length"):
                    await client.chat.completions.create(model="m", messages=OPENING)
                context = (await http.post(f"/v1/sessions/{full['session_id']}/finish", json={"reward": 0})).json()
    assert (truncated["status"], truncated["stop_reason"], truncated["reward"]) == ("truncated", "max_calls", 1.0)
    assert (context["status"], context["stop_reason"]) == ("truncated", "context_length")
    assert context["num_policy_calls"] == 2 and len(context["trajectory"]["calls"]) == 1


async def play_moves(client: openai.AsyncOpenAI, results: list[list[Any]]) -> None:
    """The agent's loop: each make_move it is told to call gets the given board back as its tool result."""
    history = list(OPENING)
    for board in results:
        reply = (await client.chat.completions.create(model="m", messages=history, tools=[MAKE_MOVE])).choices[0]
        call = reply.message.tool_calls[0]
        history += [
            reply.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"board": board, "winner": None})},
        ]
    await client.chat.completions.create(model="m", messages=history, tools=[MAKE_MOVE])


def board(x: tuple[int, ...], o: tuple[int, ...]) -> list[str | None]:
    return ["X" if i in x else "O" if i in o else None for i in range(9)]


async def test_tictactoe_verifier_replays_the_game_from_the_conversation() -> None:
    script = Script([Call("make_move", {"position": p}) for p in (4, 0, 8)])
    async with FakeModelServer({"policy": script}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http, task={"env_seed": {"initial_moves": []}})
                await play_moves(agent(session), [board((4,), (2,)), board((0, 4), (2, 7)), board((0, 4, 8), (2, 7))])
                record = (
                    await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"verifier": "tictactoe"})
                ).json()
    assert (record["reward"], record["env"], record["env_result"]["game_result"]) == (1.0, "tictactoe", "win")
    assert record["env_result"]["board"] == board((0, 4, 8), (2, 7))
    assert record["reward_components"] == {"outcome": 1.0}


async def test_tictactoe_verifier_refuses_a_board_that_does_not_follow_and_keeps_the_session() -> None:
    script = Script([Call("make_move", {"position": p}) for p in (4, 0, 1)])
    async with FakeModelServer({"policy": script}) as fake:
        with running_gateway([fake.base_url]) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                session = await new_session(http)
                sid = session["session_id"]
                # the third result reports no error but shows no X at 1
                await play_moves(agent(session), [board((4,), (7,)), board((0, 4), (7, 8)), board((0, 4), (7, 8))])
                refused = await http.post(f"/v1/sessions/{sid}/finish", json={"verifier": "tictactoe"})
                still_open = (await http.get(f"/v1/sessions/{sid}")).json()
                unknown = await http.post(f"/v1/sessions/{sid}/finish", json={"verifier": "chess"})
                given = {"board": board((0, 4, 1), (7, 8)), "next_mark": "O", "winner": None, "moves": []}
                body = {"verifier": "tictactoe", "env_state": given}
                record = (await http.post(f"/v1/sessions/{sid}/finish", json=body)).json()
    assert refused.status_code == 422 and refused.json()["detail"].startswith("messages[7]: ")
    assert still_open["status"] == "active"
    assert unknown.status_code == 422 and "unknown environment 'chess'" in unknown.json()["detail"]
    assert (record["status"], record["reward"], record["env_result"]["game_result"]) == ("completed", 0.0, "incomplete")


# -- routing ------------------------------------------------------------------------------------------------


async def test_sessions_stick_to_the_least_loaded_replica_and_fail_over() -> None:
    async with FakeModelServer({"policy": Say("from a")}) as a, FakeModelServer({"policy": Say("from b")}) as b:
        with running_gateway([a.base_url, b.base_url], max_retries=3) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                sessions = [await new_session(http) for _ in range(4)]
                for session in sessions:
                    for _ in range(3):
                        await agent(session).chat.completions.create(model="m", messages=OPENING)
                on_a = {request["headers"]["X-Session-ID"] for request in a.requests}
                # replica a starts failing: its sessions move to b, after 3 failures in a row a is out
                a.responders["policy"] = lambda request: Fail(503)
                moved = next(s for s in sessions if s["record_id"] in on_a)
                reply = await agent(moved).chat.completions.create(model="m", messages=OPENING)
                stats = gw.gateway.upstream.replicas.stats()
    by_session = {}
    for replica, server in (("a", a), ("b", b)):
        for request in server.requests:
            by_session.setdefault(request["headers"]["X-Session-ID"], []).append(replica)
    assert len(on_a) == 2  # least-loaded placement spreads new sessions evenly
    for session in sessions:
        first_three = by_session[session["record_id"]][:3]
        assert len(set(first_three)) == 1  # sticky
    assert reply.choices[0].message.content == "from b"
    assert by_session[moved["record_id"]][3:] == ["a", "a", "a", "b"]
    assert stats[a.base_url]["times_taken_out"] == 1 and not stats[a.base_url]["available"]


# -- bad requests -------------------------------------------------------------------------------------------


async def test_bad_requests_unknown_404_ended_409_malformed_422_and_auth() -> None:
    async with FakeModelServer({"policy": Say("ok")}) as fake:
        with running_gateway([fake.base_url], api_key="s3cret") as gw:
            headers = {"Authorization": "Bearer s3cret"}
            async with (
                httpx.AsyncClient(base_url=gw.url, headers=headers) as http,
                httpx.AsyncClient(base_url=gw.url) as anonymous,
            ):
                assert (await anonymous.post("/v1/sessions", json={})).status_code == 401
                assert (await anonymous.get("/healthz")).status_code == 200
                session = await new_session(http)
                sid = session["session_id"]
                assert (
                    await anonymous.post(f"/sessions/{sid}/v1/chat/completions", json={"messages": OPENING})
                ).status_code == 401
                ok = await agent(session, api_key="s3cret").chat.completions.create(model="m", messages=OPENING)
                chat = f"/sessions/{sid}/v1/chat/completions"
                unknown = [
                    await http.get("/v1/sessions/nope"),
                    await http.post("/v1/sessions/nope/finish", json={"reward": 1}),
                    await http.delete("/v1/sessions/nope"),
                    await http.post("/sessions/nope/v1/chat/completions", json={"messages": OPENING}),
                    await http.get("/sessions/nope/v1/models"),
                ]
                malformed = [
                    await http.post(chat, content=b"{not json"),
                    await http.post(chat, json=["a list"]),
                    await http.post(chat, json={"messages": []}),
                    await http.post(chat, json={"messages": [{"role": "robot", "content": "x"}]}),
                    await http.post(chat, json={"messages": OPENING, "n": 0}),
                    await http.post(chat, json={"messages": OPENING, "stream": "yes"}),
                    await http.post("/v1/sessions", json={"limits": {"max_calls": 0}}),
                    await http.post("/v1/sessions", json={"unknown": 1}),
                    await http.post(f"/v1/sessions/{sid}/finish", json={}),
                    await http.post(f"/v1/sessions/{sid}/finish", json={"reward": 1, "verifier": "tictactoe"}),
                    await http.post(f"/v1/sessions/{sid}/finish", json={"reward": "high"}),
                    await http.post(f"/v1/sessions/{sid}/finish", json={"reward": 1, "messages": OPENING[1:]}),
                ]
                record = (await http.post(f"/v1/sessions/{sid}/finish", json={"reward": 1})).json()
                ended = [await http.post(chat, json={"messages": OPENING}), await http.delete(f"/v1/sessions/{sid}")]
                metrics = (await http.get("/metrics")).text
    assert ok.choices[0].message.content == "ok"
    assert [r.status_code for r in unknown] == [404] * 5
    assert unknown[3].json()["error"]["message"] == "no such session"
    assert [r.status_code for r in malformed] == [422] * len(malformed)
    assert "messages[0].role" in malformed[3].json()["error"]["message"]
    assert "n: must be an integer" in malformed[4].json()["error"]["message"]
    assert malformed[-1].json()["detail"] == "messages[0]: differs from the session's history (its last call and reply)"
    assert record["status"] == "completed" and record["num_policy_calls"] == 1  # refused calls never reached the model
    assert [r.status_code for r in ended] == [409, 409]
    assert 'sparring_gateway_sessions_ended_total{status="completed"} 1.0' in metrics
    assert 'route="/sessions/{session_id}/v1/chat/completions"' in metrics


async def test_the_same_routes_mounted_in_the_rollout_service_behind_its_auth() -> None:
    from prometheus_client import CollectorRegistry

    from sparring.core.settings import EpisodeSettings
    from sparring.gateway.app import build_gateway
    from sparring.gateway.routes import gateway_router
    from sparring.server.app import create_app
    from sparring.server.background import BackgroundServer
    from sparring.server.settings import ServerSettings

    async with FakeModelServer({"policy": Say("served"), "user": Say("hi")}) as fake:
        config = EpisodeSettings(
            policy_base_urls=[fake.base_url], user_base_urls=[fake.base_url], request_timeout_s=5.0
        )
        registry = CollectorRegistry()
        gateway = build_gateway(config, registry=registry)
        app = create_app(
            ServerSettings(api_key="k"), lambda env: config, extra_routers=[gateway_router(gateway)], registry=registry
        )
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url, headers={"Authorization": "Bearer k"}) as http:
                assert (await httpx.AsyncClient(base_url=server.base_url).post("/v1/sessions")).status_code == 401
                session = await new_session(http)
                reply = await agent(session, api_key="k").chat.completions.create(model="m", messages=OPENING)
                record = (await http.post(f"/v1/sessions/{session['session_id']}/finish", json={"reward": 1})).json()
                metrics = (await http.get("/metrics")).text
    assert reply.choices[0].message.content == "served"
    assert_exact_ledger(record)
    assert 'sparring_gateway_sessions_ended_total{status="completed"} 1.0' in metrics
