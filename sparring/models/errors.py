"""Errors of the local model launcher (`sparring models up`): one subclass of `SparringModelError` per cause."""

from __future__ import annotations

from sparring.core.errors import SparringModelError


class ModelNotFoundError(SparringModelError):
    """A model path does not exist or is not a model folder."""


class ModelDownloadError(SparringModelError):
    """Fetching the default model's files from the package index failed."""


class ChecksumMismatchError(SparringModelError):
    """The joined default model file is not the one we pinned."""


class ModelConversionError(SparringModelError):
    """Converting the GGUF file into a model folder failed."""


class BackendNotInstalledError(SparringModelError):
    """vLLM (or transformers for the conversion) is not importable."""


class PortInUseError(SparringModelError):
    """The port a server should listen on is taken."""


class ServerStartError(SparringModelError):
    """A local model server died or did not become healthy in time."""
