"""LangGraph's own floor: CPU per superstep of a graph that does nothing, beside sparring's per model call.

Two graphs, both driven by `ainvoke` with a runtime context and no checkpointer, as the engine runs:
- `minimal`: one node looping on itself through a conditional edge, state `{n: int}`;
- `episode-shaped`: sparring's own state schema (`EpisodeState`, with its reducers for messages,
  user messages and the ledger) and the same node/route shape (an async node returning a small update,
  a plain routing function run through `Route`), so the floor is what our graph's structure costs
  before any of our work.
It prints CPU microseconds per superstep (process_time, many steps, median of repeats), and, with
`--per-call`, what that floor comes to per model call of a tic-tac-toe episode (19 supersteps for
10 model calls with the handover node; 15 before it).

    .venv/bin/python bench/langgraph_floor.py [--steps 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from sparring.core.settings import EpisodeSettings
from sparring.core.state import EpisodeInput, EpisodeState
from sparring.graphs.episode import Route


class Minimal(TypedDict):
    n: int


def minimal_graph(steps: int) -> Any:
    async def tick(state: Minimal) -> dict[str, Any]:
        return {"n": state["n"] + 1}

    def again(state: Minimal) -> Literal["tick", "__end__"]:
        return "tick" if state["n"] < steps else END

    graph = StateGraph(Minimal)
    graph.add_node("tick", tick)
    graph.add_edge(START, "tick")
    graph.add_conditional_edges("tick", Route(again), ["tick", END])
    return graph.compile().with_config(recursion_limit=10 * steps)


def episode_shaped_graph(steps: int) -> Any:
    async def start(state: EpisodeState) -> dict[str, Any]:
        return {"turn": 0, "status": None, "policy_steps": 0}

    async def step(state: EpisodeState) -> dict[str, Any]:
        return {"turn": state["turn"] + 1, "policy_steps": state["policy_steps"] + 1}

    def again(state: EpisodeState) -> Literal["step", "__end__"]:
        return "step" if state["turn"] < steps else END

    graph = StateGraph(EpisodeState, context_schema=EpisodeSettings, input_schema=EpisodeInput)
    graph.add_node("start", start)
    graph.add_node("step", step)
    graph.add_edge(START, "start")
    graph.add_edge("start", "step")
    graph.add_conditional_edges("step", Route(again), ["step", END])
    return graph.compile().with_config(recursion_limit=10 * steps)


async def per_step_us(graph: Any, graph_input: dict[str, Any], steps: int, context: Any) -> float:
    started = time.process_time()
    await graph.ainvoke(graph_input, context=context)
    return 1e6 * (time.process_time() - started) / steps


async def amain(args: argparse.Namespace) -> int:
    settings = EpisodeSettings()
    variants = {
        "minimal": (minimal_graph(args.steps), {"n": 0}),
        "episode-shaped": (episode_shaped_graph(args.steps), {"task": {}}),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for graph, graph_input in variants.values():  # warm-up
        await per_step_us(graph, graph_input, args.steps, settings)
    for _ in range(args.repeats):
        for name, (graph, graph_input) in variants.items():
            results[name].append(await per_step_us(graph, graph_input, args.steps, settings))
    print(f"LangGraph's floor, CPU per superstep ({args.steps} steps, median of {args.repeats}):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:>15}: {median:7.1f} us  (range {min(values):.1f}-{max(values):.1f})")
    floor = statistics.median(results["episode-shaped"])
    supersteps, calls = 16, 7  # the golden tic-tac-toe episode (tests/golden): 16 supersteps for 7 model calls
    per_call_ms = floor * supersteps / calls / 1000
    print(f"  per model call, tic-tac-toe ({supersteps} supersteps / {calls} calls): {per_call_ms:.3f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    return asyncio.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
