"""The scripted server's control endpoints: vLLM's dev-mode RL endpoints and runtime LoRA loading.

Dev mode (`VLLM_SERVER_DEV_MODE=1` on a real server): `POST /pause?mode=abort|wait|keep`,
`POST /resume`, `GET /is_paused`, `POST /update_weight_version`, `GET /weight_info`,
`POST /reset_prefix_cache`, `POST /abort_requests`. Runtime LoRA (`VLLM_ALLOW_RUNTIME_LORA_UPDATING`):
`POST /v1/load_lora_adapter`, `POST /v1/unload_lora_adapter`. Off, a path is simply not there (404),
as on vLLM. The semantics of pausing live in `engine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from aiohttp import web

from sparring.testing.engine import PAUSE_MODES, PauseMode
from sparring.testing.errors import Refusal, error_body, invalid, json_response, missing, sanitize
from sparring.testing.server import FakeModelServer

_FALSE = ("false", "0", "no", "off", "f", "n")
_TRUE = ("true", "1", "yes", "on", "t", "y")


class DevEndpoints:
    """Pause, resume, weight version, prefix cache and abort, for one `FakeModelServer`."""

    def __init__(self, server: FakeModelServer) -> None:
        self.server = server
        self.engine = server.engine

    def routes(self) -> list[web.RouteDef]:
        """The dev-mode routes."""
        return [
            web.post("/pause", self.pause),
            web.post("/resume", self.resume),
            web.get("/is_paused", self.is_paused),
            web.post("/update_weight_version", self.update_weight_version),
            web.get("/weight_info", self.weight_info),
            web.post("/reset_prefix_cache", self.reset_prefix_cache),
            web.post("/abort_requests", self.abort_requests),
        ]

    async def pause(self, request: web.Request) -> web.Response:
        """`POST /pause?mode=`: "abort" (the default) ends running requests, "wait" answers once they have
        finished, "keep" freezes them; new requests wait for `/resume` in every mode. Unless
        `clear_cache=false`, every pause also resets the prefix cache (vLLM's, keep included, preempting
        frozen requests, which recompute their cache on resume)."""
        try:
            mode = request.query.get("mode", "abort")
            if mode not in PAUSE_MODES:
                raise invalid(("query", "mode"), "literal_error", "Input should be 'abort', 'wait' or 'keep'", mode)
            clear_cache = _query_flag(request, "clear_cache", True)
        except Refusal as refusal:
            return refusal.response()
        await self.engine.pause(cast(PauseMode, mode))
        if clear_cache:
            self.engine.reset_prefix_cache(reset_running_requests=True)
        return json_response({"status": "paused"})

    async def resume(self, request: web.Request) -> web.Response:
        """`POST /resume`: frozen requests go on, queued ones start."""
        self.engine.resume()
        return json_response({"status": "resumed"})

    async def is_paused(self, request: web.Request) -> web.Response:
        """`GET /is_paused`."""
        return json_response({"is_paused": self.engine.is_paused})

    async def update_weight_version(self, request: web.Request) -> web.Response:
        """`POST /update_weight_version {"new_version": ...}`: tokens generated from now on carry it."""
        try:
            body = await self.server._read_json(request)
            if "new_version" not in body:
                raise missing(("body", "new_version"), body)
            version = body["new_version"]
            if not isinstance(version, str):
                raise invalid(("body", "new_version"), "string_type", "Input should be a valid string", version)
        except Refusal as refusal:
            return refusal.response()
        self.engine.update_weight_version(version)
        return json_response({"success": True, "new_version": version})

    async def weight_info(self, request: web.Request) -> web.Response:
        """`GET /weight_info`: the current version ("default" until one is set)."""
        return json_response({"weight_version": self.engine.weight_version})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """`POST /reset_prefix_cache`: `success` is false while running requests hold the cache, unless
        `reset_running_requests=true`."""
        try:
            running = _query_flag(request, "reset_running_requests", False)
        except Refusal as refusal:
            return refusal.response()
        return json_response({"success": self.engine.reset_prefix_cache(reset_running_requests=running)})

    async def abort_requests(self, request: web.Request) -> web.Response:
        """`POST /abort_requests`: the requests named by `request_ids`, or every one when none is named;
        `aborted` counts the ids given (or the requests ended), as vLLM's does."""
        try:
            body = await self.server._read_json(request)
        except Refusal as refusal:
            return refusal.response()
        ids = body.get("request_ids")
        if ids and isinstance(ids, list):
            self.engine.abort(str(i) for i in ids)
            aborted = len(ids)
        else:
            aborted = self.engine.abort()
        return json_response({"status": "aborted", "aborted": aborted})


