"""`sparring gateway`: an OpenAI-compatible endpoint per agent session, recording the policy's exact tokens.

The policy endpoint comes from the same flags and variables as `sparring run` (`sparring.options`);
the simulated user is not involved. Records are appended to `--output` as sessions end; on Ctrl-C or
SIGTERM open sessions end as aborted (`shutdown`) and are written too.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from sparring.options import add_episode_options, episode_config

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `gateway` to the main parser."""
    from sparring.gateway.settings import DEFAULT_IDLE_TIMEOUT_S
    from sparring.web import API_KEY_VARIABLE, DEFAULT_MAX_BODY_BYTES

    parser = subparsers.add_parser(
        "gateway",
        help="an OpenAI-compatible endpoint per agent session that records exact tokens into rollout records",
        description=__doc__,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8090, help="port (default: %(default)s; 0: a free one, printed)")
    parser.add_argument("--output", metavar="FILE", help="append each ended session's rollout record to this JSONL")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S",
        help="seconds without calls before a session ends as aborted (default: %(default)s; per session: limits)",
    )
    parser.add_argument("--keep-ended", type=int, default=1000, help="ended sessions' records kept for GET")
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help=f"bearer token agents and harnesses must send (default: ${API_KEY_VARIABLE})",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    add_episode_options(parser)
    parser.set_defaults(func=cmd_gateway)
    return parser


def cmd_gateway(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from sparring.gateway.app import build_gateway, create_app
    from sparring.web.auth import API_KEY_VARIABLE, resolve_api_key

    config = episode_config(args, "tictactoe", roles=("policy",))
    registry = CollectorRegistry()
    gateway = build_gateway(
        config, idle_timeout_s=args.idle_timeout, output=args.output, keep_ended=args.keep_ended, registry=registry
    )
    api_key = resolve_api_key(args.api_key_file)
    app = create_app(gateway, api_key=api_key, max_body_bytes=args.max_body_bytes, registry=registry)
    if args.host not in LOOPBACK and api_key is None:
        print(
            f"sparring gateway: warning: binding {args.host} without an API key: anyone who can reach this port "
            f"can use your policy server (set ${API_KEY_VARIABLE} or --api-key-file)",
            file=sys.stderr,
        )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections made as soon as the URL is printed wait in the backlog, not refused
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"sparring gateway: listening on http://{shown}:{port} (policy {config.policy_model} at "
        f"{', '.join(config.policy_base_urls)}; sessions at POST /v1/sessions)",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
    server.run(sockets=[sock])
    return 0
