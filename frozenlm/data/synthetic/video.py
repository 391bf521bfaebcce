"""Offline action-recognition data: "moving shapes" clips whose labels need temporal order.

Classes come in time-reversed pairs (left->right / right->left, falling / rising, approaching /
receding, clockwise / counter-clockwise, ...). A clip of the second class of a pair is EXACTLY the
first class's clip played backwards (same seed -> same frames in reverse order), and both are
drawn from the same parameter distribution. So any order-free view of a clip (one frame, a
shuffled bag of frames) has the same distribution under both classes of a pair: only the order
of frames separates them. Clips are written as real H.264 mp4 files through PyAV, so training
exercises the same decoding path as real datasets.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import atomic_dir, build_once, cache_key

__all__ = ["CLASSES", "render_clip", "write_mp4", "generate", "default_root"]

# (forward, reverse) pairs; class 2k is the forward motion, 2k+1 its time reversal.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("horizontal", "moving left to right", "moving right to left"),
    ("vertical", "falling (top to bottom)", "rising (bottom to top)"),
    ("scale", "approaching (growing)", "receding (shrinking)"),
    ("rotate", "rotating clockwise", "rotating counter-clockwise"),
    ("diagonal", "moving down-right", "moving up-left"),
    ("fade", "appearing (fading in)", "disappearing (fading out)"),
)
CLASSES: tuple[str, ...] = tuple(name for _, fwd, rev in PAIRS for name in (fwd, rev))
_SHAPES = ("square", "triangle", "disk", "arrow")


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (K, 2) as (row, col) of a shape centred at (cx, cy) with radius r, rotated by angle."""
    if shape == "square":
        pts = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * 0.75
    elif shape == "triangle":
        pts = np.array([[0, -1.0], [0.8, 0.7], [-0.8, 0.7]])
    elif shape == "arrow":  # asymmetric, so rotation is visible
        pts = np.array([[0, -1.0], [0.7, 0.0], [0.25, 0.0], [0.25, 0.9], [-0.25, 0.9], [-0.25, 0.0], [-0.7, 0.0]])
    else:  # disk: a 16-gon
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 0.8
    c, s = np.cos(angle), np.sin(angle)
    xy = pts @ np.array([[c, s], [-s, c]]) * r  # x right, y down: positive angle turns clockwise on screen
    return np.stack([cy + xy[:, 1], cx + xy[:, 0]], 1)


