"""verl: sparring's episodes as a registered verl agent loop, and `sparring gateway` sessions as verl's batch.

Read from verl 0.9.1 (`verl/experimental/agent_loop/agent_loop.py`, `verl/workers/rollout/llm_server.py`):
verl's `AgentLoopWorker` makes one agent loop per trajectory (hydra, from its registry), awaits
`run(sampling_params, **row)` and pads what comes back into its batch. `SparringAgentLoop`, registered as
`sparring`, plays the row as one sparring episode and returns verl's `AgentLoopOutput` cut from the record
(`samples.episode_sample`): `prompt_ids`, `response_ids`, `response_mask` (1 only on tokens the policy
sampled), `response_logprobs`, `reward_score` (the environment's reward), `num_turns` (the episode's user,
assistant and tool messages, as verl counts them), `metrics` (model and tool time) and `extra_fields`:
`min_global_steps` / `max_global_steps` (the oldest and newest weight version that sampled a token, which
verl's trainers read for staleness), `sparring_record_id`, `sparring_status`, `sparring_stop_reason`,
`sparring_weight_versions` (per policy call) and verl's own `turn_scores` / `tool_rewards` (empty).

Config (verl reads agent loops from a YAML list; extra keys are the loop's own settings, all optional):

    actor_rollout_ref.rollout.agent.agent_loop_config_path=sparring_loop.yaml
    actor_rollout_ref.rollout.agent.default_agent_loop=sparring    # or a dataset column agent_name=sparring

    # sparring_loop.yaml
    - name: sparring
      _target_: sparring.integrations.verl.SparringAgentLoop
      env: tictactoe                  # else the task's env, else SPARRING_ENV, else sparring's default
      settings: {max_turns: 5}        # any EpisodeSettings field (the user model's endpoint, limits, ...)
      policy: verl                    # `settings`: sample the policy from sparring's endpoint (evaluation only)

The task: the row's `sparring_task` column (a task object or its JSON), else `extra_info["sparring_task"]`,
else the row's `raw_prompt` as the episode's opening messages. The policy is sampled by verl's own rollout
servers, which hold the weights verl trains: sparring's token-in-token-out calls go through a loopback
`tokens.TokenServer` to `server_manager.generate` with the episode id as verl's sticky request id and the
row's own sampling params (`logprobs` always on); verl's `global_steps` on each answer is the call's
weight version. sparring renders each prompt's tail with the model's tokenizer folder
(`actor_rollout_ref.model.tokenizer_path`, else `.path`). The simulated user comes from sparring's
settings (`SPARRING_USER_BASE_URL`, `sparring models up`, or `settings` above).

Widths: a response longer than `rollout.response_length` is cut there and the row's `sparring_status`
says `truncated`; a prompt longer than `rollout.prompt_length` is left-cut with a warning, as verl's own
loops do. An aborted episode (a model server that kept failing, an invalid task) is a row with an empty
response and reward 0.0: verl's own sign of an aborted sample, which its metrics leave out.

`gateway_outputs` / `gateway_batch`: a `sparring gateway` session holds one token segment per line of
conversation (its branches, and the new segment an agent's rewritten history opens), so it becomes one
row per segment, each with the session's reward; `gateway_batch` pads them through verl's own
`AgentLoopWorker` (a replay loop, `sparring_replay`), so the batch is the one verl would have built, with
`uid` = the session's task, so GRPO groups the sessions of one task. A session with several segments
weighs that many rows in the loss (verl's gateway proposal names the same trade-off).

verl is imported only when its classes are needed: `SparringAgentLoop` and `ReplayAgentLoop` are made (and
registered) on first access, so this module imports without verl. Tests: tests/test_integration_verl.py,
run in .venv-verl (`scripts/test.sh --verl`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from sparring.core.errors import InputError, ModelRequestError, UsageError
from sparring.core.ids import new_episode_id
from sparring.engine.engine import Engine
from sparring.engine.settings import resolve_settings
from sparring.integrations.samples import EpisodeSample, episode_sample, segment_samples
from sparring.integrations.tokens import Generated, TokenServer

LOOP_NAME = "sparring"
REPLAY_NAME = "sparring_replay"
POLICY_MODES = ("verl", "settings")
_TURN_ROLES = frozenset({"user", "assistant", "tool"})


# -- what a row becomes: pure functions over records (no verl) ---------------------------------------------------


def row_task(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sparring task a verl dataset row stands for (see the module docstring)."""
    extra = row.get("extra_info")
    for source in (row.get("sparring_task"), extra.get("sparring_task") if isinstance(extra, Mapping) else None):
        if isinstance(source, Mapping):
            return dict(source)
        if isinstance(source, str):
            try:
                task = json.loads(source)
            except json.JSONDecodeError as exc:
                raise InputError(f"verl row {row.get('index')}: sparring_task is not JSON: {exc}") from None
            if not isinstance(task, dict):
                raise InputError(f"verl row {row.get('index')}: sparring_task must be a JSON object")
            return task
    prompt = row.get("raw_prompt")
    if prompt is None:
        raise InputError(f"verl row {row.get('index')}: no sparring_task and no raw_prompt to open an episode with")
    messages = [dict(m) for m in prompt]
    if not messages or not all(isinstance(m.get("role"), str) for m in messages):
        raise InputError(f"verl row {row.get('index')}: raw_prompt must be a non-empty list of chat messages")
    return {"messages": messages}


