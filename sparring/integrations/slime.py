"""slime: a custom generate function that plays each sample as a sparring episode.

    python train.py ... --custom-generate-function-path sparring.integrations.slime.generate

slime (github.com/THUDM/slime) calls `await generate(args, sample, sampling_params, evaluation=...)` for
every sample of a rollout and trains on what comes back (read from slime's source at 624b824:
`slime/rollout/sglang_rollout.py`, `slime/utils/types.py`). This function fills, from the episode's
record (the cut of `samples.episode_sample`):
- `tokens` = prompt + response ids, `response_length`, `loss_mask` (1 only on tokens the policy sampled)
  and `rollout_log_probs` (0.0 elsewhere), both `response_length` long as slime checks;
- `status`: COMPLETED, TRUNCATED or ABORTED from the record's status (an aborted sample keeps no
  reward, and slime re-queues it in partial-rollout mode: sparring plays it again from its task);
- `reward` (slime then skips its reward model) and `weight_versions` (one string per policy call, as
  slime appends one per engine call; calls whose server named no version add none);
- `response` (the policy's words, for logs) and `metadata["sparring"]` (record id, stop reason, turns).

The task: `sample.metadata["sparring_task"]` when the dataset puts one there (`--metadata-key`), else the
prompt: a task's JSON, or a list of messages to open the episode with.

Where the policy is sampled: in slime's own SGLang engines, which hold the weights slime trains
(`http://{args.sglang_router_ip}:{args.sglang_router_port}/generate`, token in, token out, with
`return_logprob`), through `tokens.TokenServer`, with `args.hf_checkpoint` as the tokenizer. Set
`SPARRING_SLIME_POLICY=settings` to use sparring's configured policy endpoint instead (evaluation
against another server). The simulated user always comes from sparring's settings
(`SPARRING_USER_BASE_URL`, or `sparring models up`), and `SPARRING_ENV` names the environment of tasks
that name none.

slime is not on the package index, so this module never imports it at load time, and its tests run
against a stand-in `Sample` with slime's fields and status values (tests/test_integration_slime.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

import aiohttp

from sparring.core.errors import InputError, ModelRequestError, UsageError
from sparring.engine.engine import Engine
from sparring.engine.settings import resolve_settings
from sparring.integrations.samples import episode_sample
from sparring.integrations.tokens import Generated, TokenServer
from sparring.models.tito import load_tokenizer

STATUS_NAMES = {"completed": "COMPLETED", "truncated": "TRUNCATED", "aborted": "ABORTED"}


async def generate(args: Any, sample: Any, sampling_params: dict[str, Any], evaluation: bool = False) -> Any:
    """slime's custom generate function: play `sample`'s task as one episode and fill the sample from its record."""
    bridge = await _bridge(args)
    record = await bridge.engine.play(
        sample_task(sample),
        env=os.environ.get("SPARRING_ENV") or None,
        settings=policy_sampling(sampling_params),
        task_index=sample.index,
        repeat_index=0,
    )
    return fill_sample(sample, record)


def sample_task(sample: Any) -> dict[str, Any]:
    """The sparring task a slime sample stands for (see the module docstring)."""
    metadata = getattr(sample, "metadata", None) or {}
    task = metadata.get("sparring_task")
    if isinstance(task, Mapping):
        return dict(task)
    prompt = sample.prompt
    if isinstance(prompt, list):
        return {"messages": prompt}
    if isinstance(prompt, str):
        try:
            parsed = json.loads(prompt)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
        return {"messages": [{"role": "user", "content": prompt}]}
    raise InputError(f"slime sample {sample.index}: the prompt is neither text nor messages: {type(prompt).__name__}")


def policy_sampling(sampling_params: Mapping[str, Any]) -> dict[str, Any]:
    """slime's (SGLang's) sampling names as sparring policy settings."""
    overrides: dict[str, Any] = {}
    if sampling_params.get("temperature") is not None:
        overrides["policy_temperature"] = float(sampling_params["temperature"])
    top_p = sampling_params.get("top_p")
    if top_p is not None and top_p < 1.0:
        overrides["policy_top_p"] = float(top_p)
    if sampling_params.get("max_new_tokens"):
        overrides["policy_max_tokens"] = int(sampling_params["max_new_tokens"])
    return overrides


def fill_sample(sample: Any, record: Mapping[str, Any]) -> Any:
    """Write an episode's record into a slime `Sample` (see the module docstring) and return it."""
    cut = episode_sample(record)
    status_type = type(sample).Status
    sample.metadata = {
        **(sample.metadata or {}),
        "sparring": {"record_id": cut.record_id, "stop_reason": cut.stop_reason, "num_turns": cut.num_turns},
    }
    if not cut.has_tokens:
        sample.status = status_type.ABORTED
        return sample
    sample.tokens = cut.prompt_ids + cut.response_ids
    sample.response_length = len(cut.response_ids)
    sample.loss_mask = list(cut.response_mask)
    sample.rollout_log_probs = list(cut.response_logprobs)
    sample.response = policy_text(record)
    sample.weight_versions = [v for v in cut.call_versions if v is not None]
    sample.status = getattr(status_type, STATUS_NAMES.get(cut.status, "ABORTED"))
    sample.reward = None if cut.status == "aborted" else cut.reward
    return sample