class LoraEndpoints:
    """Loading and unloading LoRA adapters at run time, for one `FakeModelServer`.

    Nothing is loaded for real: an adapter is a directory holding `adapter_config.json` (vLLM reads that
    file first and reports the adapter missing without it), and loading it makes its name a model that
    the server answers as described in `FakeModelServer`.
    """

    def __init__(self, server: FakeModelServer) -> None:
        self.server = server

    def routes(self) -> list[web.RouteDef]:
        """The runtime LoRA routes."""
        return [
            web.post("/v1/load_lora_adapter", self.load),
            web.post("/v1/unload_lora_adapter", self.unload),
        ]

    async def load(self, request: web.Request) -> web.Response:
        """`POST /v1/load_lora_adapter {"lora_name", "lora_path", "load_inplace"?}`, with vLLM's checks and errors."""
        server = self.server
        try:
            body = await server._read_json(request)
            name, path = _string_fields(body, ("lora_name", "lora_path"))
            if not name or not path:
                raise _invalid_user_input("Both 'lora_name' and 'lora_path' must be provided.")
            if name in server.responders:
                raise _invalid_user_input(f"The lora adapter '{name}' conflicts with a served base model.")
            if name in server.loaded_adapters and not body.get("load_inplace"):
                raise _invalid_user_input(
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                    "set 'load_inplace' to True."
                )
            if not (Path(path) / "adapter_config.json").is_file():
                message = sanitize(f"Loading lora {name} failed: No adapter found for {path}")
                raise Refusal(404, error_body(message, "NotFoundError", 404))
        except Refusal as refusal:
            return refusal.response()
        server.loaded_adapters[name] = path
        server.adapter_log.append(("load", name, path))
        server.engine.signal.notify()
        return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        """`POST /v1/unload_lora_adapter {"lora_name"}`."""
        server = self.server
        try:
            body = await server._read_json(request)
            [name] = _string_fields(body, ("lora_name",))
            if not name:
                raise _invalid_user_input("'lora_name' needs to be provided to unload a LoRA adapter.")
            if name not in server.loaded_adapters:
                message = f"The lora adapter '{name}' cannot be found."
                raise Refusal(404, error_body(message, "NotFoundError", 404))
        except Refusal as refusal:
            return refusal.response()
        path = server.loaded_adapters.pop(name)
        server.adapter_log.append(("unload", name, path))
        server.engine.signal.notify()
        return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


def _query_flag(request: web.Request, name: str, default: bool) -> bool:
    """A boolean query parameter, read as FastAPI reads one."""
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise invalid(("query", name), "bool_parsing", "Input should be a valid boolean, unable to interpret input", value)


def _string_fields(body: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """Required string fields of a request body, or FastAPI's validation error."""
    values = []
    for name in names:
        if name not in body:
            raise missing(("body", name), body)
        if not isinstance(body[name], str):
            raise invalid(("body", name), "string_type", "Input should be a valid string", body[name])
        values.append(body[name])
    return values


def _invalid_user_input(message: str) -> Refusal:
    return Refusal(400, error_body(message, "InvalidUserInput", 400))