def policy_sampling(sampling_params: Mapping[str, Any]) -> dict[str, Any]:
    """verl's sampling params as sparring policy settings (the record then says what was asked)."""
    overrides: dict[str, Any] = {}
    if sampling_params.get("temperature") is not None:
        overrides["policy_temperature"] = float(sampling_params["temperature"])
    top_p = sampling_params.get("top_p")
    if top_p is not None and float(top_p) < 1.0:
        overrides["policy_top_p"] = float(top_p)
    return overrides


def num_turns(record: Mapping[str, Any]) -> int:
    """verl's `num_turns`: the user, assistant and tool messages of the episode."""
    return sum(1 for m in record.get("messages") or () if m.get("role") in _TURN_ROLES)


def output_fields(
    record: Mapping[str, Any],
    sample: EpisodeSample,
    *,
    response_length: int,
    fallback_prompt: Sequence[int] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of verl's `AgentLoopOutput` for one row of `record` (the module docstring says how)."""
    aborted = sample.status == "aborted" or not sample.has_tokens
    if aborted:
        prompt, response, mask, logprobs = list(sample.prompt_ids or fallback_prompt), [], [], []
        status, reward = "aborted", 0.0
    else:
        row = sample.cut(response_length)
        prompt, response = row.prompt_ids, row.response_ids
        mask, logprobs, status, reward = row.response_mask, row.response_logprobs, row.status, row.reward
    timing = record.get("timing") or {}
    return {
        "prompt_ids": prompt,
        "response_ids": response,
        "response_mask": mask,
        "response_logprobs": logprobs,
        "reward_score": reward,
        "num_turns": num_turns(record),
        "metrics": {
            "generate_sequences": float(timing.get("model_s") or 0.0),
            "tool_calls": float(timing.get("tool_s") or 0.0),
        },
        "extra_fields": {
            "turn_scores": [],
            "tool_rewards": [],
            "min_global_steps": sample.min_version,
            "max_global_steps": sample.max_version,
            "sparring_record_id": sample.record_id,
            "sparring_status": status,
            "sparring_stop_reason": sample.stop_reason,
            "sparring_weight_versions": list(sample.call_versions),
            **(extra or {}),
        },
    }


def gateway_rows(records: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], EpisodeSample, dict[str, Any]]]:
    """Per segment of each gateway session record: (record, its cut, the row's own extra fields)."""
    rows = []
    for record in records:
        branch_of = {
            segment: branch.get("index")
            for branch in (record.get("trajectory") or {}).get("branches") or ()
            for segment in branch.get("segments") or ()
        }
        segments = segment_samples(record)
        for index, sample in enumerate(segments):
            extra = {"sparring_segment": index, "sparring_branch": branch_of.get(index), "sparring_rows": len(segments)}
            rows.append((record, sample, extra))
    return rows


def group_key(record: Mapping[str, Any]) -> str:
    """The GRPO group of a session: its task (id, else index), else the session itself."""
    for key in ("task_id", "task_index"):
        if record.get(key) is not None:
            return f"{key}:{record[key]}"
    return f"session:{record.get('id')}"


