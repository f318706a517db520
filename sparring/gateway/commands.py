"""`sparring gateway`: an OpenAI-compatible endpoint per agent session, recording the policy's exact tokens.

The policy endpoint comes from the same flags and variables as `sparring run` (`sparring.options`);
the simulated user is not involved. Records are appended to `--output` as sessions end; on Ctrl-C or
SIGTERM open sessions end as aborted (`shutdown`) and are written too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sparring.options import UsageError, add_episode_options, episode_config


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `gateway` to the main parser."""
    from sparring.gateway.settings import DEFAULT_IDLE_TIMEOUT_S
    from sparring.web import API_KEY_VARIABLE, DEFAULT_MAX_BODY_BYTES, OPERATOR_KEY_VARIABLE

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
        "--keep-ended", type=int, default=1000, help="ended sessions' records kept for GET (0: none; default 1000)"
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
        "--max-sessions", type=int, default=1000, help="sessions open at once; one more gets 429 (default: 1000)"
    )
    limits.add_argument(
        "--max-idle-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="the longest idle timeout a session may ask for (default: 3600)",
    )
    limits.add_argument(
        "--max-metadata-bytes",
        type=int,
        default=256 * 1024,
        help="most bytes of a session's task and metadata, as JSON (default: 262144)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument(
        "--allow-env-url",
        action="append",
        default=[],
        metavar="URL",
        help="a resources server the remote verifier may contact, besides --env-url (repeatable); others get 403",
    )
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

    config = episode_config(args, "tictactoe", roles=("policy",))
    registry = CollectorRegistry()
    try:
        gateway = build_gateway(
            config,
            output=args.output,
            registry=registry,
            env_urls=tuple(args.allow_env_url),
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
