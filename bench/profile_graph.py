"""Where sparring's CPU per model call goes (default: concurrency 64), measured two ways.

1. **By subtraction** (no profiler, so no profiler distortion), the same episodes on:
   - A: the real graph over HTTP;
   - B: the real graph with the server's responses replayed in-process (`ModelClient._post` returns
     the recorded, already-parsed body): what disappears is HTTP, JSON and real waiting;
   - C: a graph of the same shape and state schema whose nodes only return the updates recorded
     from a real episode: what is left is LangGraph itself (supersteps, channels, reducers, routing);
   - D: `build_record` alone; E: the HTTP client alone, sparring's and the bare loop's;
   plus what-ifs, each a candidate fix: routing by `Command` instead of conditional edges (A' with
   sparring's own nodes and routing functions, C'), and the garbage collector tuned (+gc). Cases are
   sampled round-robin so drift spreads over all of them.
2. **By cProfile** over HTTP (GC tuned, so collections do not land on random functions): self time
   grouped by package (built-ins and stdlib helpers charged to their callers), and the top functions.

    .venv/bin/python bench/profile_graph.py [--episodes 256] [--repeats 3] [--concurrency 64] [--pstats FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import operator
import pstats
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, get_args, get_type_hints

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from baseline_aiohttp import AiohttpLoop
from episodes import GC_CLOCK, SparringGraph, run_batch, tune_gc
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from sparring.core.record import build_record
from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeInput, EpisodeState
from sparring.engine.engine import Engine
from sparring.envs.registry import get_environment
from sparring.graphs.episode import (
    NODE_OF_LABEL,
    RECURSION_LIMIT,
    Route,
    route_after_policy,
    route_after_policy_tools,
    route_after_seed,
    route_after_user,
    route_after_user_tools,
)
from sparring.models.client import EndpointConfig, ModelClient
from sparring.models.pool import ClientPool, Role
from sparring.nodes.deps import EpisodeDeps
from sparring.nodes.policy import policy
from sparring.nodes.seed import seed
from sparring.nodes.tools import run_tools
from sparring.nodes.user import user
from sparring.nodes.verify import verify
from sparring.testing import FakeModelProcess

DEFAULT_CONCURRENCY = 64

# -- recording and replaying one episode --------------------------------------------------------------


class RecordingClient(ModelClient):
    """A real client that keeps every parsed response body, per model, in call order."""

    def __init__(self, config: EndpointConfig, sink: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__(config)
        self.sink = sink

    async def _post(self, path: str, body: dict[str, Any], episode_id: str) -> tuple[dict[str, Any], float]:
        data, latency = await super()._post(path, body, episode_id)
        self.sink.setdefault(body["model"], []).append(data)
        return data, latency


class ReplayClient(ModelClient):
    """Answers from the recorded bodies, by call index per episode: no socket, no JSON, no waiting."""

    def __init__(self, config: EndpointConfig, recorded: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__(config)
        self.replies = recorded[config.model]
        self.cursor: dict[str, int] = defaultdict(int)

    async def _post(self, path: str, body: dict[str, Any], episode_id: str) -> tuple[dict[str, Any], float]:
        index = self.cursor[episode_id]
        self.cursor[episode_id] = index + 1
        return self.replies[index], 0.0


class Pool(ClientPool):
    """A ClientPool whose clients are made by `factory` (recording or replaying)."""

    def __init__(self, factory: Callable[[EndpointConfig], ModelClient]) -> None:
        super().__init__()
        self.factory = factory

    def _client(self, endpoint: EndpointConfig, role: Role) -> ModelClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = self.factory(endpoint)
            self._roles[endpoint] = role
        return client


class CommandRoutedEngine(Engine):
    """An Engine whose graphs are `command_routed_graph`s: episodes played exactly as A's, only routed by Command."""

    def _built(self, env: str) -> tuple[Any, EpisodeDeps]:
        built = self._graphs.get(env)
        if built is None:
            deps = EpisodeDeps(get_environment(env), self.clients)
            built = self._graphs[env] = (command_routed_graph(deps), deps)
        return built


@dataclass
class Recording:
    """One real episode: the server's bodies, every node's update in order, and the final state."""

    responses: dict[str, list[dict[str, Any]]]
    updates: list[tuple[str, dict[str, Any]]]
    final_state: dict[str, Any]
    model_calls: int


