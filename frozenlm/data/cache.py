"""The one cache every dataset builder uses: content keys, atomic writes, one builder per node.

- :func:`cache_key` hashes every setting that changes the content together with the list of
  source files (relative name, size, mtime), so adding, removing or editing a file, or changing a
  setting, gives a new cache file instead of a stale one.
- :func:`atomic_write` / :func:`atomic_dir` write into a uniquely named temporary entry in the
  target's folder and move it into place with one rename: a crash mid-write leaves no cache
  file (at most a hidden ``.*.tmp*`` entry, which nothing reads), and two writers never mix.
- :func:`build_once` / :func:`load_or_build`: under an initialised ``torch.distributed`` group only
  the first process of each node (``LOCAL_RANK`` 0; rank 0 on one machine) builds; the other ranks
  wait at a barrier and then read what it wrote. A builder that fails still reaches the barrier
  and re-raises, and the other ranks then build for themselves (so they fail with the same error
  instead of hanging).

Cache payloads are npz, safetensors or JSON written by the callers: never pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar

from ..errors import CacheError

__all__ = ["CacheError", "file_fingerprint", "cache_key", "atomic_write", "atomic_dir", "build_once",
           "load_or_build"]


T = TypeVar("T")


def file_fingerprint(files: Iterable[str | os.PathLike], root: Optional[str | os.PathLike] = None
                     ) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` per file, sorted by name; names are relative to ``root`` if given.

    A missing file raises :class:`FileNotFoundError` naming it."""
    out = []
    for f in files:
        p = Path(f)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"data file {p} does not exist (it is listed as a source of a cached dataset)"
                                    ) from None
        name = os.path.relpath(p, root) if root is not None else str(p)
        out.append([name, st.st_size, st.st_mtime_ns])
    return sorted(out)


def cache_key(settings: Mapping[str, Any], files: Iterable[str | os.PathLike] = (),
              root: Optional[str | os.PathLike] = None, length: int = 16) -> str:
    """Hex digest over ``settings`` (JSON, sorted keys) and :func:`file_fingerprint` of ``files``."""
    blob = json.dumps({"settings": settings, "files": file_fingerprint(files, root)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _tmp_sibling(path: Path) -> Path:
    # Hidden, unique per writer, same folder (so the final rename never crosses file systems), and
    # ending in the target's suffix (np.savez appends ".npz" to names that lack it).
    return path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes the whole file at ``tmp``; it is then fsynced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """``fill(tmp)`` populates a fresh folder that is then renamed to ``path``. If another writer
    got there first, its folder is kept and this one is discarded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir()
        fill(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _group_size() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _is_node_builder() -> bool:
    import torch.distributed as dist
    local = os.environ.get("LOCAL_RANK")
    return int(local) == 0 if local is not None else dist.get_rank() == 0


def build_once(ready: Callable[[], bool], build: Callable[[], None]) -> None:
    """Run ``build()`` unless ``ready()``; in a process group only one process per node builds and
    every rank leaves after the same barrier (see the module docstring)."""
    if _group_size() <= 1:
        if not ready():
            build()
        return
    import torch.distributed as dist
    error: Optional[BaseException] = None
    if _is_node_builder():
        try:
            if not ready():
                build()
        except Exception as e:  # re-raised after the barrier, so the other ranks are not left waiting
            error = e
    dist.barrier()
    if error is not None:
        raise error


def load_or_build(path: str | os.PathLike, build: Callable[[], T], save: Callable[[T, Path], None],
                  load: Callable[[Path], T]) -> T:
    """The object cached at ``path`` (a content-keyed name, see :func:`cache_key`), built and saved
    atomically by one process per node when missing; every rank then loads the same file.

    A folder that cannot be written (read-only data) is not an error: the object is built in
    memory and a warning says the cache was not written."""
    path = Path(path)
    built: list[T] = []

    def make() -> None:
        obj = build()
        built.append(obj)
        try:
            atomic_write(path, lambda tmp: save(obj, tmp))
        except OSError as e:
            print(f"[cache] could not write {path} ({e}); continuing without a cache", file=sys.stderr, flush=True)

    build_once(path.is_file, make)
    if path.is_file():
        try:
            return load(path)
        except Exception as e:
            raise CacheError(f"cache file {path} is unreadable ({type(e).__name__}: {e}); delete it to rebuild"
                             ) from None
    return built[0] if built else build()  # not written (read-only folder): every rank builds its own
