"""One policy for user files that cannot be read: ``data.on_error: raise | skip``.

Readers turn a decoder's failure into :class:`DataFileError` (naming the file, without the
decoder's traceback). A :class:`FilePolicy` then either raises it with what to do
(``raise``, the default), or skips the file (``skip``): one ``[data] skipping ...`` line per file
on stderr with the running count, and the file in ``policy.skipped``. Datasets read lazily return
``None`` for a skipped item and :class:`DropSkipped` removes it from the batch, so every other item
keeps its own label; builders that read every file up front drop the file with its label and
print the total with :meth:`FilePolicy.summary`.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar

from ..errors import DataFileError

__all__ = ["ON_ERROR", "DataFileError", "FilePolicy", "on_error_policy", "DropSkipped", "read_image", "find_missing",
           "listed_files", "present_files"]


ON_ERROR = ("raise", "skip")
HINT = "fix or remove the file, or set data.on_error=skip to skip unreadable files (each is logged and counted)"
T = TypeVar("T")


class FilePolicy:
    """What a dataset does with an unreadable file (``mode`` raise or skip); see the module docstring.

    Picklable, so DataLoader workers each carry a copy (each worker counts its own skips)."""

    def __init__(self, mode: str = "raise") -> None:
        if mode not in ON_ERROR:
            raise ValueError(f"data.on_error must be one of {'|'.join(ON_ERROR)}, got {mode!r}")
        self.mode = mode
        self.skipped: list[str] = []

    @property
    def skip(self) -> bool:
        """True in skip mode."""
        return self.mode == "skip"

    def handle(self, err: DataFileError, item: str = "") -> None:
        """Raise ``err`` with the hint (raise mode), or log and count it (skip mode)."""
        if not self.skip:
            raise type(err)(f"{err}; {HINT}", err.path) from None
        self.skipped.append(err.path or str(err))
        where = f" ({item})" if item else ""
        print(f"[data] skipping{where}: {err} [{len(self.skipped)} unreadable file(s) skipped so far in this "
              f"process; data.on_error=skip]", file=sys.stderr, flush=True)

    def call(self, fn: Callable[[], T], item: str = "") -> Optional[T]:
        """``fn()``, or None when it raised :class:`DataFileError` and the policy skips."""
        try:
            return fn()
        except DataFileError as e:
            self.handle(e, item)
            return None

    def summary(self, total: int, what: str) -> None:
        """After reading every file up front: one line with how many of ``total`` were skipped."""
        if self.skipped:
            print(f"[data] {what}: skipped {len(self.skipped)} of {total} unreadable file(s) (data.on_error=skip); "
                  f"first: {self.skipped[0]}", file=sys.stderr, flush=True)


def on_error_policy(data_cfg: Optional[Mapping[str, Any]]) -> FilePolicy:
    """The policy of a config's ``data:`` section: ``data.on_error`` (raise | skip, default raise)."""
    mode = data_cfg.get("on_error", "raise") if data_cfg is not None else "raise"
    return FilePolicy("raise" if mode is None else mode)


class DropSkipped:
    """Collate wrapper: drops the ``None`` items of skipped files, then collates the rest with
    ``collate`` (default: PyTorch's). A batch whose every item was skipped is ``None`` when
    ``allow_empty`` (the task must accept it), otherwise a clear error."""

    def __init__(self, collate: Optional[Callable[[list], Any]] = None, allow_empty: bool = False) -> None:
        self.collate, self.allow_empty = collate, allow_empty

    def __call__(self, batch: list[Any]) -> Any:
        kept = [b for b in batch if b is not None]
        if not kept:
            if self.allow_empty:
                return None
            raise DataFileError(f"every item of a batch ({len(batch)} of {len(batch)}) was an unreadable file "
                                "skipped under data.on_error=skip; see the [data] skipping lines above, fix the "
                                "files, or use a larger batch")
        if self.collate is None:
            from torch.utils.data import default_collate
            return default_collate(kept)
        return self.collate(kept)


#: How many missing names an error or warning about missing files shows.
SHOW = 5


def listed_files(folder: Path) -> set[str]:
    """Names of the regular files (or links to them) in ``folder``; empty when it does not exist."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def find_missing(paths: Sequence[Path]) -> list[Path]:
    """The paths that are not files, in order; one directory listing per folder (not one ``stat`` per
    file), so a split of 240k files is checked in about a second."""
    listing: dict[Path, set[str]] = {}
    missing = []
    for p in paths:
        names = listing.get(p.parent)
        if names is None:
            names = listing[p.parent] = listed_files(p.parent)
        if p.name not in names:
            missing.append(p)
    return missing


def present_files(paths: Sequence[Path], policy: FilePolicy, head: Callable[[int, int, str], str], fix: str,
                  skip_hint: str, dropped: str, where: Optional[Path] = None) -> list[int]:
    """Indices of the ``paths`` that exist, checked when a dataset is built.

    Missing files are an error (raise mode, or when none would be left): ``head(missing, total, first
    names)``, then ``fix`` and, in raise mode, ", or set data.on_error=skip to <skip_hint>". In skip mode
    they join ``policy.skipped`` and one ``[data]`` line says they were ``dropped``."""
    missing = find_missing(paths)
    if not missing:
        return list(range(len(paths)))
    first = ", ".join(str(p) for p in missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
    msg = head(len(missing), len(paths), first)
    if not policy.skip or len(missing) == len(paths):
        hint = "" if policy.skip else f", or set data.on_error=skip to {skip_hint}"
        raise DataFileError(f"{msg}; {fix}{hint}", where if where is not None else missing[0].parent)
    gone = set(missing)
    policy.skipped.extend(str(p) for p in missing)
    print(f"[data] {msg}; {dropped} (data.on_error=skip), {len(paths) - len(missing)} remain",
          file=sys.stderr, flush=True)
    return [i for i, p in enumerate(paths) if p not in gone]


def read_image(source: str | os.PathLike | bytes, name: Optional[str] = None, mode: str = "RGB") -> Any:
    """A fully decoded PIL image (converted to ``mode``) from a path or encoded bytes; any decoding
    failure is a :class:`DataFileError` naming the file (``name`` for bytes, e.g. ``shard.tar:member``)."""
    from PIL import Image, UnidentifiedImageError
    where = name or str(source if not isinstance(source, bytes) else "<bytes>")
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise FileNotFoundError(f"image file not found: {source}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            return im.convert(mode)  # decodes every pixel now, so a truncated file fails here
    except UnidentifiedImageError:
        raise DataFileError(f"{where}: cannot read image (not a known image format, or its header is corrupt)",
                            where) from None
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise DataFileError(f"{where}: cannot read image ({type(e).__name__}: {e})", where) from None