async def record_episode(config: EpisodeSettings) -> Recording:
    """Play one episode over HTTP, keeping what the replays need."""
    responses: dict[str, list[dict[str, Any]]] = {}
    engine = Engine(config, env="tictactoe", clients=Pool(lambda endpoint: RecordingClient(endpoint, responses)))
    graph = engine.graph("tictactoe")
    updates: list[tuple[str, dict[str, Any]]] = []
    final: dict[str, Any] = {}
    graph_input = {"task": {}, "episode_id": "recorded"}
    async for mode, chunk in graph.astream(graph_input, context=config, stream_mode=["updates", "values"]):
        if mode == "values":
            final = chunk
        else:
            updates += [(node, update or {}) for node, update in chunk.items()]
    await engine.aclose()
    return Recording(responses, updates, final, final["num_policy_calls"] + final["num_user_calls"])


ROUTES: dict[str, Callable[[EpisodeState], str]] = {
    "seed": route_after_seed,
    "policy": route_after_policy,
    "policy_tools": route_after_policy_tools,
    "user": route_after_user,
    "user_tools": route_after_user_tools,
}


def replay_nodes_graph(recording: Recording, command: bool) -> Any:
    """EpisodeState, the same nodes; each node only returns its recorded update.

    Routed by sparring's routing functions as conditional edges, or with `command` by `Command`
    (each node names its recorded successor; no conditional edges).
    """
    updates = recording.updates
    cursor: dict[str, int] = defaultdict(int)
    successors: dict[str, set[str]] = defaultdict(set)
    for (node, _), (after, _) in zip(updates, [*updates[1:], (END, {})], strict=True):
        successors[node].add(after)

    def make_node(name: str) -> Callable[[EpisodeState], Awaitable[Any]]:
        async def node(state: EpisodeState) -> Any:
            episode = state["episode_id"]
            index = cursor[episode]
            cursor[episode] = index + 1
            recorded_name, update = updates[index]
            assert recorded_name == name, (recorded_name, name)
            if "episode_id" in update:  # the seed's: each replay keeps its own id (the cursor is keyed by it)
                update = {**update, "episode_id": episode}
            if command:
                following = updates[index + 1][0] if index + 1 < len(updates) else END
                return Command(update=update, goto=following)
            return update

        node.__name__ = name
        return node

    graph = StateGraph(EpisodeState, context_schema=EpisodeSettings, input_schema=EpisodeInput)
    for name in ("seed", "policy", "policy_tools", "user", "user_tools", "verify"):
        if command:
            graph.add_node(name, make_node(name), destinations=tuple(successors[name] - {END}))
        else:
            graph.add_node(name, make_node(name))
    graph.add_edge(START, "seed")
    if not command:
        for name, route in ROUTES.items():
            labels = get_args(get_type_hints(route)["return"])
            graph.add_conditional_edges(
                name, Route(route), {label: NODE_OF_LABEL.get(label, label) for label in labels}
            )
        graph.add_edge("verify", END)
    return graph.compile().with_config(recursion_limit=RECURSION_LIMIT)


# -- a prototype: the real nodes, routed by Command instead of conditional edges ----------------------

_DESTINATIONS: dict[str, tuple[str, ...]] = {
    "seed": ("policy", "user", "verify"),
    "policy": ("policy_tools", "user", "verify"),
    "policy_tools": ("verify", "policy", "user"),
    "user": ("user_tools", "policy", "verify"),
    "user_tools": ("verify", "user", "policy"),
}
_APPENDED = tuple(
    key
    for key, hint in get_type_hints(EpisodeState, include_extras=True).items()
    if operator.add in getattr(hint, "__metadata__", ())
)
"""The state keys LangGraph appends to (their reducer is `operator.add`): a node's update extends them."""


