"""`sparring gateway`: an OpenAI-compatible endpoint per agent session, recording the policy's exact tokens.

The policy endpoint comes from the same flags and variables as `sparring run` (`sparring.cli.options`);
the simulated user is not involved. Records are appended to `--output` as sessions end; on Ctrl-C or
SIGTERM open sessions end as aborted (`shutdown`) and are written too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.gateway.settings import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_KEEP_ENDED,
    DEFAULT_MAX_IDLE_TIMEOUT_S,
    DEFAULT_MAX_METADATA_BYTES,
    DEFAULT_MAX_SESSIONS,
)
from sparring.web import API_KEY_VARIABLE, DEFAULT_MAX_BODY_BYTES, OPERATOR_KEY_VARIABLE


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `gateway` to the main parser."""
    parser = subparsers.add_parser(
        "gateway",
        help="an OpenAI-compatible endpoint per agent session that records exact tokens into rollout records",
        description=__doc__,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument(
        "--port", type=int, default=8090, help="port, 0-65535 (default: %(default)s; 0: a free one, printed)"
    )
    parser.add_argument("--output", metavar="FILE", help="append each ended session's rollout record to this JSONL")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S",
        help="seconds without calls before a session ends as aborted (default: %(default)s; per session: limits)",
    )
    parser.add_argument(
        "--keep-ended",
        type=int,
        default=DEFAULT_KEEP_ENDED,
        help="ended sessions' records kept for GET (0: none; default: %(default)s)",
    )
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help=f"bearer token agents and harnesses must send (default: ${API_KEY_VARIABLE})",
    )
    parser.add_argument(
        "--operator-key-file",
        metavar="FILE",
        help=f"bearer token that lists every session; others list only their own (default: ${OPERATOR_KEY_VARIABLE})",
    )
    limits = parser.add_argument_group("bounds (memory)")
    limits.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help="sessions open at once; one more gets 429 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-idle-timeout",
        type=float,
        default=DEFAULT_MAX_IDLE_TIMEOUT_S,
        metavar="S",
        help="the longest idle timeout a session may ask for (default: %(default)s)",
    )
    limits.add_argument(
        "--max-metadata-bytes",
        type=int,
        default=DEFAULT_MAX_METADATA_BYTES,
        help="most bytes of a session's task and metadata, as JSON (default: %(default)s)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    add_episode_options(parser)
    parser.set_defaults(func=cmd_gateway)
    return parser


def cmd_gateway(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C; a flag or port that cannot be used is one line and exit 2."""
    import uvicorn
    from prometheus_client import CollectorRegistry

    from sparring.gateway.app import build_gateway, create_app
    from sparring.web.auth import SecurityError, resolve_api_key, resolve_operator_key
    from sparring.web.serving import SettingError, at_least, exposure_warning, listen, shown_address

    config = settings_from_args(args, "tictactoe", require=("policy",))
    registry = CollectorRegistry()
    try:
        gateway = build_gateway(
            config,
            output=args.output,
            registry=registry,
            idle_timeout_s=args.idle_timeout,
            keep_ended=args.keep_ended,
            max_sessions=args.max_sessions,
            max_idle_timeout_s=args.max_idle_timeout,
            max_metadata_bytes=args.max_metadata_bytes,
            operator_key=resolve_operator_key(args.operator_key_file),
        )
        api_key = resolve_api_key(args.api_key_file)
        at_least("--max-body-bytes", args.max_body_bytes, 1)
        sock = listen(args.host, args.port)
    except (SettingError, SecurityError) as exc:
        raise UsageError(str(exc)) from None
    app = create_app(gateway, api_key=api_key, max_body_bytes=args.max_body_bytes, registry=registry)
    warning = exposure_warning("gateway", args.host, api_key, "use your policy server")
    if warning:
        print(warning, file=sys.stderr)
    print(
        f"sparring gateway: listening on {shown_address(sock)} (policy {config.policy_model} at "
        f"{', '.join(config.policy_base_urls)}; sessions at POST /v1/sessions)",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=30))
    server.run(sockets=[sock])
    return 0
