"""support-desk: tool semantics, refusals, the verifier's components, and scripted episodes over real HTTP."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from langchain_core.messages import AIMessage, HumanMessage

from sparring.core.settings import EpisodeSettings
from sparring.core.task import parse_task
from sparring.engine.engine import Engine
from sparring.envs.support_desk import SupportDesk, shipped_tasks, task_rows
from sparring.envs.support_desk.env import SeedError, resolve_task, rule_breaks
from sparring.envs.support_desk.world import TOOL_SPECS, TOOLS, DeskError, db_hash, load_world
from sparring.testing import Call, FakeModelProcess, FakeModelServer, Say, Script
from sparring.testing.responders import support_desk_players

ENV = SupportDesk()


async def seeded(task_id: str = "sd-01", *, authenticated: bool = True) -> dict[str, Any]:
    state = await ENV.seed({"env_seed": {"task_id": task_id}})
    if authenticated:
        user_id = resolve_task({"env_seed": {"task_id": task_id}}).user_id
        state = {**state, "user_id": user_id}
    return state


async def call(env_state: dict[str, Any], name: str, /, **arguments: Any) -> tuple[Any, dict[str, Any], bool]:
    result = await ENV.call_tool(env_state, "policy", name, arguments)
    return orjson.loads(result.content), result.state, result.is_error


# --- tool semantics -------------------------------------------------------------------------------


async def test_finding_the_customer_authenticates_them() -> None:
    state = await seeded(authenticated=False)
    found, state, error = await call(state, "find_user_id_by_email", email=" Mia.Garcia@example.com ")
    assert (found, state["user_id"], error) == ("mia_garcia", "mia_garcia", False)
    found, state, error = await call(state, "find_user_id_by_name_zip", first_name="noah", last_name="Kim", zip="98101")
    assert (found, state["user_id"]) == ("noah_kim", "noah_kim")
    result, _, error = await call(state, "find_user_id_by_name_zip", first_name="Noah", last_name="Kim", zip="00000")
    assert error and "no user named Noah Kim with zip '00000'" in result["error"]


async def test_cancel_refunds_the_whole_order_to_the_original_method() -> None:
    state = await seeded()
    result, new_state, error = await call(state, "cancel_pending_order", order_id="#W1001", reason="no longer needed")
    assert not error and result["refund"] == 36.99
    order = new_state["db"]["orders"]["#W1001"]
    assert (order["status"], order["cancel_reason"]) == ("cancelled", "no longer needed")
    assert order["payment_history"][-1] == {"type": "refund", "amount": 36.99, "payment_method_id": "card-mia-4242"}
    assert state["db"]["orders"]["#W1001"]["status"] == "pending", "the old state must stay untouched"
    assert new_state["actions"] == [
        {"name": "cancel_pending_order", "arguments": {"order_id": "#W1001", "reason": "no longer needed"}}
    ]


async def test_cancelling_a_gift_card_order_credits_the_card() -> None:
    state = await seeded("sd-03")
    _, new_state, _ = await call(state, "cancel_pending_order", order_id="#W1006", reason="no longer needed")
    assert new_state["db"]["users"]["olivia_brown"]["payment_methods"]["gift-olivia"]["balance"] == 59.0


async def test_return_exchange_and_address_changes() -> None:
    state = await seeded("sd-09")
    result, after, _ = await call(
        state,
        "return_delivered_order_items",
        order_id="#W1005",
        item_ids=["i-3002", "i-6001"],
        payment_method_id="gift-olivia",
    )
    assert result["refund"] == 101.0
    assert after["db"]["orders"]["#W1005"]["return_items"] == ["i-3002", "i-6001"]
    assert after["db"]["users"]["olivia_brown"]["payment_methods"]["gift-olivia"]["balance"] == 121.0
    state = await seeded("sd-14")
    result, after, _ = await call(
        state,
        "exchange_delivered_order_items",
        order_id="#W1010",
        item_ids=["i-2002"],
        new_item_ids=["i-2001"],
        payment_method_id="gift-emma",
    )
    assert result["price_difference"] == -6.0
    assert after["db"]["users"]["emma_wilson"]["payment_methods"]["gift-emma"]["balance"] == 106.0
    state = await seeded("sd-18")
    address = {"address1": "20 Palm Street", "city": "Tucson", "state": "AZ", "zip": "85701"}
    _, after, _ = await call(state, "modify_user_address", user_id="ethan_jones", **address)
    assert after["db"]["users"]["ethan_jones"]["address"] == address


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("cancel_pending_order", {"order_id": "#W1002", "reason": "no longer needed"}, "#W1002 is delivered"),
        ("cancel_pending_order", {"order_id": "#W9999", "reason": "no longer needed"}, "no order with id '#W9999'"),
        (
            "modify_pending_order_address",
            {"order_id": "#W1017", **dict.fromkeys(("address1", "city", "state", "zip"), "x")},
            "only a pending order",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W1001", "item_ids": ["i-1001"], "payment_method_id": "card-mia-4242"},
            "only a delivered order",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W1002", "item_ids": ["i-9"], "payment_method_id": "card-mia-4242"},
            "'i-9' is not in order #W1002",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W1002", "item_ids": ["i-2001", "i-2001"], "payment_method_id": "gift-mia"},
            "named twice",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W1002", "item_ids": [], "payment_method_id": "gift-mia"},
            "item_ids is empty",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W1002", "item_ids": ["i-2001"], "payment_method_id": "paypal-x"},
            "no payment method 'paypal-x'",
        ),
        (
            "exchange_delivered_order_items",
            {
                "order_id": "#W1002",
                "item_ids": ["i-2001"],
                "new_item_ids": ["i-2003"],
                "payment_method_id": "card-mia-4242",
            },
            "is not available",
        ),
        (
            "exchange_delivered_order_items",
            {
                "order_id": "#W1002",
                "item_ids": ["i-2001"],
                "new_item_ids": ["i-1001"],
                "payment_method_id": "card-mia-4242",
            },
            "not a variant of Wireless Headphones",
        ),
        (
            "exchange_delivered_order_items",
            {
                "order_id": "#W1002",
                "item_ids": ["i-2001"],
                "new_item_ids": ["i-2001"],
                "payment_method_id": "card-mia-4242",
            },
            "already has",
        ),
        (
            "exchange_delivered_order_items",
            {"order_id": "#W1002", "item_ids": ["i-2001"], "new_item_ids": [], "payment_method_id": "card-mia-4242"},
            "give one new item each",
        ),
        ("get_product_details", {"product_id": "p-sofa"}, "no product with id 'p-sofa'"),
    ],
)
async def test_refused_calls_are_tool_errors_and_change_nothing(name: str, arguments: dict, message: str) -> None:
    state = await seeded()
    before = copy.deepcopy(state)
    result, after, error = await call(state, name, **arguments)
    assert error and message in result["error"]
    assert after == before


async def test_a_refund_goes_only_to_the_original_method_or_a_gift_card() -> None:
    db = load_world()
    db["users"]["mia_garcia"]["payment_methods"]["card-mia-0000"] = {"source": "credit_card", "last_four": "0000"}
    with pytest.raises(DeskError, match="original payment method"):
        TOOLS["return_delivered_order_items"](db, "#W1002", ["i-2001"], "card-mia-0000")


async def test_an_exchange_paid_by_a_gift_card_needs_the_balance() -> None:
    db = load_world()
    db["users"]["ava_patel"]["payment_methods"]["gift-ava"]["balance"] = 1.0
    with pytest.raises(DeskError, match=r"gift card gift-ava has 1\.00, less than the 1\.51 due"):
        TOOLS["exchange_delivered_order_items"](db, "#W1014", ["i-1001"], ["i-1003"], "gift-ava")
    _, after = TOOLS["exchange_delivered_order_items"](load_world(), "#W1014", ["i-1001"], ["i-1003"], "gift-ava")
    assert after["users"]["ava_patel"]["payment_methods"]["gift-ava"]["balance"] == 3.49


async def test_no_personal_data_or_change_before_authentication_and_only_ones_own() -> None:
    state = await seeded(authenticated=False)
    for name, arguments in [
        ("get_order_details", {"order_id": "#W1001"}),
        ("cancel_pending_order", {"order_id": "#W1001", "reason": "no longer needed"}),
        ("get_user_details", {"user_id": "mia_garcia"}),
    ]:
        result, after, error = await call(state, name, **arguments)
        assert error and "authenticate the customer first" in result["error"] and after is state
    product, _, error = await call(state, "get_product_details", product_id="p-mug")
    assert not error and product["variants"]["i-3003"]["price"] == 15.0, "products need no authentication"
    state = await seeded("sd-01")
    result, after, error = await call(state, "cancel_pending_order", order_id="#W1003", reason="no longer needed")
    assert error and "belongs to another customer" in result["error"] and after is state
    result, _, error = await call(state, "get_user_details", user_id="noah_kim")
    assert error and "belongs to another customer" in result["error"]


async def test_transfer_ends_the_episode_and_the_user_cannot_call_tools() -> None:
    state = await seeded("sd-25")
    _, after, error = await call(state, "transfer_to_human_agents", summary="compensation")
    assert not error and ENV.is_done(after) and not ENV.is_done(state)
    result = await ENV.call_tool(state, "user", "cancel_pending_order", {"order_id": "#W1011", "reason": "x"})
    assert result.is_error and "user cannot call" in result.content


# --- seeds and tasks -----------------------------------------------------------------------------


def test_about_thirty_shipped_tasks_whose_expected_actions_all_apply() -> None:
    tasks = shipped_tasks()
    assert len(tasks) >= 30 and len({t.id for t in tasks}) == len(tasks)
    changed = 0
    for task in tasks:
        db = load_world()
        for action in task.expected_actions:
            _, db = TOOLS[action.name](db, **action.arguments)
        changed += db_hash(db) != db_hash(load_world())
        assert task.known.keys() in ({"email"}, {"first_name", "last_name", "zip"}), task.id
    assert changed >= 20, "most tasks should expect a change to the database"
    rows = task_rows()
    assert [parse_task(row)["env_seed"]["task_id"] for row in rows] == [t.id for t in tasks]


def test_tool_specs_are_strict_objects_naming_every_argument() -> None:
    for spec in TOOL_SPECS:
        parameters = spec.parameters
        assert parameters["additionalProperties"] is False and set(parameters["required"]) == set(
            parameters["properties"]
        )
        assert spec.name in TOOLS


@pytest.mark.parametrize(
    ("env_seed", "message"),
    [
        ({"task_id": "sd-99"}, "env_seed.task_id: no shipped task 'sd-99'"),
        ({"tsk": 1}, "env_seed: unknown field(s) tsk"),
        ({"task": {"id": "x", "user_id": "mia_garcia", "known": {}}}, "env_seed.task.instructions: Field required"),
        (
            {
                "task": {
                    "id": "x",
                    "user_id": "mia_garcia",
                    "known": {"email": "mia.garcia@example.com"},
                    "instructions": "cancel",
                    "expected_actions": [{"name": "cancel_pending_order", "arguments": {"order_id": "#W1002"}}],
                }
            },
            "expected_actions[0] (cancel_pending_order)",
        ),
        (
            {"task": {"id": "x", "user_id": "nobody", "known": {"email": "a"}, "instructions": "hi"}},
            "user_id 'nobody' is not in the world",
        ),
    ],
)
async def test_bad_seeds_name_the_field(env_seed: dict, message: str) -> None:
    with pytest.raises(SeedError) as caught:
        await ENV.seed({"env_seed": env_seed})
    assert message in str(caught.value)


def test_the_customer_persona_carries_the_goal_identity_and_stop_token_but_not_the_answer() -> None:
    persona = ENV.user_persona({"env_seed": {"task_id": "sd-12"}})
    assert "Lucas Silva" in persona and "lucas.silva@example.com" in persona and "###STOP###" in persona
    assert "exchange them for the blue ones" in persona and "i-6003" not in persona
    assert ENV.user_persona({"user_persona": "custom"}) == "custom"


def test_the_customer_is_told_its_role_first_and_last_and_gets_a_first_person_line_to_open_with() -> None:
    desk_task = resolve_task({"env_seed": {"task_id": "sd-12"}})
    lines = ENV.user_persona({"env_seed": {"task_id": "sd-12"}}).splitlines()
    assert lines[0].startswith("You are Lucas Silva, a customer") and "not the agent" in lines[0]
    assert lines[-1].startswith("Remember: you are the customer.")
    assert f'for example: "{desk_task.request}"' in "\n".join(lines)
    assert sum(line.count("###STOP###") for line in lines) == 1, "the stop token only in the line that ends"
    inline = {"id": "x", "user_id": "mia_garcia", "known": {"email": "a@b.c"}, "instructions": "You want a refund."}
    assert "Your first message says it, in your own words." in ENV.user_persona({"env_seed": {"task": inline}})


def test_every_shipped_customer_opens_in_the_first_person_with_its_order() -> None:
    for desk_task in shipped_tasks():
        words = set(re.findall(r"[A-Za-z']+", desk_task.request))
        assert words & {"I", "I'd", "I'm", "my", "My"} and not words & {"you", "You", "your", "Your"}, desk_task.id
        for order in re.findall(r"#W\d+", desk_task.instructions):
            assert order in desk_task.request, f"{desk_task.id}: {order} missing from the opening line"


# --- the verifier --------------------------------------------------------------------------------


async def final_state(task_id: str, *actions: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    state = await seeded(task_id)
    for name, arguments in actions:
        _, state, error = await call(state, name, **arguments)
        assert not error
    return state


CANCEL_1001 = ("cancel_pending_order", {"order_id": "#W1001", "reason": "no longer needed"})
ADDRESS = {"address1": "400 Congress Ave", "city": "Austin", "state": "TX", "zip": "78702"}


async def test_verify_rewards_the_expected_database_and_the_told_facts() -> None:
    state = await final_state("sd-01", CANCEL_1001)
    verdict = await ENV.verify(state, [AIMessage(content="Done: your refund of $36.99 is on its way.")])
    assert verdict.reward == 1.0
    assert verdict.components == {"users": 1.0, "orders": 1.0, "transfer": 1.0, "facts": 1.0}
    assert verdict.result["facts_missing"] == [] and verdict.result["actions"] == state["actions"]


@pytest.mark.parametrize(
    ("task_id", "actions", "said", "failed"),
    [
        (
            "sd-01",
            [("cancel_pending_order", {"order_id": "#W1001", "reason": "ordered by mistake"})],
            "36.99",
            "orders",
        ),
        ("sd-01", [], "36.99", "orders"),
        ("sd-27", [("cancel_pending_order", {"order_id": "#W1001", "reason": "ordered by mistake"})], "36.99", "users"),
        ("sd-01", [CANCEL_1001], "Your order is cancelled.", "facts"),
        ("sd-25", [], "I cannot help with that.", "transfer"),
        ("sd-01", [CANCEL_1001, ("transfer_to_human_agents", {"summary": "x"})], "36.99", "transfer"),
    ],
)
async def test_each_component_names_the_part_that_failed(
    task_id: str, actions: list[tuple[str, dict[str, Any]]], said: str, failed: str
) -> None:
    state = await final_state(task_id, *actions)
    verdict = await ENV.verify(state, [AIMessage(content=said)])
    assert verdict.reward == 0.0
    assert [name for name, value in verdict.components.items() if value < 1.0] == [failed]


async def test_facts_match_amounts_however_written_and_words_by_substring() -> None:
    state = await final_state("sd-02", ("cancel_pending_order", {"order_id": "#W1003", "reason": "ordered by mistake"}))
    for said, told in [("refund: $74.9", True), ("74.90 USD", True), ("1,074.90", False), ("7490", False)]:
        assert (await ENV.verify(state, [AIMessage(content=said)])).components["facts"] == float(told), said
    state = await final_state("sd-24")
    verdict = await ENV.verify(state, [AIMessage(content="Sorry, the red L shirt is currently Unavailable.")])
    assert verdict.reward == 1.0


def test_rule_breaks_lists_changes_without_a_fresh_yes() -> None:
    def write(name: str) -> AIMessage:
        return AIMessage(content="", additional_kwargs={"tool_calls": [{"id": "c", "function": {"name": name}}]})

    messages = [
        HumanMessage(content="Cancel my order please."),
        write("cancel_pending_order"),
        HumanMessage(content="Yes, go ahead."),
        write("modify_user_address"),
        write("cancel_pending_order"),
        AIMessage(
            content="",
            additional_kwargs={
                "tool_calls": [{"id": "a", "function": {"name": "get_order_details"}}]
                + [{"id": f"w{i}", "function": {"name": "modify_user_address"}} for i in range(2)]
            },
        ),
    ]
    assert rule_breaks(messages) == [
        "cancel_pending_order without a yes from the customer since the last change",
        "cancel_pending_order without a yes from the customer since the last change",
        "2 changes in one reply (modify_user_address, modify_user_address)",
        "modify_user_address without a yes from the customer since the last change",
        "modify_user_address without a yes from the customer since the last change",
    ]


# --- full scripted episodes over real HTTP ---------------------------------------------------------


@pytest.fixture
async def desk() -> AsyncIterator[Any]:
    """`await play(responders, task_id)`: one episode of the desk against a scripted server."""
    servers: list[FakeModelServer] = []
    engines: list[Engine] = []

    async def play(responders: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
        server = FakeModelServer(responders)
        await server.__aenter__()
        servers.append(server)
        config = EpisodeSettings(
            **ENV.settings,
            policy_base_urls=[server.base_url],
            user_base_urls=[server.base_url],
            request_timeout_s=5.0,
        )
        engines.append(Engine(config, env="support-desk"))
        return await engines[-1].play(task)

    try:
        yield play
    finally:
        for engine in engines:
            await engine.aclose()
        for server in servers:
            await server.__aexit__(None, None, None)


@pytest.mark.parametrize("task_id", [t.id for t in shipped_tasks()])
async def test_a_by_the_book_agent_scores_1_on_every_shipped_task(desk: Any, task_id: str) -> None:
    record = await desk(support_desk_players(task_id), {"env_seed": {"task_id": task_id}})
    assert record["reward"] == 1.0, (record["reward_components"], record["env_result"], record["error"])
    assert record["status"] == "completed"
    assert record["stop_reason"] == ("env_done" if task_id in ("sd-25", "sd-26") else "user_stop")
    assert record["env_result"]["rule_breaks"] == []
    assert all("###STOP###" not in str(m["content"]) for m in record["messages"])


async def test_an_agent_that_keeps_the_refund_to_itself_scores_0(desk: Any) -> None:
    record = await desk(support_desk_players("sd-06", tell_facts=False), {"env_seed": {"task_id": "sd-06"}})
    assert (record["status"], record["reward"]) == ("completed", 0.0)
    assert record["reward_components"] == {"users": 1.0, "orders": 1.0, "transfer": 1.0, "facts": 0.0}
    assert record["env_result"]["facts_missing"] == [["129.00"]]


async def test_bad_arguments_and_refusals_reach_the_agent_and_the_episode_goes_on(desk: Any) -> None:
    policy = Script(
        [
            Call("cancel_pending_order", {"order_id": "#W1001", "reason": "no longer needed"}),
            Call("cancel_pending_order", {"order_id": "#W1001", "reason": "too expensive"}),
            Call("cancel_pending_order", '{"order_id": "#W1001"'),
            Call("find_user_id_by_email", {"email": "mia.garcia@example.com"}),
            Call("cancel_pending_order", {"order_id": "#W1001"}),
            Say("I could not cancel it, sorry."),
        ]
    )
    user = Script([Say("Cancel #W1001 please, my email is mia.garcia@example.com."), Say("Bye ###STOP###")])
    record = await desk({"policy": policy, "user": user}, {})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("completed", "user_stop", 0.0)
    tool_results = [m["content"] for m in record["messages"] if m["role"] == "tool"]
    assert "authenticate the customer first" in tool_results[0]
    assert "arguments.reason must be one of ['no longer needed', 'ordered by mistake']" in tool_results[1]
    assert "arguments are not valid JSON" in tool_results[2]
    assert tool_results[3] == '"mia_garcia"'
    assert "missing the required field 'reason'" in tool_results[4]
    assert record["reward_components"]["orders"] == 0.0


async def test_an_unknown_task_aborts_as_invalid_with_the_field_named(desk: Any) -> None:
    record = await desk({"policy": Script([]), "user": Script([])}, {"env_seed": {"task_id": "sd-99"}})
    assert (record["status"], record["stop_reason"], record["reward"]) == ("aborted", "invalid_task", None)
    assert "env_seed.task_id: no shipped task 'sd-99'" in record["error"]["message"]


def test_sparring_run_plays_the_desk_against_the_scripted_preset() -> None:
    with FakeModelProcess("support-desk") as server:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "sparring.cli", "run", "--env", "support-desk", "--json", "--quiet"),
                *("--policy-base-url", server.base_url, "--user-base-url", server.base_url),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    record = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert (record["env"], record["status"], record["stop_reason"], record["reward"]) == (
        "support-desk",
        "completed",
        "user_stop",
        1.0,
    )