def command_routed_graph(deps: EpisodeDeps) -> Any:
    """sparring's own node and routing functions, wired so each node returns `Command(update, goto=route(...))`.

    Same nodes, same routing functions, same drawing (destinations are declared); what goes away is
    LangGraph's branch machinery (a fresh-state copy and a traced runnable per edge).
    """
    nodes = {
        "seed": partial(seed, deps=deps),
        "policy": partial(policy, deps=deps),
        "policy_tools": partial(run_tools, deps=deps, actor="policy"),
        "user": partial(user, deps=deps),
        "user_tools": partial(run_tools, deps=deps, actor="user"),
    }

    def routed(name: str) -> Callable[..., Awaitable[Command]]:
        node, route = nodes[name], ROUTES[name]

        async def run(state: EpisodeState, runtime: Runtime[EpisodeSettings]) -> Command:
            update = await node(state, runtime)
            after = {**state, **update}
            for key in _APPENDED:
                if key in update:
                    after[key] = [*state.get(key, ()), *update[key]]
            label = route(after)
            return Command(update=update, goto=NODE_OF_LABEL.get(label, label))

        run.__name__ = name
        return run

    graph = StateGraph(EpisodeState, context_schema=EpisodeSettings, input_schema=EpisodeInput)
    for name, destinations in _DESTINATIONS.items():
        graph.add_node(name, routed(name), destinations=destinations)
    graph.add_node("verify", partial(verify, deps=deps))
    graph.add_edge(START, "seed")
    graph.add_edge("verify", END)
    return graph.compile().with_config(recursion_limit=RECURSION_LIMIT)


# -- measuring ------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One row of the subtraction table: how to play one "episode", and the samples taken (ms per model call)."""

    label: str
    play: Callable[[], Awaitable[Any]]
    calls_per_episode: int
    tuned_gc: bool = False
    cpu: list[float] = field(default_factory=list)
    gc: list[float] = field(default_factory=list)

    async def sample(self, episodes: int, concurrency: int) -> None:
        """One batch: client CPU and GC time per model call."""
        with gc_tuned() if self.tuned_gc else contextlib.nullcontext():
            gc.collect()
            cpu0, gc0 = time.process_time(), GC_CLOCK.seconds
            await run_batch(self.play, episodes, concurrency)
            calls = episodes * self.calls_per_episode
            self.cpu.append(1000 * (time.process_time() - cpu0) / calls)
            self.gc.append(1000 * (GC_CLOCK.seconds - gc0) / calls)


def record_ms_per_call(recording: Recording, rounds: int = 2000) -> float:
    """build_record on the recorded final state, per model call."""
    started = time.process_time()
    for _ in range(rounds):
        build_record(recording.final_state, env="tictactoe", episode_id="x")
    return 1000 * (time.process_time() - started) / rounds / recording.model_calls


@contextlib.contextmanager
def gc_tuned() -> Iterator[None]:
    """`tune_gc()` while inside, CPython's defaults restored after."""
    threshold = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def by_subtraction(
    base_url: str, episodes: int, repeats: int, concurrency: int
) -> tuple[list[Case], Recording, float]:
    """Every case warmed up, then sampled round-robin `repeats` times (drift spreads over all rows)."""
    config = EpisodeSettings(policy_base_urls=[base_url], user_base_urls=[base_url], user_tool_choice="required")
    recording = await record_episode(config)
    calls = recording.model_calls

    real = SparringGraph(base_url)
    command_routed = CommandRoutedEngine(config, env="tictactoe")
    replaying = Engine(
        config, env="tictactoe", clients=Pool(lambda endpoint: ReplayClient(endpoint, recording.responses))
    )
    replayed = {command: replay_nodes_graph(recording, command) for command in (False, True)}
    counter = iter(range(10**9))

    def replay(command: bool) -> Callable[[], Awaitable[Any]]:
        return lambda: replayed[command].ainvoke({"task": {}, "episode_id": f"r{next(counter)}"}, context=config)

    client = real.engine.clients.clients(real.settings)[1]
    messages = [{"role": "system", "content": "You play O."}, {"role": "user", "content": "Your move."}]
    tools = real.engine.deps("tictactoe").toolsets["user"].wire
    baseline = AiohttpLoop(base_url)
    await baseline.start()
    sampling = {"temperature": 0.7, "max_tokens": 256}
    body = {"model": "user", "messages": messages, **sampling, "tools": tools}

    cases = [
        Case("A. sparring graph over HTTP", real.play, calls),
        Case("A+gc. same, GC tuned (freeze + gen-0 threshold 20k)", real.play, calls, tuned_gc=True),
        Case("A'. same nodes, Command routing (prototype)", lambda: command_routed.play({}), calls),
        Case("A'+gc. Command routing and GC tuned", lambda: command_routed.play({}), calls, tuned_gc=True),
        Case("B. sparring graph, responses replayed (no HTTP, no JSON)", lambda: replaying.play({}), calls),
        Case("C. LangGraph only: recorded updates, sparring's routing", replay(False), calls),
        Case("C'. LangGraph only, Command routing (no conditional edges)", replay(True), calls),
        # The HTTP client alone, sparring's and the bare loop's, on the same body: one "episode" is one call.
        Case(
            "E. sparring ModelClient.chat alone",
            lambda: client.chat(messages, episode_id="e", sampling=sampling, tools=tools),
            1,
        ),
        Case("E'. aiohttp loop's _chat alone", lambda: baseline._chat(body, "e"), 1),
        Case("aiohttp loop, whole episodes (reference)", baseline.play, calls),
    ]
    try:
        for case in cases:
            await run_batch(case.play, max(concurrency, 8), concurrency)  # warm-up
        for repeat in range(repeats):
            for case in cases:
                await case.sample(episodes, concurrency)
            print(f"  round {repeat + 1}/{repeats}: done", file=sys.stderr, flush=True)
    finally:
        for closing in (real.close(), command_routed.aclose(), replaying.aclose(), baseline.close()):
            await closing
    return cases, recording, record_ms_per_call(recording)


