"""`sparring fake-model`: serve the scripted model server from the command line (also
`python -m sparring.testing.commands`, which `FakeModelProcess` runs). The server loads only when it
serves, so registering the subcommand costs the main CLI nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from sparring.testing.engine import DEFAULT_KV_CACHE_TOKENS, DEFAULT_MAX_MODEL_LEN, DEFAULT_WEIGHT_VERSION
from sparring.testing.responders import PRESETS
from sparring.testing.tokenizer import TEMPLATES

DESCRIPTION = (
    "Serve scripted models over an OpenAI/vLLM-compatible HTTP API until Ctrl-C. "
    "The first line printed is the base URL, e.g. http://127.0.0.1:PORT/v1."
)


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `fake-model`; its handler is `args.func(args) -> int`, serving until Ctrl-C."""
    parser = subparsers.add_parser(
        "fake-model",
        help="serve the scripted OpenAI-compatible model server (for tests, demos, benchmarks)",
        description=DESCRIPTION,
    )
    add_server_arguments(parser)
    parser.set_defaults(func=run_server)
    return parser


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `sparring fake-model` and `python -m sparring.testing.commands`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="tictactoe", help="scripted behaviour (default: %(default)s)"
    )
    parser.add_argument("--template", choices=TEMPLATES, default="chatml", help="chat template (default: %(default)s)")
    parser.add_argument(
        "--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN, help="context length (default: %(default)s)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds every model reply waits first (default: %(default)s)"
    )
    parser.add_argument(
        "--token-latency",
        type=float,
        default=0.0,
        help="seconds each generated token takes, so pauses land mid-reply (default: %(default)s)",
    )
    parser.add_argument(
        "--weight-version",
        default=DEFAULT_WEIGHT_VERSION,
        help="weight version before any /update_weight_version (default: %(default)s, as vLLM)",
    )
    parser.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=DEFAULT_KV_CACHE_TOKENS,
        help="size of the made-up KV cache behind vllm:kv_cache_usage_perc (default: %(default)s)",
    )
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="requests that run at once; more wait in vLLM's queue (default: no limit)",
    )
    parser.add_argument(
        "--no-scale-out",
        dest="scale_out",
        action="store_false",
        help="answer the token and render endpoints with 403, as vLLM without --enable-scale-out",
    )
    parser.add_argument(
        "--no-dev-mode",
        dest="dev_mode",
        action="store_false",
        help="no /pause, /resume, weight-version endpoints (404), as vLLM without VLLM_SERVER_DEV_MODE=1",
    )
    parser.add_argument(
        "--no-lora",
        dest="lora",
        action="store_false",
        help="no runtime LoRA loading (404), as vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING",
    )


async def serve(args: argparse.Namespace) -> None:
    """Serve a preset until cancelled; the first stdout line is the base URL, for whoever started us."""
    from sparring.testing.server import FakeModelServer

    server = FakeModelServer(
        PRESETS[args.preset](),
        fallback="policy",
        template=args.template,
        max_model_len=args.max_model_len,
        host=args.host,
        port=args.port,
        record=False,
        latency_s=args.latency,
        token_latency_s=args.token_latency,
        weight_version=args.weight_version,
        scale_out=args.scale_out,
        dev_mode=args.dev_mode,
        lora=args.lora,
        kv_cache_tokens=args.kv_cache_tokens,
        max_num_seqs=args.max_num_seqs,
    )
    async with server:
        print(server.base_url, flush=True)
        await asyncio.Event().wait()


def run_server(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (the handler of `sparring fake-model`)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m sparring.testing.commands`: the same options as `sparring fake-model`."""
    parser = argparse.ArgumentParser(prog="python -m sparring.testing.commands", description=DESCRIPTION)
    add_server_arguments(parser)
    return run_server(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
