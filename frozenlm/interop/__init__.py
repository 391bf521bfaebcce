"""Interoperability with other codebases' trained models: the paper authors' released checkpoints
(``frozenlm import-authors``, :func:`import_authors`)."""
from .authors import ImportResult, import_authors

__all__ = ["ImportResult", "import_authors"]