def policy_text(record: Mapping[str, Any]) -> str:
    """What the policy said and called, one line per message part (slime logs `sample.response`)."""
    lines = []
    for message in record.get("messages") or ():
        if message.get("actor") != "policy":
            continue
        if message.get("content"):
            lines.append(str(message["content"]))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            lines.append(f"{function.get('name')}({function.get('arguments') or ''})")
    return "\n".join(lines)


# -- one engine per event loop (slime runs rollouts on its own loop) ----------------------------------------


class _Bridge:
    """What `generate` plays through in one event loop: an engine, and the token server over slime's SGLang."""

    def __init__(self, engine: Engine, server: TokenServer | None, upstream: SGLangGenerate | None) -> None:
        self.engine = engine
        self.server = server
        self.upstream = upstream

    async def aclose(self) -> None:
        await self.engine.aclose()
        if self.server is not None:
            await self.server.close()
        if self.upstream is not None:
            await self.upstream.aclose()


_bridges: dict[int, asyncio.Future[_Bridge]] = {}


async def _bridge(args: Any) -> _Bridge:
    key = id(asyncio.get_running_loop())
    made = _bridges.get(key)
    if made is None or _failed(made):  # the first call on a loop makes it; concurrent first calls wait for it
        made = _bridges[key] = asyncio.ensure_future(_make_bridge(args))
    return await made


async def aclose() -> None:
    """Close the engine and servers `generate` made on the running loop (slime has no hook for it; call it at exit)."""
    made = _bridges.pop(id(asyncio.get_running_loop()), None)
    if made is not None and not _failed(made):
        await (await made).aclose()


def _failed(made: asyncio.Future[Any]) -> bool:
    return made.done() and (made.cancelled() or made.exception() is not None)


async def _make_bridge(args: Any) -> _Bridge:
    mode = os.environ.get("SPARRING_SLIME_POLICY", "sglang")
    if mode not in ("sglang", "settings"):
        raise UsageError(f"SPARRING_SLIME_POLICY must be sglang or settings, got {mode!r}")
    if mode == "settings":
        return _Bridge(Engine(resolve_settings), None, None)
    ip, port = getattr(args, "sglang_router_ip", None), getattr(args, "sglang_router_port", None)
    checkpoint = getattr(args, "hf_checkpoint", None)
    if not ip or not port or not checkpoint:
        raise UsageError(
            "slime's args carry no sglang_router_ip/port or hf_checkpoint; set SPARRING_SLIME_POLICY=settings "
            "to sample the policy from sparring's configured endpoint"
        )
    upstream = SGLangGenerate(f"http://{ip}:{port}/generate")
    server = TokenServer(upstream, load_tokenizer(checkpoint))
    await server.start()
    explicit = {"policy_base_urls": [server.base_url], "token_mode": "tito"}  # the token server renders prompts
    return _Bridge(Engine(lambda env: resolve_settings(env, explicit)), server, upstream)


class SGLangGenerate:
    """A `tokens.GenerateFn` over SGLang's native `/generate` (the endpoint slime's own rollout posts to):
    `input_ids` in, `meta_info.output_token_logprobs` ([logprob, id, ...] per token), `finish_reason.type`
    and `weight_version` out. A 5xx is an abort (retried); a 4xx a `ModelRequestError`."""

    NAMES = (("max_tokens", "max_new_tokens"), ("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"))

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, prompt_ids: list[int], sampling: Mapping[str, Any]) -> Generated:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        params: dict[str, Any] = {"no_stop_trim": True, "skip_special_tokens": False}
        for ours, theirs in self.NAMES:
            if sampling.get(ours) is not None:
                params[theirs] = sampling[ours]
        if sampling.get("stop"):
            params["stop"] = list(sampling["stop"])
        payload = {"input_ids": prompt_ids, "sampling_params": params, "return_logprob": True}
        async with self._session.post(self.url, json=payload) as reply:
            if reply.status >= 500:
                return Generated([], [], "abort")
            if reply.status >= 400:
                raise ModelRequestError(f"{self.url}: HTTP {reply.status}: {(await reply.text())[:300]}")
            out = await reply.json()
        meta = out.get("meta_info") or {}
        pairs = meta.get("output_token_logprobs") or []
        finish = (meta.get("finish_reason") or {}).get("type") or "stop"
        version = meta.get("weight_version")
        return Generated(
            token_ids=[int(item[1]) for item in pairs],
            logprobs=[float(item[0]) for item in pairs],
            finish_reason={"length": "length", "abort": "abort"}.get(finish, "stop"),
            version=None if version is None else str(version),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