def opening(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages before the first assistant message: what verl keeps as a row's `raw_prompt`."""
    messages = []
    for message in record.get("messages") or ():
        if message.get("role") == "assistant":
            break
        messages.append({"role": message.get("role"), "content": message.get("content")})
    return messages


# -- verl's classes, made on first use ---------------------------------------------------------------------------


def gateway_outputs(records: Iterable[Mapping[str, Any]], *, response_length: int) -> list[Any]:
    """verl `AgentLoopOutput`s of gateway session records, one per token segment (see the module docstring)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput  # pyright: ignore[reportMissingImports]

    return [
        AgentLoopOutput(**output_fields(record, sample, response_length=response_length, extra=extra))
        for record, sample, extra in gateway_rows(records)
    ]


async def gateway_batch(records: Iterable[Mapping[str, Any]], worker: Any) -> Any:
    """verl's training batch (a `DataProto`) of gateway session records, padded by verl's own `worker`.

    `worker` is verl's `AgentLoopWorker` for the trainer's config (`AgentLoopWorker(config, llm_client=None)`
    needs no rollout server here: every row is replayed, nothing is generated). Rows carry `uid` (the session's
    task, for GRPO's groups), `index` and the extra fields of `gateway_outputs`.
    """
    import numpy as np
    from verl.protocol import DataProto  # pyright: ignore[reportMissingImports]

    _loop_classes()
    rows = gateway_rows(records)
    if not rows:
        raise InputError("no gateway session records to batch")
    keys = [f"{uuid.uuid4().hex}" for _ in rows]
    _replays.update(zip(keys, rows, strict=True))
    groups = {key: i for i, key in enumerate(dict.fromkeys(group_key(record) for record, _, _ in rows))}

    def column(values: list[Any]) -> Any:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array

    batch = DataProto.from_dict(
        non_tensors={
            "raw_prompt": column([opening(record) for record, _, _ in rows]),
            "agent_name": column([REPLAY_NAME] * len(rows)),
            "sparring_replay_key": column(keys),
            "uid": column([group_key(record) for record, _, _ in rows]),
            "index": np.array([groups[group_key(record)] for record, _, _ in rows]),
        },
    )
    try:
        return await worker.generate_sequences(batch)
    finally:
        for key in keys:
            _replays.pop(key, None)


_replays: dict[str, tuple[Mapping[str, Any], EpisodeSample, dict[str, Any]]] = {}


@functools.cache
def _loop_classes() -> dict[str, type]:
    """Import verl, define the two agent loops and register them (once)."""
    from verl.experimental.agent_loop.agent_loop import (  # pyright: ignore[reportMissingImports]
        AgentLoopBase,
        AgentLoopOutput,
        register,
    )

    def exported(cls: type) -> type:
        """Name the class as this module exports it, so verl's registry (hydra) can import it by that name."""
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        return cls

    @register(LOOP_NAME)
    @exported
    class SparringAgentLoop(AgentLoopBase):
        """One verl trajectory = one sparring episode (the module docstring says what it returns)."""

        def __init__(
            self,
            *args: Any,
            env: str | None = None,
            settings: Mapping[str, Any] | None = None,
            policy: str = "verl",
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            if policy not in POLICY_MODES:
                raise UsageError(
                    f"the sparring agent loop's policy must be one of {', '.join(POLICY_MODES)}, got {policy!r}"
                )
            self.env = env or os.environ.get("SPARRING_ENV") or None
            self.episode_settings = _plain(settings or {})
            self.policy = policy
            self.response_length = int(self.rollout_config.response_length)

        async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
            bridge = await _bridge(self)
            index = kwargs.get("index")
            task_index = int(index) if index is not None else None
            episode_id = new_episode_id(task_index)
            bridge.sampling[episode_id] = dict(sampling_params)
            try:
                record = await bridge.engine.play(
                    row_task(kwargs),
                    env=self.env,
                    settings={**policy_sampling(sampling_params), **self.episode_settings},
                    task_index=task_index,
                    episode_id=episode_id,
                )
            finally:
                bridge.sampling.pop(episode_id, None)
            sample = episode_sample(record)
            fallback: list[int] = []
            if not sample.prompt_ids and kwargs.get("raw_prompt") is not None:
                fallback = await self.ct_build_initial_tokens([dict(m) for m in kwargs["raw_prompt"]])
            fields = output_fields(record, sample, response_length=self.response_length, fallback_prompt=fallback)
            fields["prompt_ids"] = self._cap_text_prompt_length(fields["prompt_ids"])
            return AgentLoopOutput(**fields)

    @register(REPLAY_NAME)
    @exported
    class ReplayAgentLoop(AgentLoopBase):
        """Returns a row `gateway_batch` prepared, so verl's worker pads it as it pads its own."""

        async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
            key = kwargs.get("sparring_replay_key")
            if key not in _replays:
                raise InputError(f"no prepared gateway row {key!r}; sparring_replay only serves gateway_batch")
            record, sample, extra = _replays[key]
            fields = output_fields(
                record, sample, response_length=int(self.rollout_config.response_length), extra=extra
            )
            fields["prompt_ids"] = self._cap_text_prompt_length(fields["prompt_ids"])
            return AgentLoopOutput(**fields)

    return {"SparringAgentLoop": SparringAgentLoop, "ReplayAgentLoop": ReplayAgentLoop}


def __getattr__(name: str) -> Any:
    if name in ("SparringAgentLoop", "ReplayAgentLoop"):
        return _loop_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain(settings: Any) -> dict[str, Any]:
    """hydra hands nested YAML over as an OmegaConf node; sparring's settings want plain values."""
    if hasattr(settings, "items") and not isinstance(settings, dict):
        from omegaconf import OmegaConf  # pyright: ignore[reportMissingImports]

        settings = OmegaConf.to_container(settings, resolve=True)
    if not isinstance(settings, dict):
        raise UsageError(f"the sparring agent loop's settings must be a mapping, got {type(settings).__name__}")
    return dict(settings)


# -- the policy through verl's rollout servers ----------------------------------------------------------------


class VerlGenerate:
    """A `tokens.GenerateFn` over verl's `server_manager.generate` (token ids in, verl's `TokenOutput` out).

    Each call is sent with the episode id as verl's request id (verl keeps one trajectory on one server for
    its prefix cache) and that trajectory's sampling params from verl (`sampling`, by episode id), with
    sparring's `max_tokens` and `stop` and `logprobs` on. verl reports no length stop apart from a normal
    stop, so a reply of exactly `max_tokens` ids is taken as cut by the length.
    """

    def __init__(self, server_manager: Any, sampling: Mapping[str, Mapping[str, Any]]) -> None:
        self.server_manager = server_manager
        self.sampling = sampling

    async def __call__(self, prompt_ids: list[int], sampling: Mapping[str, Any]) -> Generated:
        session = sampling.get("session_id")
        params: dict[str, Any] = dict(self.sampling.get(session or "", {}))
        for key in ("temperature", "top_p", "top_k"):
            if key not in params and sampling.get(key) is not None:
                params[key] = sampling[key]
        for key in ("max_tokens", "stop"):
            if sampling.get(key) is not None:
                params[key] = sampling[key]
        params["logprobs"] = True
        out = await self.server_manager.generate(
            request_id=session or uuid.uuid4().hex, prompt_ids=list(prompt_ids), sampling_params=params
        )
        if out.stop_reason == "aborted":
            return Generated([], [], "abort")
        ids = list(out.token_ids)
        if out.log_probs is None or len(out.log_probs) != len(ids):
            raise ModelRequestError(
                f"verl's rollout server returned {len(ids)} ids and "
                f"{'no' if out.log_probs is None else len(out.log_probs)} logprobs; sparring needs one per id"
            )
        steps = (out.extra_fields or {}).get("global_steps")
        max_tokens = params.get("max_tokens")
        finish = "length" if max_tokens is not None and len(ids) >= int(max_tokens) else "stop"
        return Generated(ids, [float(x) for x in out.log_probs], finish, None if steps is None else str(steps))


class _Bridge:
    """What the loops of one worker play through on one event loop: an engine, and the token server over verl."""

    def __init__(self, engine: Engine, server: TokenServer | None) -> None:
        self.engine = engine
        self.server = server
        self.sampling: dict[str, dict[str, Any]] = {}

    async def aclose(self) -> None:
        await self.engine.aclose()
        if self.server is not None:
            await self.server.close()


_bridges: dict[tuple[Any, ...], asyncio.Future[_Bridge]] = {}


async def _bridge(loop: Any) -> _Bridge:
    model = loop.config.actor_rollout_ref.model
    if model.get("custom_chat_template"):
        raise UsageError(
            "sparring renders prompts with the tokenizer folder's own chat template; verl's "
            "actor_rollout_ref.model.custom_chat_template is not supported: put the template in that folder"
        )
    tokenizer_path = model.get("tokenizer_path") or model.path
    key = (
        id(asyncio.get_running_loop()),
        id(loop.server_manager),
        loop.policy,
        tokenizer_path,
        orjson.dumps(loop.episode_settings, option=orjson.OPT_SORT_KEYS),
    )
    made = _bridges.get(key)
    if made is None or (made.done() and (made.cancelled() or made.exception() is not None)):
        made = _bridges[key] = asyncio.ensure_future(_make_bridge(loop, tokenizer_path))
    return await made


async def _make_bridge(loop: Any, tokenizer_path: str) -> _Bridge:
    if loop.policy == "settings":
        return _Bridge(Engine(resolve_settings), None)
    from verl.utils.fs import copy_to_local  # pyright: ignore[reportMissingImports]

    local = await asyncio.to_thread(copy_to_local, tokenizer_path)
    sampling: dict[str, dict[str, Any]] = {}
    server = TokenServer(VerlGenerate(loop.server_manager, sampling), loop.tokenizer)
    await server.start()
    explicit = {"policy_base_urls": [server.base_url], "policy_tokenizer": local, "token_mode": "tito"}
    bridge = _Bridge(Engine(lambda env: resolve_settings(env, explicit)), server)
    bridge.sampling = sampling
    return bridge


async def aclose() -> None:
    """Close the engines and token servers the loops made on the running loop (verl has no hook; call it at exit)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _bridges if k[0] == loop_id]:
        made = _bridges.pop(key)
        if made.done() and not made.cancelled() and made.exception() is None:
            await made.result().aclose()
