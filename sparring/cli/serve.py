"""`sparring serve`: the rollout service under uvicorn, with a graceful SIGTERM.

Model endpoints and default limits come from the same flags and variables as `sparring run`
(`sparring.cli.options`). On SIGTERM or Ctrl-C the server stops accepting, gives running episodes
`--shutdown-grace` seconds, then ends the rest as aborted records and sends them, every stream to
its summary line however long the client takes to read it; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import sys
from types import FrameType
from typing import Any

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.envs.registry import environment_names
from sparring.server.settings import ServerSettings
from sparring.web import API_KEY_VARIABLE, OPERATOR_KEY_VARIABLE


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `serve` to the main parser."""
    defaults = ServerSettings()
    parser = subparsers.add_parser(
        "serve",
        help="serve rollouts over HTTP (FastAPI): single, batch (NDJSON), NeMo Gym /run, health, metrics",
        description=__doc__,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port, 0-65535 (0: a free one, printed at start)")
    parser.add_argument("--env", default=defaults.default_env, choices=environment_names(), help="default env")
    parser.add_argument(
        "--api-key-file", metavar="FILE", help=f"bearer token clients must send (default: ${API_KEY_VARIABLE})"
    )
    parser.add_argument(
        "--operator-key-file",
        metavar="FILE",
        help=f"bearer token that also lists every gateway session (default: ${OPERATOR_KEY_VARIABLE})",
    )
    service = parser.add_argument_group("capacity and bounds")
    service.add_argument("--max-concurrent-episodes", type=int, default=defaults.max_concurrent_episodes)
    service.add_argument(
        "--max-queued-episodes",
        type=int,
        default=defaults.max_queued_episodes,
        help="admitted episodes waiting for a slot; past this, 429 with Retry-After",
    )
    service.add_argument(
        "--batch-concurrency", type=int, default=defaults.batch_concurrency, help="most episodes per batch at once"
    )
    service.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size, help="tasks per batch")
    service.add_argument("--max-repeats", type=int, default=defaults.max_repeats)
    service.add_argument("--max-turns-limit", type=int, default=defaults.max_turns, help="highest max_turns allowed")
    service.add_argument(
        "--max-steps-limit", type=int, default=defaults.max_steps_per_turn, help="highest steps per turn allowed"
    )
    service.add_argument(
        "--max-tokens-limit", type=int, default=defaults.max_tokens, help="highest max tokens per call allowed"
    )
    service.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    service.add_argument(
        "--shutdown-grace", type=float, default=defaults.shutdown_grace_s, help="seconds for episodes on SIGTERM"
    )
    weights = parser.add_argument_group("weight sync (/v1/weights)")
    weights.add_argument(
        "--pause-timeout",
        type=float,
        default=defaults.pause_timeout_s,
        metavar="S",
        help="a pause with no resume for S seconds resumes on its own (default %(default)g)",
    )
    weights.add_argument(
        "--adapter-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="absolute folder on the vLLM machines that LoRA adapters may be loaded from (repeatable; "
        "none: adapter updates are refused); sparring never reads it",
    )
    add_episode_options(parser)
    parser.set_defaults(func=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; a flag or port that cannot be used is one line and exit 2."""
    import uvicorn  # the web stack loads only for `serve`, not for every CLI command
    from prometheus_client import CollectorRegistry

    from sparring.gateway.app import build_gateway
    from sparring.gateway.routes import gateway_router
    from sparring.server.app import create_app
    from sparring.web.auth import SecurityError, resolve_api_key, resolve_operator_key
    from sparring.web.serving import SettingError, exposure_warning, listen, shown_address

    try:
        settings = ServerSettings(
            default_env=args.env,
            max_concurrent_episodes=args.max_concurrent_episodes,
            max_queued_episodes=args.max_queued_episodes,
            batch_concurrency=args.batch_concurrency,
            max_batch_size=args.max_batch_size,
            max_repeats=args.max_repeats,
            max_turns=args.max_turns_limit,
            max_steps_per_turn=args.max_steps_limit,
            max_tokens=args.max_tokens_limit,
            max_body_bytes=args.max_body_bytes,
            shutdown_grace_s=args.shutdown_grace,
            api_key=resolve_api_key(args.api_key_file),
            operator_key=resolve_operator_key(args.operator_key_file),
            pause_timeout_s=args.pause_timeout,
            adapter_dirs=tuple(args.adapter_dir),
        )
        sock = listen(args.host, args.port)
    except (SettingError, SecurityError) as exc:
        raise UsageError(str(exc)) from None
    registry = CollectorRegistry()  # one /metrics for the rollout routes and the gateway's
    gateway = build_gateway(
        settings_from_args(args, args.env, require=("policy",)), registry=registry, operator_key=settings.operator_key
    )
    app = create_app(
        settings, lambda env: settings_from_args(args, env), extra_routers=[gateway_router(gateway)], registry=registry
    )
    warning = exposure_warning("serve", args.host, settings.api_key, "run episodes on your model servers")
    if warning:
        print(warning, file=sys.stderr)
    print(f"sparring serve: listening on {shown_address(sock)} (env {args.env}; docs at /docs)", flush=True)
    service = app.state.service
    # No timeout of uvicorn's own on shutdown: it would cancel a response still being written when it
    # expires (a slow client, a loaded machine) and cut a batch stream before its summary line. The
    # service's grace bounds the episodes; after it, the rest is writing what is owed.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None, access_log=False))
    uvicorn_handle_exit = server.handle_exit

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        """The first signal drains the service (batches stop after the grace period); a second exits at once."""
        if server.should_exit:
            server.force_exit = True  # uvicorn forces only on a second SIGINT; any second signal does here
        elif service.loop is not None:
            print("sparring serve: shutting down: finishing episodes in flight", file=sys.stderr, flush=True)
            service.loop.call_soon_threadsafe(service.begin_shutdown, settings.shutdown_grace_s)
        uvicorn_handle_exit(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run(sockets=[sock])
    return 0
