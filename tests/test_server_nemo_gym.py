"""`/run` and `/aggregate_metrics` over real HTTP: what sparring answers a NeMo Gym row, value by value.

The answers' validity against NeMo Gym's own classes (the `nemo-gym` package, Python 3.13) is checked by
tests/test_nemo_gym_types.py in .venv-nemo-gym, on these same rows (`ROW`, `run_row`, `AGGREGATE_INPUT`).
"""

from __future__ import annotations

from typing import Any

import httpx

from sparring.cli import make_parser
from sparring.cli.options import settings_from_args
from sparring.server.app import create_app
from sparring.server.background import BackgroundServer
from sparring.server.settings import ServerSettings
from sparring.testing import Fail, FakeModelServer, TicTacToePlayer
from sparring.testing.responders import O_PREFERENCE, X_PREFERENCE

ROW: dict[str, Any] = {
    "responses_create_params": {
        "input": [
            {"role": "developer", "content": "You are X in tic-tac-toe. Call make_move with a position 0-8."},
            {"role": "user", "content": "Let's play. Your move.", "type": "message"},
        ],
        "tools": [
            {
                "type": "function",
                "name": "make_move",
                "description": "Place your mark at a position 0-8.",
                "parameters": {
                    "type": "object",
                    "properties": {"position": {"type": "integer"}},
                    "required": ["position"],
                    "additionalProperties": False,
                },
                "strict": True,
            }
        ],
        "temperature": 0.5,
    },
    "verifier_metadata": {"initial_moves": [{"position": 0, "mark": "X"}, {"position": 8, "mark": "O"}]},
    "agent_ref": {"type": "responses_api_agents", "name": "sparring_tictactoe"},
    "_ng_task_index": 7,
    "_ng_rollout_index": 2,
}


async def run_row(row: dict[str, Any], responders: dict[str, Any] | None = None) -> tuple[httpx.Response, list[Any]]:
    responders = responders or {"policy": TicTacToePlayer(X_PREFERENCE), "user": TicTacToePlayer(O_PREFERENCE)}
    async with FakeModelServer(responders) as models:
        args = make_parser().parse_args(
            ["serve", "--policy-base-url", models.base_url, "--user-base-url", models.base_url]
        )
        app = create_app(ServerSettings(), lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
                return await client.post("/run", json=row), models.requests


async def test_run_answers_a_nemo_gym_row_in_the_verify_response_shape() -> None:
    response, requests = await run_row(ROW)
    assert response.status_code == 200, response.text
    answer = response.json()
    # The row's own fields travel through; the reward and the environment's result sit beside them.
    for key in ("verifier_metadata", "agent_ref", "_ng_task_index", "_ng_rollout_index"):
        assert answer[key] == ROW[key]
    assert answer["reward"] == 1.0 and answer["game_result"] == "win"
    # The request comes back with NeMo Gym's defaults filled in (each input item's `type`).
    assert answer["responses_create_params"]["input"] == [
        {**m, "type": "message"} for m in ROW["responses_create_params"]["input"]
    ]
    assert answer["responses_create_params"]["temperature"] == 0.5
    policy_requests = [r for r in requests if r["model"] == "policy"]
    assert all(r["body"]["temperature"] == 0.5 for r in policy_requests), "the row's sampling reaches the policy"
    output = answer["response"]["output"]
    assert [item["type"] for item in output[:3]] == ["function_call", "function_call_output", "message"]
    assert output[2]["role"] == "user"


async def test_each_policy_call_carries_its_exact_token_ids_on_its_last_item() -> None:
    response, requests = await run_row(ROW)
    answer = response.json()
    output = answer["response"]["output"]
    with_ids = [i for i, item in enumerate(output) if "generation_token_ids" in item]
    policy_requests = [r for r in requests if r["model"] == "policy"]
    assert len(with_ids) == answer["sparring"]["num_policy_calls"] == len(policy_requests) >= 2
    previous: list[int] = []
    for index in with_ids:
        item = output[index]
        assert item["type"] in ("message", "function_call") and isinstance(item["prompt_token_ids"], list)
        assert len(item["generation_token_ids"]) == len(item["generation_log_probs"]) > 0
        # Each call's prompt extends the previous prompt + generation: one sequence, nothing re-tokenised.
        assert item["prompt_token_ids"][: len(previous)] == previous
        previous = item["prompt_token_ids"] + item["generation_token_ids"]
        # The item after a call's last item is never another item of the same call.
        assert index + 1 == len(output) or output[index + 1]["type"] != "function_call"
    assert answer["response"]["usage"]["output_tokens"] == sum(len(output[i]["generation_token_ids"]) for i in with_ids)


STRING_ROW: dict[str, Any] = {
    "responses_create_params": {"input": "Let's play tic-tac-toe, you are X."},
    "user_model_system_prompt": "You are O. Move, then say one short sentence.",
}


async def test_a_string_input_and_a_per_row_user_prompt() -> None:
    response, requests = await run_row(STRING_ROW)
    assert response.status_code == 200, response.text
    assert response.json()["reward"] == 1.0
    user_requests = [r for r in requests if r["model"] == "user"]
    assert user_requests[0]["body"]["messages"][0] == {
        "role": "system",
        "content": "You are O. Move, then say one short sentence.",
    }
    assert "user_model_system_prompt" not in response.json()


async def test_an_aborted_episode_is_a_502_that_keeps_its_record() -> None:
    response, _ = await run_row(ROW, {"policy": Fail(500), "user": TicTacToePlayer(O_PREFERENCE)})
    assert response.status_code == 502
    body = response.json()
    assert body["detail"].startswith("episode aborted (model_error)")
    assert body["record"]["status"] == "aborted" and body["record"]["reward"] is None


AGGREGATE_INPUT: list[dict[str, Any]] = [
    {"_ng_task_index": 0, "_ng_rollout_index": 0, "reward": 1.0, "response": {"usage": {"output_tokens": 10}}},
    {"_ng_task_index": 0, "_ng_rollout_index": 1, "reward": 0.0, "response": {"usage": {"output_tokens": 20}}},
    {"_ng_task_index": 1, "_ng_rollout_index": 0, "reward": 0.5, "won": True},
]


async def aggregate(verify_responses: list[dict[str, Any]]) -> httpx.Response:
    """sparring's `/aggregate_metrics` of these verify responses."""
    async with FakeModelServer({"policy": TicTacToePlayer(X_PREFERENCE)}) as models:
        args = make_parser().parse_args(
            ["serve", "--policy-base-url", models.base_url, "--user-base-url", models.base_url]
        )
        app = create_app(ServerSettings(), lambda env: settings_from_args(args, env))
        with BackgroundServer(app) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as client:
                return await client.post("/aggregate_metrics", json={"verify_responses": verify_responses})


async def test_aggregate_metrics_in_nemo_gym_shape() -> None:
    reply = await aggregate(AGGREGATE_INPUT)
    assert reply.status_code == 200, reply.text
    metrics = reply.json()
    assert set(metrics) >= {"group_level_metrics", "agent_metrics", "key_metrics"}
    agent = metrics["agent_metrics"]
    assert agent["mean/reward"] == 0.5
    assert agent["max/output_tokens"] == 20.0 and agent["median/reward"] == 0.5
    assert agent["std/reward"] == 0.5
    assert metrics["key_metrics"] == {k: v for k, v in agent.items() if k.startswith("mean/")}
    by_task = {g["_ng_task_index"]: g for g in metrics["group_level_metrics"]}
    assert by_task[0]["mean/reward"] == 0.5 and by_task[1]["mean/won"] == 1.0
    assert "mean/_ng_rollout_index" not in agent