def render_clip(label: int, seed: int, size: int = 32, num_frames: int = 8) -> np.ndarray:
    """Frames (T, size, size, 3) uint8 of class ``label``; deterministic in (pair, seed).

    The clip of class 2k+1 is the clip of class 2k with the same seed, reversed in time.
    """
    from skimage.draw import polygon
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"moving-shapes label must be in 0..{len(CLASSES) - 1}, got {label}")
    kind = PAIRS[label // 2][0]
    rng = np.random.default_rng([seed, label // 2])
    shape = _SHAPES[rng.integers(len(_SHAPES))] if kind != "rotate" else ("triangle", "arrow")[rng.integers(2)]
    color = rng.uniform(0.55, 1.0, 3) * 255
    bg = rng.uniform(0, 0.35, 3) * 255
    lo, hi = 0.22 * size, 0.78 * size
    t = np.linspace(0.0, 1.0, num_frames)
    r = np.full(num_frames, rng.uniform(0.12, 0.2) * size)
    cx = np.full(num_frames, rng.uniform(lo, hi))
    cy = np.full(num_frames, rng.uniform(lo, hi))
    angle = np.full(num_frames, rng.uniform(0, 2 * np.pi))
    alpha = np.ones(num_frames)
    travel = rng.uniform(0.35, 0.5) * size
    if kind in ("horizontal", "diagonal"):
        x0 = rng.uniform(0.12 * size, 0.88 * size - travel)
        cx = x0 + travel * t
    if kind in ("vertical", "diagonal"):
        y0 = rng.uniform(0.12 * size, 0.88 * size - travel)
        cy = y0 + travel * t
    if kind == "scale":
        r = size * (rng.uniform(0.06, 0.1) + rng.uniform(0.18, 0.24) * t)
    if kind == "rotate":
        angle = angle[0] + rng.uniform(0.5, 0.9) * np.pi * t
    if kind == "fade":
        alpha = 0.1 + 0.9 * t
    noise = rng.normal(0, 6, (num_frames, size, size, 3))
    frames = np.empty((num_frames, size, size, 3), dtype=np.float64)
    for k in range(num_frames):
        img = np.broadcast_to(bg, (size, size, 3)).copy()
        rr, cc = polygon(*_polygon(shape, cx[k], cy[k], r[k], angle[k]).T, shape=(size, size))
        img[rr, cc] = alpha[k] * color + (1 - alpha[k]) * bg
        frames[k] = img + noise[k]
    frames = np.clip(frames, 0, 255).round().astype(np.uint8)
    return frames[::-1].copy() if label % 2 else frames


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8, crf: int = 12) -> None:
    """Encode (T, H, W, 3) uint8 frames as H.264 mp4 (yuv420p; H and W must be even) with PyAV."""
    import av
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {h}x{w}")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # One thread and x264's C kernels: the same frames give the same bytes. (With its AVX-512
        # kernels, x264 in PyAV's wheel encoded 1 in 100 to 1 in 4 clips differently from run to run.)
        stream.options = {"crf": str(crf), "threads": "1", "preset": "medium", "x264-params": "asm=0"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def default_root() -> Path:
    """Where generated sets are cached: $FROZENLM_DATA or ~/.cache/frozenlm."""
    return Path(os.environ.get("FROZENLM_DATA", Path.home() / ".cache" / "frozenlm")) / "moving_shapes"


def generate(root: str | Path | None, n_train: int, n_val: int, seed: int = 0, size: int = 32,
             num_frames: int = 8, fps: int = 8, progress: bool = True) -> Path:
    """Write the dataset once (idempotent; atomic, and by one process per node under
    torch.distributed, see :mod:`frozenlm.data.cache`) and return its folder.

    Layout: ``<root>/<key>/{train,val}/*.mp4``, ``train.csv``/``val.csv`` (``path label`` lines, the
    format :func:`frozenlm.data.video.read_video_list` reads), ``classes.txt`` and ``meta.json``.
    Labels are balanced: sample i of a split has label i mod #classes; its seed mixes the split seed.
    """
    params = {"n_train": n_train, "n_val": n_val, "seed": seed, "size": size, "num_frames": num_frames,
              "fps": fps, "classes": list(CLASSES), "version": 2}
    key = cache_key(params, length=12)
    out = Path(root).expanduser() / key if root is not None else default_root() / key

    def fill(tmp: Path) -> None:
        from tqdm import tqdm
        n_cls = len(CLASSES)
        for split, n, split_seed in (("train", n_train, seed * 2 + 1), ("val", n_val, seed * 2 + 2)):
            (tmp / split).mkdir(parents=True)
            lines = []
            for i in tqdm(range(n), desc=f"moving shapes {split}", disable=not progress, leave=False):
                label = i % n_cls
                frames = render_clip(label, seed=split_seed * 1_000_003 + i, size=size, num_frames=num_frames)
                write_mp4(frames, tmp / split / f"{i:06d}.mp4", fps=fps)
                lines.append(f"{split}/{i:06d}.mp4 {label}")
            (tmp / f"{split}.csv").write_text("\n".join(lines) + "\n")
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        (tmp / "meta.json").write_text(json.dumps(params, indent=1))

    build_once((out / "meta.json").is_file, lambda: atomic_dir(out, fill))
    if not (out / "meta.json").is_file():  # another node's folder is not visible here: write our own
        atomic_dir(out, fill)
    return out


def describe() -> dict[str, Any]:
    """Class names by index (for docs and logs)."""
    return dict(enumerate(CLASSES))
