"""Where a split's videos live, and the check, when a dataset is built, that every listed video is there."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..errors import FilePolicy, present_files

def drop_missing(items: Sequence[tuple[Path, int]], policy: FilePolicy, what: str,
                 keys: str) -> list[tuple[Path, int]]:
    """``items`` without the missing videos (:func:`frozenlm.data.errors.present_files`): an error with the
    count and the first paths, or, under ``data.on_error=skip``, one ``[data]`` line and the paths in
    ``policy.skipped``. ``keys`` names the config keys that decide where the videos are looked up."""
    keep = present_files([p for p, _ in items], policy,
                         lambda n, total, first: f"{what}: {n} of {total} listed videos are missing ({first})",
                         f"fetch them or fix {keys}", "drop the missing videos up front", "dropped up front")
    return [items[i] for i in keep]


def split_video_dir(video_dir: str | None, split_dir: str | None, which: str) -> Path:
    """The folder of one split's videos: ``split_dir`` (``data.<split>_video_dir``) when set, else
    ``video_dir/<which>`` when that folder exists (the cvdf Kinetics release's ``train/`` and ``val/``),
    else ``video_dir`` itself (every split's videos in one folder, as SSv2 ships)."""
    if split_dir not in (None, ""):
        p = Path(str(split_dir)).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"data.{which}_video_dir = {p} is not a folder")
        return p
    if video_dir in (None, ""):
        raise ValueError(f"data.video_dir (or data.{which}_video_dir) must be set (see docs/video.md)")
    root = Path(str(video_dir)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.video_dir = {root} is not a folder")
    return root / which if (root / which).is_dir() else root
