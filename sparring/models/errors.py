"""Errors of the model layer: one base class, one subclass per cause, messages that say what to do.

Keep this small and additive: catch `SparringModelError` to handle any of them.
"""

from __future__ import annotations


class SparringModelError(Exception):
    """Base class: something about a model or a model server is wrong."""


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