# -- cProfile, grouped ------------------------------------------------------------------------------

BUCKETS: tuple[tuple[str, str], ...] = (
    ("/langgraph/", "LangGraph (pregel loop, channels, branches)"),
    ("/langchain_core/callbacks/", "LangChain callbacks/config (run by LangGraph per node and branch)"),
    ("/langchain_core/runnables/", "LangChain callbacks/config (run by LangGraph per node and branch)"),
    ("/langchain_core/tracers/", "LangChain callbacks/config (run by LangGraph per node and branch)"),
    ("/langchain_core/messages/", "LangChain message objects (incl. pydantic)"),
    ("/langchain_core/", "LangChain other"),
    ("/pydantic/", "LangChain message objects (incl. pydantic)"),
    ("/aiohttp/", "aiohttp (+ yarl, multidict)"),
    ("/yarl/", "aiohttp (+ yarl, multidict)"),
    ("/multidict/", "aiohttp (+ yarl, multidict)"),
    ("/sparring/models/", "sparring client (models/)"),
    ("/sparring/", "sparring nodes, env, ledger, record"),
    ("/bench/", "benchmark driver"),
    ("asyncio/selector_events.py", "sockets and transports"),
    ("/asyncio/", "asyncio scheduling"),
    ("selectors.py", "sockets and transports"),
)
SPECIAL_BUILTINS = (
    ("orjson", "JSON (orjson)"),
    ("_socket", "sockets and transports"),
    ("select.epoll", "sockets and transports"),
    ("pydantic_core", "LangChain message objects (incl. pydantic)"),
)


def bucket_of(func: tuple[str, int, str]) -> str | None:
    """The bucket of a profiled function, or None for built-ins and stdlib helpers (charged to callers)."""
    filename, _, name = func
    if filename == "~":
        return next((b for key, b in SPECIAL_BUILTINS if key in name), None)
    return next((b for key, b in BUCKETS if key in filename), None)


def grouped_self_time(stats: pstats.Stats) -> dict[str, float]:
    """Self time per bucket; unbucketed time goes to callers in proportion to the time each call site took."""
    raw = stats.stats  # type: ignore[attr-defined]
    totals: dict[str, float] = defaultdict(float)

    def charge(func: tuple[str, int, str], amount: float, depth: int) -> None:
        bucket = bucket_of(func)
        if bucket is not None:
            totals[bucket] += amount
            return
        callers = raw[func][4] if func in raw else {}
        weights = {caller: edge[2] + edge[3] * 1e-3 for caller, edge in callers.items()}
        total = sum(weights.values())
        if depth >= 8 or total <= 0:
            totals["other (stdlib, unattributed)"] += amount
            return
        for caller, weight in weights.items():
            charge(caller, amount * weight / total, depth + 1)

    for func, (_, _, tottime, _, _) in raw.items():
        charge(func, tottime, 0)
    return dict(totals)


