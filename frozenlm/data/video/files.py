"""Where a split's videos live, and the check, when a dataset is built, that every listed video is there."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import DataFileError, FilePolicy

#: How many missing names an error or warning shows.
SHOW = 5


def listed_files(folder: Path) -> set[str]:
    """Names of the regular files (or links to them) in ``folder``; empty when it does not exist."""
    try:
        with os.scandir(folder) as it:
            return {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def find_missing(items: Sequence[tuple[Path, int]]) -> list[Path]:
    """The item paths that are not files, in item order; one directory listing per folder (not one
    ``stat`` per video), so a 240k-video split is checked in about a second."""
    listing: dict[Path, set[str]] = {}
    missing = []
    for p, _ in items:
        names = listing.get(p.parent)
        if names is None:
            names = listing[p.parent] = listed_files(p.parent)
        if p.name not in names:
            missing.append(p)
    return missing


def drop_missing(items: Sequence[tuple[Path, int]], policy: FilePolicy, what: str,
                 keys: str) -> list[tuple[Path, int]]:
    """``items`` without the missing videos. Raise mode (or when none is left): a :class:`DataFileError`
    with the count and the first paths; skip mode: one ``[data]`` warning with the count, and the paths
    join ``policy.skipped``.
    ``keys`` names the config keys that decide where the videos are looked up."""
    missing = find_missing(items)
    if not missing:
        return list(items)
    gone = set(missing)
    first = ", ".join(str(p) for p in missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
    head = f"{what}: {len(missing)} of {len(items)} listed videos are missing ({first})"
    if not policy.skip or len(missing) == len(items):
        skip = "" if policy.skip else ", or set data.on_error=skip to drop the missing videos up front"
        raise DataFileError(f"{head}; fetch them or fix {keys}{skip}", missing[0].parent)
    policy.skipped.extend(str(p) for p in missing)
    print(f"[data] {head}; dropped up front (data.on_error=skip), {len(items) - len(missing)} remain",
          file=sys.stderr, flush=True)
    return [(p, y) for p, y in items if p not in gone]


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
