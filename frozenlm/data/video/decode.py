"""Decode RGB frames from a video file with PyAV (or decord when installed and asked for)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import DataFileError


class VideoDecodeError(DataFileError):
    """A video file cannot be opened or decoded (the message names the file)."""


class VideoTooShortError(VideoDecodeError):
    """A video has fewer frames than the loader's ``min_frames``."""


def _has_decord() -> bool:
    import importlib.util
    return importlib.util.find_spec("decord") is not None


def decode_frames(path: str | Path, indices: Callable[[int], Sequence[int]] | Sequence[int] | None = None,
                  backend: str = "auto", min_frames: int = 1) -> np.ndarray:
    """Decode RGB frames (T, H, W, 3) uint8 from ``path``.

    ``indices`` is a list of frame numbers or a function of the video's frame count returning
    one (so sampling can depend on the length); None = every frame. ``backend``: "pyav",
    "decord" (optional package) or "auto" (decord if installed, else PyAV).
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}", path)
    if backend == "auto":
        backend = "decord" if _has_decord() else "pyav"
    if backend == "decord":
        frames, _ = _decode_decord(path, indices, min_frames)
    elif backend == "pyav":
        frames, _ = _decode_pyav(path, indices, min_frames)
    else:
        raise ValueError(f"data.backend must be auto, pyav or decord, got {backend!r}")
    return frames


def _check_length(path: Path, n: int, min_frames: int) -> None:
    if n == 0:
        raise VideoDecodeError(f"{path}: no decodable video frames (empty or corrupt file)", path)
    if n < min_frames:
        raise VideoTooShortError(f"{path}: only {n} frames, fewer than data.min_frames={min_frames}; "
                                 f"remove it from the list or lower data.min_frames", path)


def _resolve(indices: Any, n: int, path: Path) -> list[int]:
    idx = list(range(n)) if indices is None else list(indices(n) if callable(indices) else indices)
    bad = [i for i in idx if not 0 <= int(i) < n]
    if bad:
        raise VideoDecodeError(f"{path}: frame indices {bad[:5]} out of range for a {n}-frame video", path)
    return [int(i) for i in idx]


def _decode_pyav(path: Path, indices: Any, min_frames: int) -> tuple[np.ndarray, int]:
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: has no video stream", path)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # Container frame counts are missing (webm) or wrong often enough: count while decoding.
            decoded = list(container.decode(stream))
    except VideoDecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None
    _check_length(path, len(decoded), min_frames)
    idx = _resolve(indices, len(decoded), path)
    return np.stack([decoded[i].to_ndarray(format="rgb24") for i in idx]), len(decoded)


def _decode_decord(path: Path, indices: Any, min_frames: int) -> tuple[np.ndarray, int]:
    import decord  # optional dependency
    try:
        vr = decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None
    _check_length(path, len(vr), min_frames)
    idx = _resolve(indices, len(vr), path)
    return vr.get_batch(idx).asnumpy(), len(vr)
