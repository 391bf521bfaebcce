"""One exception hierarchy for every error frozenlm raises on purpose.

Each is a ``ValueError`` (bad input: a file, a key, a shape), so callers and the CLI catch them
uniformly; the subclasses say which kind of input was wrong. Messages name the file, key or shape
and say what to do.
"""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["FrozenLMError", "ConfigError", "CheckpointError", "DataFileError", "CacheError"]


class FrozenLMError(ValueError):
    """Base of every error frozenlm raises about its input."""


class ConfigError(FrozenLMError):
    """A config file, key or value is invalid."""


class CheckpointError(FrozenLMError):
    """A checkpoint (an LM's weights or a trained frozenlm run) is missing, corrupt, or does not match."""


class DataFileError(FrozenLMError):
    """A user data file exists but cannot be read or used; ``path`` names it."""

    def __init__(self, message: str, path: Optional[str | os.PathLike] = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class CacheError(FrozenLMError):
    """A cache file exists but cannot be read (the message names it and says to delete it)."""
