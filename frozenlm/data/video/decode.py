"""Decode RGB frames from a video file with PyAV (or decord when installed and asked for); PyAV decodes
only from the keyframe before each needed frame (:mod:`frozenlm.data.video.seek`) unless told otherwise."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DataFileError
from .seek import SeekUnsafe, decode_by_seeking, scan_packets


class VideoDecodeError(DataFileError):
    """A video file cannot be opened or decoded (the message names the file)."""


class VideoTooShortError(VideoDecodeError):
    """A video has fewer frames than the loader's ``min_frames``."""


def _has_decord() -> bool:
    import importlib.util
    return importlib.util.find_spec("decord") is not None


def decode_frames(path: str | Path, indices: Callable[[int], Sequence[int]] | Sequence[int] | None = None,
                  backend: str = "auto", min_frames: int = 1, seek: bool = True) -> np.ndarray:
    """Decode RGB frames (T, H, W, 3) uint8 from ``path``.

    ``indices`` is a list of frame numbers or a function of the video's frame count returning
    one (so sampling can depend on the length); None = every frame. ``backend``: "pyav",
    "decord" (optional package) or "auto" (decord if installed, else PyAV). With PyAV and
    ``seek`` (default), only the frames from the keyframe before each needed frame up to it are
    decoded (:mod:`frozenlm.data.video.seek`); the result equals the full decode frame for frame,
    and files where that cannot be guaranteed are decoded whole. ``seek=False``: always decode whole.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(f"video file not found: {path}", path)
    if backend == "auto":
        backend = "decord" if _has_decord() else "pyav"
    if backend == "decord":
        frames, _ = _decode_decord(path, indices, min_frames)
    elif backend == "pyav":
        frames, _ = _decode_pyav(path, indices, min_frames, seek)
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


@contextmanager
def _pyav_stream(path: Path, frame_threads: bool = True) -> Iterator[tuple[Any, Any]]:
    """(container, first video stream) of ``path``; PyAV's errors become :class:`VideoDecodeError`.
    ``frame_threads``: let FFmpeg decode several frames at once (``thread_type`` AUTO); else PyAV's
    default (slice threads only)."""
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path}: has no video stream", path)
            stream = container.streams.video[0]
            if frame_threads:
                stream.thread_type = "AUTO"
            yield container, stream
    except (av.error.FFmpegError, OSError, ValueError) as e:
        if isinstance(e, VideoDecodeError):
            raise
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None


def _decode_pyav(path: Path, indices: Any, min_frames: int, seek: bool = True) -> tuple[np.ndarray, int]:
    drawn: tuple[int, list[int]] | None = None  # (frame count, indices) drawn from the packet scan
    if seek and indices is not None:
        try:
            # No frame threads when seeking: their pipeline refills after every seek, which cost more
            # CPU and wall time here than it saved (docs/video.md, "Decoding cost"). Same frames either way.
            with _pyav_stream(path, frame_threads=False) as (container, stream):
                index = scan_packets(container, stream)
                if index.num_frames < max(1, min_frames):
                    raise SeekUnsafe("too short: let the full decode count and report it")
                drawn = (index.num_frames, _resolve(indices, index.num_frames, path))
                got = decode_by_seeking(container, stream, index, drawn[1])
                rgb = {i: f.to_ndarray(format="rgb24") for i, f in got.items()}
                return np.stack([rgb[i] for i in drawn[1]]), index.num_frames
        except (SeekUnsafe, VideoDecodeError):
            pass  # decode the whole file below, in a fresh container: its outcome (frames or error) stands
    with _pyav_stream(path) as (container, stream):
        # Container frame counts are missing (webm) or wrong often enough: count while decoding.
        decoded = list(container.decode(stream))
    n = len(decoded)
    _check_length(path, n, min_frames)
    # The sampler's draw for the scan's count is kept when the full decode agrees (no second random draw).
    idx = drawn[1] if drawn is not None and drawn[0] == n else _resolve(indices, n, path)
    return np.stack([decoded[i].to_ndarray(format="rgb24") for i in idx]), n


def _decode_decord(path: Path, indices: Any, min_frames: int) -> tuple[np.ndarray, int]:
    import decord  # optional dependency
    try:
        vr = decord.VideoReader(str(path), num_threads=1)
    except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError
        raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})", path) from None
    _check_length(path, len(vr), min_frames)
    idx = _resolve(indices, len(vr), path)
    return vr.get_batch(idx).asnumpy(), len(vr)