async def profile_graph(
    base_url: str, episodes: int, concurrency: int, pstats_path: str | None
) -> tuple[pstats.Stats, float, int]:
    """cProfile of sparring's graph over HTTP; returns stats, profiled CPU and model calls."""
    variant = SparringGraph(base_url)
    await run_batch(variant.play, max(concurrency, 8), concurrency)
    profiler = cProfile.Profile()
    with gc_tuned():  # GC pauses would otherwise land on whichever function happened to be running
        started = time.process_time()
        profiler.enable()
        records = await run_batch(variant.play, episodes, concurrency)
        profiler.disable()
        cpu = time.process_time() - started
    await variant.close()
    if pstats_path:
        profiler.dump_stats(pstats_path)
    calls = sum(r["num_policy_calls"] + r["num_user_calls"] for r in records)
    return pstats.Stats(profiler), cpu, calls


def print_profile(stats: pstats.Stats, cpu: float, calls: int, unprofiled_ms: float, concurrency: int) -> None:
    """The grouped self times, then the top functions."""
    groups = grouped_self_time(stats)
    total = sum(groups.values())
    print(
        f"\n### cProfile at concurrency {concurrency}, GC tuned: self time by package\n\n"
        f"Profiled CPU {1000 * cpu / calls:.2f} ms/call (unprofiled, GC tuned: {unprofiled_ms:.2f}); the ms column "
        "scales each share to the unprofiled figure. cProfile inflates Python-heavy code more than C, so read "
        "shares, not absolutes. GC is left out (tuned away); see the table above for its cost.\n"
    )
    print("| package | share | ≈ ms/call |\n|---|---:|---:|")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        share = seconds / total
        print(f"| {name} | {100 * share:.1f}% | {share * unprofiled_ms:.2f} |")
    print(f"\n### Top functions by self time (cProfile, {calls} model calls)\n")
    print("| function | calls/model call | self ms/call (profiled) |\n|---|---:|---:|")
    raw = stats.stats  # type: ignore[attr-defined]
    for func, (_, ncalls, tottime, _, _) in sorted(raw.items(), key=lambda kv: -kv[1][2])[:25]:
        filename, line, name = func
        where = f"{name}" if filename == "~" else f"{_short(filename)}:{line}({name})"
        print(f"| `{where}` | {ncalls / calls:.1f} | {1000 * tottime / calls:.3f} |")


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=256, help="episodes per measurement (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per row; the median is shown")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="episodes in flight (default: 64)")
    parser.add_argument("--pstats", help="also write the raw cProfile stats here (for snakeviz, pstats)")
    return parser.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    with FakeModelProcess("tictactoe") as server:
        cases, recording, record_ms = await by_subtraction(
            server.base_url, args.episodes, args.repeats, args.concurrency
        )
        stats, cpu, calls = await profile_graph(server.base_url, args.episodes, args.concurrency, args.pstats)
    supersteps = len(recording.updates)
    print(
        f"\n### By subtraction, concurrency {args.concurrency}, {args.episodes} episodes, median of {args.repeats}\n\n"
        f"One episode: {recording.model_calls} model calls, {supersteps} supersteps "
        f"({' -> '.join(node for node, _ in recording.updates)}).\n"
    )
    print("| run | CPU ms/model call | of which GC | range |\n|---|---:|---:|---:|")
    by: dict[str, float] = {}
    for case in cases:
        median = statistics.median(case.cpu)
        by[case.label.split(".")[0].replace("'", "_")] = median  # A' -> A_, A'+gc -> A_+gc
        print(
            f"| {case.label} | {median:.2f} | {statistics.median(case.gc):.2f} | "
            f"{min(case.cpu):.2f}-{max(case.cpu):.2f} |"
        )
    print(f"| D. build_record alone | {record_ms:.3f} | - | - |")
    by["D"] = record_ms
    print(
        f"\nLangGraph alone (C): {by['C']:.2f} ms/call = {by['C'] * recording.model_calls / supersteps:.3f} ms per "
        f"superstep. sparring's nodes incl. LangChain messages (B - C - D): {by['B'] - by['C'] - by['D']:.2f}. "
        f"HTTP + JSON + waiting (A - B): {by['A'] - by['B']:.2f}, of which the client itself (E): {by['E']:.2f} "
        f"(the bare loop's: {by['E_']:.2f}).\n"
        f"Savings per model call: Command routing {by['C'] - by['C_']:.2f} in LangGraph alone, "
        f"{by['A'] - by['A_']:.2f} over HTTP; GC tuning {by['A'] - by['A+gc']:.2f}; both {by['A'] - by['A_+gc']:.2f}."
    )
    print_profile(stats, cpu, calls, by["A+gc"], args.concurrency)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
