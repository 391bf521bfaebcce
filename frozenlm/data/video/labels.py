"""Readers of the label and list files of SSv2, Kinetics and VideoMAE-style video lists -> [(path, label)]."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence


def read_ssv2_labels(path: str | Path) -> dict[str, int]:
    """``something-something-v2-labels.json``: {"Approaching something with your camera": "0", ...}."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the SSv2 label json ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a {{template: index}} object, got {type(raw).__name__}")
    labels = {str(k): int(v) for k, v in raw.items()}
    if sorted(labels.values()) != list(range(len(labels))):
        raise ValueError(f"{path}: class indices are not 0..{len(labels) - 1}")
    return labels


def read_ssv2_split(path: str | Path, labels: dict[str, int], video_dir: str | Path,
                    ext: str = ".webm") -> list[tuple[Path, int]]:
    """``something-something-v2-{train,validation}.json`` -> [(video_dir/<id><ext>, label)].

    The label is the entry's ``template`` with its brackets removed, looked up in ``labels``.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the SSv2 split json ({e})") from None
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "id" not in e or "template" not in e:
            raise ValueError(f"{path}: entry {i} lacks 'id'/'template' (is this the test split, which has no labels?)")
        name = e["template"].replace("[", "").replace("]", "")
        if name not in labels:
            raise ValueError(f"{path}: entry {i} (id {e['id']}) has template {name!r}, not in the label json")
        out.append((Path(video_dir) / f"{e['id']}{ext}", labels[name]))
    return out


def read_video_list(path: str | Path, root: str | Path | None = None) -> list[tuple[Path, int]]:
    """VideoMAE's list files: one ``<path> <label>`` per line (space, comma or tab separated);
    relative paths are taken relative to ``root`` (default: the list file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video list not found: {path}")
    base = Path(root) if root is not None else path.parent
    out = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").replace("\t", " ").split()
        if len(parts) < 2 or not parts[-1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{ln}: expected '<video path> <integer label>', got {line!r}")
        p = Path(" ".join(parts[:-1]))
        out.append((p if p.is_absolute() else base / p, int(parts[-1])))
    return out


#: Where a Kinetics video lives under a split folder: "flat" (the cvdf release: ``train/``, ``val/``
#: hold every ``<youtube_id>_<start:06d>_<end:06d>.mp4``) or "by_label" (``<label>/<file>``: cvdf's
#: ``arrange_by_classes.py`` and the ActivityNet crawler name each folder exactly as the csv's label).
KINETICS_LAYOUTS = ("auto", "flat", "by_label")


def kinetics_layout(video_dir: str | Path, classes: Sequence[str], layout: str = "auto") -> str:
    """``layout``, or for "auto": "by_label" when some folder under ``video_dir`` is named like a class,
    else "flat"."""
    if layout not in KINETICS_LAYOUTS:
        raise ValueError(f"data.layout must be one of {KINETICS_LAYOUTS}, got {layout!r}")
    if layout != "auto":
        return layout
    return "by_label" if any((Path(video_dir) / c).is_dir() for c in classes) else "flat"


def read_kinetics_csv(path: str | Path, video_dir: str | Path, classes: Sequence[str] | None = None,
                      layout: str = "auto", ext: str = ".mp4") -> tuple[list[tuple[Path, int]], list[str]]:
    """The official Kinetics csv (``label,youtube_id,time_start,time_end,split``) -> items, classes.

    Files are ``<youtube_id>_<start:06d>_<end:06d><ext>`` (the cvdf release and the ActivityNet
    crawler both name them so), directly in ``video_dir`` or in ``video_dir/<label>/`` (see
    :data:`KINETICS_LAYOUTS`, :func:`kinetics_layout`); classes are the sorted label names unless
    ``classes`` is given.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: expected a header with columns {sorted(need)}")
    names = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(names)}
    by_label = kinetics_layout(video_dir, names, layout) == "by_label"
    out = []
    for ln, r in enumerate(rows, 2):
        if r["label"] not in index:
            raise ValueError(f"{path}:{ln}: label {r['label']!r} is not among the {len(names)} classes")
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        folder = Path(video_dir) / r["label"] if by_label else Path(video_dir)
        out.append((folder / f"{stem}{ext}", index[r["label"]]))
    return out, names
