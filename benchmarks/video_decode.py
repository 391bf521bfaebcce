"""Clips/s of frozenlm's video decoder: "before" (``seek=False``: every frame decoded, FFmpeg frame
threads, what it did before) vs "after" (``seek=True``, the default: from the keyframe before each
needed frame, without frame threads); "whole, 1 thread" decodes every frame without frame threads, to
tell the two changes apart. See docs/video.md.

Videos: the offline moving-shapes mp4s (8 frames of 32x32, 8 fps) and two 10 s, 30 fps, 224x224
H.264 clips written here with PyAV (keyframe every 250 frames, x264's default, and every 12). A clip
is one ``decode_frames`` call with the training sampler of a recipe: TSN 16 frames (SSv2) or dense
16 frames 4 apart (Kinetics); the moving shapes use their own 8-frame TSN. Each row gives clips/s
(wall clock), the process's CPU time per clip (all decoder threads), and the frames the decoder
produced per clip, counted by wrapping the container.

    python benchmarks/video_decode.py [--clips 200] [--out DIR]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from frozenlm.data.synthetic.video import generate
from frozenlm.data.video import decode_frames, dense_indices, read_video_list, tsn_indices


def write_clip(path: Path, gop: int, seconds: int = 10, fps: int = 30, size: int = 224) -> None:
    """A moving bright box on a drifting gradient with noise, H.264 (x264 C kernels, crf 23, keyint = gop)."""
    import av
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "23", "preset": "medium", "threads": "1",
                     "x264-params": f"asm=0:keyint={gop}:min-keyint={gop}:scenecut=0"}
        for i in range(seconds * fps):
            f = np.zeros((size, size, 3), np.int64)
            f[..., 0], f[..., 1] = (xx + 3 * i) % 256, (2 * yy + i) % 256
            cy = int(size / 2 + size / 3 * np.sin(i / 10))
            f[max(0, cy - 20):cy + 20, 50:90, 2] = 255
            f = np.clip(f + rng.integers(0, 20, f.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


class Counting:
    """Wraps ``av.open`` so every container counts the frames its decoder hands over."""

    def __init__(self) -> None:
        self.frames = 0

    def open(self, real: Callable[..., Any]) -> Callable[..., Any]:
        counter = self

        class Box:
            def __init__(self, c: Any) -> None:
                self.c = c

            def __enter__(self) -> "Box":
                self.c.__enter__()
                return self

            def __exit__(self, *exc: Any) -> Any:
                return self.c.__exit__(*exc)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.c, name)

            def decode(self, *a: Any, **k: Any) -> Any:
                for f in self.c.decode(*a, **k):
                    counter.frames += 1
                    yield f

        return lambda *a, **k: Box(real(*a, **k))


def sampler(kind: str, num_frames: int, rng: random.Random) -> Callable[[int], list[int]]:
    """The training sampler of a recipe as a function of the frame count."""
    if kind == "tsn":
        return lambda n: tsn_indices(n, num_frames, True, rng)
    return lambda n: dense_indices(n, num_frames, 4, True, rng)


def whole_file_single_thread(path: Path, indices: Callable[[int], list[int]]) -> np.ndarray:
    """The whole-file decode without frame threads (PyAV's default threading): separates what seeking
    saves from what dropping frame threads saves."""
    import av
    with av.open(str(path)) as c:
        frames = list(c.decode(c.streams.video[0]))
    return np.stack([frames[i].to_ndarray(format="rgb24") for i in indices(len(frames))])


#: mode -> one clip's decode. "before": what frozenlm did (every frame, frame threads); "after": seeking.
MODES: dict[str, Callable[[Path, Callable[[int], list[int]]], np.ndarray]] = {
    "before": lambda f, s: decode_frames(f, s, backend="pyav", seek=False),
    "whole, 1 thread": whole_file_single_thread,
    "after": lambda f, s: decode_frames(f, s, backend="pyav", seek=True),
}


def run(files: list[Path], kind: str, num_frames: int, clips: int, mode: str, seed: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds: every decoder thread of this process) to decode ``clips`` clips."""
    rng = random.Random(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(clips):
        MODES[mode](files[i % len(files)], sampler(kind, num_frames, rng))
    return time.perf_counter() - t0, time.process_time() - c0


def measure(files: list[Path], kind: str, num_frames: int, clips: int, repeats: int = 3) -> dict[str, tuple]:
    """{mode: (median clips/s, median CPU ms per clip, frames decoded per clip)}. The modes alternate
    within each repeat, so load from other processes hits them alike; the frames are counted in one
    more, untimed run with the counting wrapper."""
    import av
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for r in range(repeats):
        for mode in MODES:
            times[mode].append(run(files, kind, num_frames, clips, mode, r))
    out = {}
    for mode in MODES:
        counted, real = Counting(), av.open
        av.open = counted.open(real)  # the decoders look av.open up at each call, so this reaches them
        try:
            run(files, kind, num_frames, clips, mode, 0)
        finally:
            av.open = real
        wall = statistics.median(clips / w for w, _ in times[mode])
        cpu = statistics.median(1e3 * c / clips for _, c in times[mode])
        out[mode] = (wall, cpu, counted.frames / clips)
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the clips, time both decoders, print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200, help="clips per timed run (3 runs, median)")
    ap.add_argument("--out", type=Path, default=None, help="where to write the clips (default: a temp dir)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="frozenlm_video_decode_"))
    out.mkdir(parents=True, exist_ok=True)
    shapes = [p for p, _ in read_video_list(generate(out / "shapes", 96, 12, seed=0, progress=False) / "train.csv")]
    long = {}
    for gop in (250, 12):
        long[gop] = out / f"10s_30fps_224_gop{gop}.mp4"
        if not long[gop].is_file():
            write_clip(long[gop], gop)
    rows = [("moving shapes (8 x 32x32, 96 files)", shapes, "tsn", 8)]
    for gop, path in long.items():
        rows += [(f"10 s 30 fps 224x224, keyframe every {gop}", [path], kind, 16) for kind in ("tsn", "dense")]
    print("clips/s (wall), CPU ms per clip, frames decoded per clip\n")
    print("| video | sampler | " + " | ".join(MODES) + " | after / before: clips/s, CPU |")
    print("|---|---|" + "---|" * (len(MODES) + 1))
    for name, files, kind, nf in rows:
        m = measure(files, kind, nf, args.clips)
        label = f"TSN {nf}" if kind == "tsn" else f"dense {nf} x 4"
        cells = " | ".join(f"{m[k][0]:.1f}, {m[k][1]:.1f}, {m[k][2]:.0f}" for k in MODES)
        gain = f"{m['after'][0] / m['before'][0]:.2f}x, {m['before'][1] / m['after'][1]:.2f}x"
        print(f"| {name} | {label} | {cells} | {gain} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
