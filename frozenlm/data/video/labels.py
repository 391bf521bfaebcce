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


def read_kinetics_csv(path: str | Path, video_dir: str | Path,
                      classes: Sequence[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """The official Kinetics csv (``label,youtube_id,time_start,time_end,split``) -> items, classes.

    Files are expected at ``video_dir/<youtube_id>_<start:06d>_<end:06d>.mp4`` (the naming of the
    common download scripts); classes are the sorted label names unless ``classes`` is given.
    """
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: expected a header with columns {sorted(need)}")
    names = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(names)}
    out = []
    for ln, r in enumerate(rows, 2):
        if r["label"] not in index:
            raise ValueError(f"{path}:{ln}: label {r['label']!r} is not among the {len(names)} classes")
        stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        out.append((Path(video_dir) / f"{stem}.mp4", index[r["label"]]))
    return out, names
