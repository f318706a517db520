"""Weight sync across every policy replica: pause generation, update the weights' version (or load a LoRA
adapter), resume, without losing an episode.

    weights = engine.weights
    await weights.pause("keep")                       # or "wait", "abort"
    await weights.update("7")                         # the trainer pushed the weights itself (NCCL, ...)
    await weights.update("8", adapter_path="/ckpt/8") # or: load this adapter on every replica, route to it
    await weights.resume()
    await weights.info()                              # version, paused or not, and per replica

What each step does, on sparring's side (the `GenerationControl` every policy client of these servers
shares, models/generation.py) and on each vLLM server (dev mode, `VLLM_SERVER_DEV_MODE=1`):
- pause(mode): close the control (policy calls not yet sent wait in sparring, with no time-out running),
  then `POST /pause?mode=...&clear_cache=false` on every replica. keep: requests in flight freeze and go
  on after resume. wait: the call returns once they have finished. abort: they end at once with
  `finish_reason: abort` and the tokens so far; the model client continues them after resume. The cache
  is not cleared by the pause: a keep pause with vLLM's default `clear_cache=true` preempts the frozen
  requests, and a pause that is not followed by an update should cost nothing. A pause with no resume
  within its time-out resumes on its own, and says so in the log.
- update(version): with an adapter path, `POST /v1/load_lora_adapter` on every replica (the adapter is
  named `<policy model>@<version>`), and policy calls go to that name from now on; without one, the
  trainer has pushed the weights itself. Then `POST /update_weight_version` everywhere, so tokens
  sampled from now on carry the version. Then the prefix cache: after new full weights every cached
  block is stale, so `POST /reset_prefix_cache?reset_running_requests=true` (a plain reset fails while a
  frozen keep request holds blocks; with the flag those recompute their cache with the new weights).
  After an adapter load nothing is reset: vLLM hashes an adapter's blocks with its name, so no request
  can reuse another adapter's blocks, and the base model's (the simulated user's) stay valid. The
  control is closed while the update runs, so a call starts either before it or after it, and one
  made after it carries the new version and adapter, in episodes that started before it too.
- resume: `POST /resume` everywhere, then open the control.

A replica that fails a step is taken out of every policy client's rotation (its episodes move to the
others) and named in the answer; the rest move together. It comes back when it passes a later update.
If every replica fails, the step fails (`WeightSyncFailed`) and sparring's state is as before. An update
that is the caller's to fix is refused before anything changes (`WeightUpdateRefused`): a version that is
not newer (see `version_problem`), an adapter path that is malformed or outside the allowed folders,
or one no replica finds.

Adapter paths name a folder on the vLLM machines: sparring never opens, lists or stats them (the path
might not exist here, and a request must not be able to probe this machine's files). It checks their
form (absolute, no `..`, no control characters, bounded) and, where the caller says so (the service's
`--adapter-dir`), that they lie under an allowed folder; whether the adapter is there is vLLM's to say.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import orjson

from sparring.core.errors import UsageError, WeightSyncFailed, WeightUpdateRefused
from sparring.core.settings import EpisodeSettings
from sparring.core.weights import PauseMode, ReplicaWeights, StepReport, WeightsInfo
from sparring.models.generation import GenerationControl
from sparring.models.pool import ClientPool
from sparring.models.transport import Transport, server_root

log = logging.getLogger("sparring.weights")

MIN_PAUSE_TIMEOUT_S = 1.0
"""A shorter pause could not outlast the requests that make it (and bounds a wait-mode pause's wait)."""
PAUSE_MODES: tuple[PauseMode, ...] = ("keep", "wait", "abort")
SERVER_DEFAULT_VERSION = "default"
"""vLLM's label for the weights it started with; never a label sparring sets."""
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")
_INTEGER = re.compile(r"[0-9]{1,30}")
MAX_ADAPTER_PATH = 4096
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ANSWER_BYTES = 64 * 1024
_NO_DEV_MODE = "no dev mode (start vLLM with VLLM_SERVER_DEV_MODE=1)"
_NO_RUNTIME_LORA = (
    "no runtime LoRA (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True: "
    "`sparring models up --lora`)"
)


@dataclass(frozen=True, slots=True)
class WeightOptions:
    """How the weight sync behaves; the service sets them from its flags."""

    pause_timeout_s: float = 300.0
    """A pause with no resume for this long resumes on its own (each pause may set its own)."""
    adapter_roots: tuple[str, ...] | None = None
    """Folders adapter paths must lie under; None: any absolute path (a library caller is trusted)."""
    keep_adapters: int = 2
    """Adapters kept loaded (the current one and the one before, which calls started before an update may
    still use); older ones are unloaded."""
    control_timeout_s: float = 60.0
    """Seconds each control request to a server may take (a wait pause may take up to its pause time-out)."""

    def __post_init__(self) -> None:
        for name in ("pause_timeout_s", "control_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise UsageError(f"{name} must be a finite number of seconds above 0, got {value!r}")
        if self.keep_adapters < 1:
            raise UsageError(f"keep_adapters must be at least 1, got {self.keep_adapters!r}")
        for root in self.adapter_roots or ():
            if adapter_path_problem(root) is not None:
                raise UsageError(f"adapter folder {root!r}: {adapter_path_problem(root)}")


def version_problem(new: str, current: str | None, used: Iterable[str]) -> str | None:
    """Why `new` may not follow `current` (None: it may). Labels are strings, as vLLM's. A label used
    before is never taken again; when `new` is a whole number it must be above every whole-number label
    used so far (so "10" follows "9"); any other label just has to be new."""
    used = set(used) | ({current} if current is not None else set())
    used.discard(SERVER_DEFAULT_VERSION)
    if new in used:
        return f"version {new!r} is not newer than the current {current!r}: it was used already"
    if _INTEGER.fullmatch(new):
        integers = [int(label) for label in used if _INTEGER.fullmatch(label)]
        if integers and int(new) <= max(integers):
            return (
                f"version {new} is older than the current {current!r}: whole-number versions must increase "
                f"(the highest so far is {max(integers)})"
            )
    return None


def version_label_problem(version: Any) -> str | None:
    """Why `version` cannot be a label (None: it can)."""
    if not isinstance(version, str):
        return f"version must be a string, got {type(version).__name__}"
    if not VERSION_PATTERN.fullmatch(version):
        return (
            f"version {version[:80]!r} must be 1-64 characters: letters, digits and . _ : + - "
            "(starting with a letter or digit)"
        )
    if version == SERVER_DEFAULT_VERSION:
        return f"version {version!r} is vLLM's label for the weights a server started with; choose another"
    return None


def adapter_path_problem(path: Any) -> str | None:
    """Why `path` cannot name an adapter folder on the policy servers (its form only; never looked up here)."""
    if not isinstance(path, str) or not path:
        return "must be a non-empty string"
    if len(path) > MAX_ADAPTER_PATH:
        return f"is {len(path)} characters long; at most {MAX_ADAPTER_PATH}"
    if _CONTROL_CHARACTERS.search(path):
        return "has control characters"
    if not path.startswith("/"):
        return "must be absolute (vLLM resolves a relative path against its own working directory)"
    if ".." in path.split("/"):
        return "must not contain '..'"
    return None


def adapter_name(model: str, version: str) -> str:
    """The name an adapter is served under: the policy model's, then the version."""
    return f"{model}@{version}"


class WeightSync:
    """Pause, update and resume the policy servers of one engine (its default environment's policy
    endpoint), and the policy calls that go to them. See the module docstring."""

    def __init__(
        self,
        clients: ClientPool,
        settings: Callable[[], EpisodeSettings],
        options: WeightOptions | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = clients
        self._settings = settings
        self.options = options or WeightOptions()
        self._clock = clock
        self.mode: PauseMode | None = None
        self.auto_resumes = 0
        self._paused_at: float | None = None
        self._pause_timeout_s: float | None = None
        self._used: set[str] = set()
        self._adapters: list[str] = []
        self._lock: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._transport: Transport | None = None

    # -- what it acts on ------------------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """The policy replicas (base URLs)."""
        return tuple(self._settings().policy_base_urls)

    @property
    def control(self) -> GenerationControl:
        """The control every policy client of these replicas shares."""
        return self._clients.policy_control(self.urls)

    @property
    def version(self) -> str | None:
        """The version sparring was last told (None: never)."""
        return self.control.version

    @property
    def adapter(self) -> str | None:
        """The adapter policy calls go to (None: the policy model itself)."""
        return self.control.adapter

    @property
    def paused(self) -> bool:
        return self.mode is not None

    # -- the steps -------------------------------------------------------------------------------------

    async def pause(self, mode: PauseMode = "keep", *, timeout_s: float | None = None) -> StepReport:
        """Stop generating (see the module docstring for each mode); resumes on its own after `timeout_s`
        (default: the options') unless `resume` comes first. Pausing while paused changes the mode."""
        if mode not in PAUSE_MODES:
            raise UsageError(f"pause mode must be one of {', '.join(PAUSE_MODES)}, got {mode!r}")
        timeout = self.options.pause_timeout_s if timeout_s is None else timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise UsageError(f"pause timeout_s must be a finite number of seconds, got {timeout!r}")
        if timeout < MIN_PAUSE_TIMEOUT_S:
            raise UsageError(f"pause timeout_s must be at least {MIN_PAUSE_TIMEOUT_S:g} s, got {timeout!r}")
        async with self._locked():
            control = self.control
            control.close()
            request_timeout = timeout if mode == "wait" else self.options.control_timeout_s
            results = await self._on_all(self.urls, lambda url: self._pause_one(url, mode, request_timeout))
            if not _passed(results):
                if self.mode is None:
                    control.open()
                raise WeightSyncFailed(f"no policy server paused, so nothing changed: {_describe(results)}")
            taken_out = self._take_out_failed(results, "pause")
            self.mode = mode
            self._paused_at = self._clock()
            self._pause_timeout_s = timeout
            self._arm_watchdog(timeout)
            log.info("weights: paused (%s) on %d of %d replicas", mode, len(_passed(results)), len(results))
            return self._report("pause", results, taken_out)

    async def update(
        self, version: str, adapter_path: str | None = None, *, reset_cache: bool | None = None
    ) -> StepReport:
        """Move every replica to `version`: load `adapter_path` first if given (and route policy calls to
        it), then set the version, then reset the prefix cache (`reset_cache`; default: after full weights
        only, see the module docstring). Works paused or not."""
        problem = version_label_problem(version)
        if problem is not None:
            raise WeightUpdateRefused(problem, 422)
        if adapter_path is not None:
            self.check_adapter_path(adapter_path)
        async with self._locked():
            urls = self.urls
            current = self.version or await self._server_version(urls)
            problem = version_problem(version, current, self._used)
            if problem is not None:
                raise WeightUpdateRefused(problem, 409)
            control = self.control
            control.close()
            try:
                return await self._update(urls, version, adapter_path, current, reset_cache, control)
            finally:
                if self.mode is None:
                    control.open()

    async def resume(self) -> StepReport:
        """Generate again: every replica resumes, then waiting policy calls go on (with the new adapter)."""
        async with self._locked():
            return await self._resume()

    async def info(self) -> WeightsInfo:
        """sparring's view (version, adapter, pause) and each replica's own (its version and pause)."""
        urls = self.urls
        removed = self._clients.taken_out(urls)
        states = await asyncio.gather(*(self._replica_state(url) for url in urls))
        paused_for = None if self._paused_at is None else round(self._clock() - self._paused_at, 3)
        return WeightsInfo(
            version=self.version,
            adapter=self.adapter,
            paused=self.paused,
            mode=self.mode,
            paused_for_s=paused_for,
            pause_timeout_s=self._pause_timeout_s,
            auto_resumes=self.auto_resumes,
            replicas=[
                ReplicaWeights(url, url not in removed, removed.get(url), version, paused, error)
                for url, (version, paused, error) in zip(urls, states, strict=True)
            ],
        )

    def check_adapter_path(self, path: str) -> None:
        """Refuse an adapter path of the wrong form (422) or outside the allowed folders (403)."""
        problem = adapter_path_problem(path)
        if problem is not None:
            raise WeightUpdateRefused(f"adapter path {path[:200]!r} {problem}", 422)
        roots = self.options.adapter_roots
        if roots is None:
            return
        if not roots:
            raise WeightUpdateRefused(
                "adapter updates are off: no adapter folder is allowed (start the service with --adapter-dir DIR)",
                403,
            )
        if not any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots):
            raise WeightUpdateRefused(
                f"adapter path {path[:200]!r} is not under an allowed adapter folder (--adapter-dir)", 403
            )

    async def aclose(self) -> None:
        """Stop the pause watchdog and close the control connections (the servers keep their state)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            await self._transport.aclose()

    # -- the steps' insides ----------------------------------------------------------------------------

    async def _update(
        self,
        urls: tuple[str, ...],
        version: str,
        adapter_path: str | None,
        current: str | None,
        reset_cache: bool | None,
        control: GenerationControl,
    ) -> StepReport:
        model = self._settings().policy_model
        name = adapter_name(model, version) if adapter_path is not None else None
        results: dict[str, str | None] = dict.fromkeys(urls)
        if name is not None:
            assert adapter_path is not None
            results = await self._on_all(urls, lambda url: self._load_adapter(url, name, adapter_path))
            if not _passed(results):
                raise self._load_refusal(adapter_path, results)
        results |= await self._on_all(_passed(results), lambda url: self._set_version(url, version))
        reset = name is None if reset_cache is None else reset_cache
        if reset:
            results |= await self._on_all(_passed(results), self._reset_cache)
        passed = _passed(results)
        if not passed:
            await self._undo(urls, name, current)
            raise WeightSyncFailed(
                f"no policy server took version {version!r}, so nothing changed: {_describe(results)}"
            )
        taken_out = self._take_out_failed(results, f"update to {version!r}")
        for url in passed:
            self._clients.put_back(urls, url)
        control.version = version
        if name is not None:
            control.adapter = name
            self._adapters.append(name)
            await self._unload_old(passed)
        self._used.add(version)
        log.info(
            "weights: version %s%s on %d of %d replicas",
            version,
            f" (adapter {name})" if name else "",
            len(passed),
            len(urls),
        )
        return self._report("update", results, taken_out)

    async def _resume(self) -> StepReport:
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None
        results = await self._on_all(self.urls, self._resume_one)
        if self.mode is not None and not _passed(results):
            log.warning("weights: no policy server answered the resume: %s", _describe(results))
        taken_out = self._take_out_failed(results, "resume") if _passed(results) else {}
        self.mode = None
        self._paused_at = None
        self._pause_timeout_s = None
        self.control.open()  # calls must not wait forever; a server that did not resume is out of rotation
        return self._report("resume", results, taken_out)

    def _arm_watchdog(self, timeout_s: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = asyncio.get_running_loop().create_task(self._auto_resume(timeout_s))

    async def _auto_resume(self, timeout_s: float) -> None:
        await asyncio.sleep(timeout_s)
        async with self._locked():
            if self.mode is None or self._watchdog is not asyncio.current_task():
                return
            log.warning(
                "weights: paused (%s) for %g s with no resume: resuming on its own (pause time-out)",
                self.mode,
                timeout_s,
            )
            self.auto_resumes += 1
            await self._resume()

    def _load_refusal(self, path: str, results: dict[str, str | None]) -> Exception:
        """The error of an adapter no replica loaded: the caller's (a path a server could not find, or an
        adapter the servers refuse) or the servers' (down, no runtime LoRA, an internal error)."""
        failures = [failure for failure in results.values() if failure is not None]
        if any(failure.startswith("HTTP 404") and "No adapter found" in failure for failure in failures):
            return WeightUpdateRefused(
                f"no policy server found an adapter at {path[:200]!r} (a folder with adapter_config.json on the "
                f"vLLM machine); nothing changed: {_describe(results)}",
                422,
            )
        if all(failure.startswith(("HTTP 400", "HTTP 422")) for failure in failures):
            return WeightUpdateRefused(f"the policy servers refused the adapter: {_describe(results)}", 422)
        return WeightSyncFailed(f"no policy server loaded the adapter, so nothing changed: {_describe(results)}")

    async def _undo(self, urls: tuple[str, ...], name: str | None, current: str | None) -> None:
        """After every replica failed an update: unload its adapter and put the old label back (best effort)."""

        async def undo(url: str) -> str | None:
            if name is not None:
                await self._request(url, "/v1/unload_lora_adapter", {"lora_name": name})
            if current is not None:
                await self._request(url, "/update_weight_version", {"new_version": current})
            return None

        await self._on_all(urls, undo)

    async def _unload_old(self, urls: list[str]) -> None:
        """Unload the adapters beyond the newest `keep_adapters` (a failure is logged, not fatal)."""
        while len(self._adapters) > self.options.keep_adapters:
            old = self._adapters.pop(0)
            results = await self._on_all(urls, lambda url, old=old: self._unload_adapter(url, old))
            for url, failure in results.items():
                if failure is not None:
                    log.warning("weights: could not unload adapter %s from %s: %s", old, url, failure)

    def _take_out_failed(self, results: dict[str, str | None], step: str) -> dict[str, str]:
        """Take the replicas that failed out of rotation; what was taken out and why."""
        urls = self.urls
        taken_out = {url: f"{step} failed: {failure}" for url, failure in results.items() if failure is not None}
        for url, reason in taken_out.items():
            self._clients.take_out(urls, url, reason)
            log.warning("weights: replica %s taken out: %s", url, reason)
        return taken_out

    def _report(
        self, step: Literal["pause", "update", "resume"], results: dict[str, str | None], taken_out: dict[str, str]
    ) -> StepReport:
        return StepReport(
            step=step,
            version=self.version,
            adapter=self.adapter,
            paused=self.paused,
            mode=self.mode,
            replicas={url: failure or "ok" for url, failure in results.items()},
            taken_out=taken_out,
        )

    async def _server_version(self, urls: tuple[str, ...]) -> str | None:
        """The label the replicas carry now (when sparring was never told one): the newest among them."""
        labels = [state[0] for state in await asyncio.gather(*(self._replica_state(url) for url in urls))]
        known = [label for label in labels if label and label != SERVER_DEFAULT_VERSION]
        integers = [label for label in known if _INTEGER.fullmatch(label)]
        if integers:
            return max(integers, key=int)
        return known[0] if known else None

    # -- one request to one replica --------------------------------------------------------------------

    async def _pause_one(self, url: str, mode: PauseMode, timeout_s: float) -> str | None:
        return await self._request(url, f"/pause?mode={mode}&clear_cache=false", None, timeout_s=timeout_s)

    async def _resume_one(self, url: str) -> str | None:
        return await self._request(url, "/resume", None)

    async def _set_version(self, url: str, version: str) -> str | None:
        return await self._request(url, "/update_weight_version", {"new_version": version})

    async def _reset_cache(self, url: str) -> str | None:
        status, body = await self._send(url, "/reset_prefix_cache?reset_running_requests=true", None)
        if status is None or status >= 400:
            return _failure(status, body, "/reset_prefix_cache")
        answer = _json(body)
        if isinstance(answer, dict) and answer.get("success") is False:
            return "the prefix cache was not reset (success: false)"
        return None

    async def _load_adapter(self, url: str, name: str, path: str) -> str | None:
        return await self._request(url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})

    async def _unload_adapter(self, url: str, name: str) -> str | None:
        failure = await self._request(url, "/v1/unload_lora_adapter", {"lora_name": name})
        return None if failure is not None and "cannot be found" in failure else failure

    async def _replica_state(self, url: str) -> tuple[str | None, bool | None, str | None]:
        """(version, paused, error) as the server says."""
        version_status, version_body = await self._send(url, "/weight_info", None, method="GET")
        paused_status, paused_body = await self._send(url, "/is_paused", None, method="GET")
        version = _json(version_body).get("weight_version") if version_status == 200 else None
        paused = _json(paused_body).get("is_paused") if paused_status == 200 else None
        error = None
        if version_status != 200:
            error = _failure(version_status, version_body, "/weight_info")
        elif paused_status != 200:
            error = _failure(paused_status, paused_body, "/is_paused")
        return (
            version if isinstance(version, str) else None,
            paused if isinstance(paused, bool) else None,
            error,
        )

    async def _request(
        self, url: str, path: str, body: dict[str, Any] | None, *, timeout_s: float | None = None
    ) -> str | None:
        """POST to one replica: None if it answered below 400, else what failed."""
        status, answer = await self._send(url, path, body, timeout_s=timeout_s)
        if status is not None and status < 400:
            return None
        return _failure(status, answer, path)

    async def _send(
        self,
        url: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        method: str = "POST",
        timeout_s: float | None = None,
    ) -> tuple[int | None, bytes]:
        """(status, the start of the answer), or (None, what went wrong) when there was no answer."""
        transport = self._http()
        target = server_root(url) + path  # dev-mode routes sit at the root, the LoRA ones under /v1 there
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.options.control_timeout_s)
        data = orjson.dumps(body) if body is not None else None
        try:
            async with transport.session().request(
                method, target, data=data, headers=transport.headers, timeout=timeout
            ) as response:
                return response.status, await response.content.read(_MAX_ANSWER_BYTES)
        except TimeoutError:
            return None, f"no answer within {timeout.total:g} s".encode()
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}".encode()

    def _http(self) -> Transport:
        """A connection pool for the control requests (with the policy servers' API key), kept apart from
        the episodes' so a pause never waits for a request slot."""
        if self._transport is None:
            self._transport = Transport(api_key=self._settings().policy_api_key, max_retries=0)
        return self._transport

    async def _on_all(self, urls: Iterable[str], step: Callable[[str], Awaitable[str | None]]) -> dict[str, str | None]:
        urls = list(urls)
        outcomes = await asyncio.gather(*(step(url) for url in urls))
        return dict(zip(urls, outcomes, strict=True))

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


def _passed(results: dict[str, str | None]) -> list[str]:
    return [url for url, failure in results.items() if failure is None]


def _describe(results: dict[str, str | None]) -> str:
    return "; ".join(f"{url}: {failure or 'ok'}" for url, failure in results.items())


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _failure(status: int | None, body: bytes, path: str) -> str:
    """What a failed control request says, short: the status and the server's own message."""
    if status is None:
        return body.decode("utf-8", "replace")
    data = _json(body)
    if status == 404 and data.get("detail") == "Not Found":
        return f"HTTP 404: {_NO_RUNTIME_LORA if 'lora' in path else _NO_DEV_MODE}"
    error = data.get("error", data)
    if isinstance(error, dict) and "message" in error:
        message = str(error["message"])
    elif isinstance(error, dict) and isinstance(error.get("detail"), str):
        message = error["detail"]
    else:
        message = body.decode("utf-8", "replace")
    return f"HTTP {status}: {' '.join(message.split())[:300]}"
