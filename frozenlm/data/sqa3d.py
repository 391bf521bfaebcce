"""Situated 3D question answering data: the SQA3D release format and the offline generated rooms.

SQA3D release (github.com/SilongYong/SQA3D, ``assets/data/sqa_task/balanced``), per split
(train / val / test):

- ``v1_balanced_questions_<split>_scannetv2.json``: ``{"questions": [{"question_id", "scene_id",
  "situation", "question", ...}]}``
- ``v1_balanced_sqa_annotations_<split>_scannetv2.json``: ``{"annotations": [{"question_id",
  "scene_id", "answers": [{"answer", ...}], "position": {"x", "y", "z"},
  "rotation": {"_x", "_y", "_z", "_w"}}]}``

Point clouds, one per ScanNet scene in ``data.scene_dir``, in the frame ``data.situation_frame`` names
(see :mod:`frozenlm.data.scannet` for SQA3D's own loader and export, which this follows):

- ``aligned`` (default, what SQA3D trains on): ``<scene_id>_aligned_vert.npy`` (the export's (N, 9) xyz,
  rgb 0..255, normals), else ``<scene_id>.npy/.npz/.pth`` holding axis-aligned points. The annotated
  situation is moved into that frame as SQA3D does: ``M [position + c, 1]`` and ``M[:3, :3] R(q)``, with
  ``M`` the ``axisAlignment`` of ScanNet's ``<scene_id>.txt`` (in ``data.meta_dir``, ``scans/<id>/<id>.txt``
  or flat) and ``c`` the bounding-box centre of ``<scene_id>_vert.npy`` (or, without it, of the aligned
  points taken back through ``M^-1``). A missing meta file is an error naming the scene and the paths.
- ``raw`` (only when asked for): the annotation as it is, with ``<scene_id>_vert.npy``, else
  ``<scene_id>.npy/.npz/.pth`` holding raw ScanNet points; the cloud is shifted by minus its own
  bounding-box centre, since SQA3D's positions are relative to it. No meta file is read.

``.npz`` files hold ``points`` or ``xyz`` + ``rgb``; ``.pth`` a tensor or a dict with ``xyz`` and ``rgb``,
read with ``torch.load(weights_only=True)``. Colours end in [0, 1]: export files are 0..255 and divided
by 255; other files are divided by 255 when their colours exceed 1. Question types follow SQA3D's
first-word rule.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataFileError, FilePolicy, on_error_policy
from .scannet import (SITUATION_FRAMES, align_situation, bbox_centre, is_export_file, matrix_yaw, meta_file_candidates,
                      other_frame_file, raw_centre_from_aligned, read_axis_alignment, scene_file_candidates)
from .synthetic.sqa3d import QUESTION_TYPES, load_or_generate_rooms

__all__ = ["PAD", "UNK", "tokenize", "question_type", "quaternion_yaw", "build_word_vocab", "build_answer_vocab",
           "read_sqa3d_split", "load_scene_points", "SituatedQADataset", "rooms_to_samples", "drop_bad_scenes",
           "align_samples", "load_samples", "vocabularies"]

_ROOMS_SPLITS = {"train": "train_scenes", "val": "val_scenes", "test": "test_scenes"}

PAD, UNK = "<pad>", "<unk>"


def tokenize(text: str) -> list[str]:
    """Lower-cased words and digits (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def question_type(question: str) -> str:
    """SQA3D's breakdown: the question's first word if it is What/Is/How/Can/Which, else Others."""
    words = tokenize(question)
    first = words[0].capitalize() if words else ""
    return first if first in QUESTION_TYPES[:-1] else "Others"


def quaternion_yaw(q: dict[str, float]) -> float:
    """Heading (rotation about z, radians) of an SQA3D rotation ``{"_x", "_y", "_z", "_w"}``."""
    x, y, z, w = (float(q[k]) for k in ("_x", "_y", "_z", "_w"))
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def build_word_vocab(texts: Sequence[str], min_count: int = 1) -> list[str]:
    """Words of the training texts (frequency order, ties alphabetical) after PAD (0) and UNK (1)."""
    counts = Counter(w for t in texts for w in tokenize(t))
    return [PAD, UNK] + sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))


def build_answer_vocab(answers: Sequence[str], max_answers: Optional[int] = None) -> list[str]:
    """Training answers, most frequent first (ties alphabetical), optionally the top ``max_answers``."""
    counts = Counter(a.strip().lower() for a in answers)
    vocab = sorted(counts, key=lambda a: (-counts[a], a))
    return vocab[:max_answers] if max_answers else vocab


def _read_json(path: Path, key: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"SQA3D file not found: {path} (set data.root to the folder holding the "
                                "v1_balanced_*_scannetv2.json files of the SQA3D release)")
    with path.open() as f:
        obj = json.load(f)
    if key not in obj:
        raise ValueError(f"{path}: expected a top-level {key!r} list, found keys {sorted(obj)}")
    return obj[key]


def read_sqa3d_split(root: str | Path, split: str) -> list[dict[str, Any]]:
    """Samples of one split: question_id, scene_id, situation, question, answer, type, and the situation
    as annotated (the raw ScanNet frame shifted to the raw mesh's bounding-box centre): position (3,),
    rotation (x, y, z, w) and its yaw (radians); joined on question_id. :func:`align_samples` moves the
    situation into the axis-aligned frame."""
    root = Path(root).expanduser()
    qs = _read_json(root / f"v1_balanced_questions_{split}_scannetv2.json", "questions")
    ann_path = root / f"v1_balanced_sqa_annotations_{split}_scannetv2.json"
    anns = {a["question_id"]: a for a in _read_json(ann_path, "annotations")}
    out = []
    for q in qs:
        a = anns.get(q["question_id"])
        if a is None:
            raise ValueError(f"{ann_path}: no annotation for question_id {q['question_id']} "
                             f"(scene {q.get('scene_id')}); the questions and annotations files do not match")
        if not a.get("answers"):
            raise ValueError(f"{ann_path}: question_id {q['question_id']} has no answers")
        pos = a.get("position", {"x": 0.0, "y": 0.0, "z": 0.0})
        rot = a.get("rotation", {"_x": 0.0, "_y": 0.0, "_z": 0.0, "_w": 1.0})
        quat = [float(rot[k]) for k in ("_x", "_y", "_z", "_w")]
        if not any(quat):
            raise ValueError(f"{ann_path}: question_id {q['question_id']} has an all-zero rotation quaternion")
        out.append({"question_id": q["question_id"], "scene_id": q["scene_id"], "situation": q["situation"],
                    "question": q["question"], "answer": a["answers"][0]["answer"].strip().lower(),
                    "type": question_type(q["question"]),
                    "position": [float(pos["x"]), float(pos["y"]), float(pos["z"])], "rotation": quat,
                    "yaw": quaternion_yaw(rot)})
    return out


def load_scene_points(path: str | Path) -> np.ndarray:
    """(N, 6) float32 xyz + rgb in [0, 1] from a .npy / .npz / .pth scene file or an export
    ``_vert.npy`` / ``_aligned_vert.npy`` (see module doc; normals are dropped); a file that cannot be
    decoded is a :class:`~frozenlm.data.errors.DataFileError` naming it."""
    path = Path(path)
    try:
        return _scene_points(path)
    except (DataFileError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001 - numpy, zipfile and torch raise many types on corrupt bytes
        raise DataFileError(f"{path}: cannot read scene points ({type(e).__name__}: {e})", path) from None


def _scene_points(path: Path) -> np.ndarray:
    suffix = path.suffix.lstrip(".")
    if suffix == "npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == "npz":
        with np.load(path, allow_pickle=False) as f:
            if "points" in f:
                arr = f["points"]
            elif "xyz" in f and "rgb" in f:
                arr = np.concatenate([f["xyz"], f["rgb"]], -1)
            else:
                raise DataFileError(f"{path}: expected key 'points' or keys 'xyz' and 'rgb', found "
                                    f"{sorted(f.files)}", path)
    elif suffix == "pth":
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
        if isinstance(obj, dict):
            if "xyz" not in obj or "rgb" not in obj:
                raise DataFileError(f"{path}: a dict scene needs 'xyz' and 'rgb' entries, found {sorted(obj)}", path)
            obj = torch.cat([torch.as_tensor(obj["xyz"]).float(), torch.as_tensor(obj["rgb"]).float()], -1)
        arr = torch.as_tensor(obj).numpy()
    else:
        raise ValueError(f"{path}: unsupported scene file type {path.suffix!r}; use .npy, .npz or .pth")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise DataFileError(f"{path}: expected an (N, 6) xyz+rgb array, got shape {arr.shape}", path)
    arr = arr[:, :6].copy()
    if is_export_file(path) or (arr.shape[0] and arr[:, 3:].max() > 1.0):
        arr[:, 3:] /= 255.0  # ScanNet colours are stored as 0..255 (the export always: read_mesh_vertices_rgb_normal)
    return arr


def rooms_to_samples(scenes: list[dict[str, Any]], prefix: str = "room") -> list[dict[str, Any]]:
    """Flatten generated room records (frozenlm.data.synthetic.sqa3d) into the sample dicts used here."""
    out = []
    for i, s in enumerate(scenes):
        for j, q in enumerate(s["questions"]):
            out.append({"question_id": f"{prefix}{i}_{j}", "scene_id": i, "situation": s["situation"],
                        "question": q["question"], "answer": q["answer"], "type": q["type"],
                        "position": [*s["position"], 0.0], "yaw": float(s["theta"])})
    return out


def _encode(text: str, index: dict[str, int], length: int) -> torch.Tensor:
    ids = [index.get(w, 1) for w in tokenize(text)][:length] or [1]  # an empty text reads as one UNK
    return torch.tensor(ids + [0] * (length - len(ids)), dtype=torch.long)


class SituatedQADataset(Dataset):
    """(scene points, situation, question) -> answer samples.

    ``scene_points(scene_id)`` returns an (N, 6) array. Answers outside ``answers`` (possible on
    val/test) get label -1: they count as wrong in EM and are tallied in ``unknown_answers``.
    Training draws a random ``num_points`` subset per access; evaluation a fixed one.
    """

    def __init__(self, samples: list[dict[str, Any]], scene_points: Callable[[Any], np.ndarray], words: list[str],
                 answers: list[str], num_points: int, max_situation_len: int = 24, max_question_len: int = 16,
                 train: bool = False) -> None:
        self.samples, self.scene_points, self.words, self.answers = samples, scene_points, words, answers
        self.word_index = {w: i for i, w in enumerate(words)}
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.num_points, self.train = int(num_points), train
        self.max_situation_len, self.max_question_len = max_situation_len, max_question_len
        self.unknown_answers = sum(s["answer"] not in self.answer_index for s in samples)
        self.skipped: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _points(self, scene_id: Any, index: int) -> torch.Tensor:
        pts = self.scene_points(scene_id)
        n = len(pts)
        if self.train:
            idx = np.random.choice(n, self.num_points, replace=n < self.num_points)
        elif n >= self.num_points:
            idx = np.linspace(0, n - 1, self.num_points).round().astype(np.int64)
        else:
            idx = np.random.default_rng(index).choice(n, self.num_points, replace=True)
        return torch.from_numpy(pts[idx])

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        return {"points": self._points(s["scene_id"], i),
                "situation": _encode(s["situation"], self.word_index, self.max_situation_len),
                "question": _encode(s["question"], self.word_index, self.max_question_len),
                "answer": torch.tensor(self.answer_index.get(s["answer"], -1)),
                "qtype": torch.tensor(QUESTION_TYPES.index(s["type"])),
                "position": torch.tensor(s["position"], dtype=torch.float32),
                "orientation": torch.tensor([math.cos(s["yaw"]), math.sin(s["yaw"])], dtype=torch.float32),
                "situation_text": s["situation"], "question_text": s["question"]}


def _report(bad: dict[str, list], what: dict[str, str], affected: int, on_missing: str, hint: str) -> None:
    """Raise (``on_missing=error``) or warn about the non-empty lists of ``bad`` (scene ids)."""
    parts = [f"{len(v)} {what[k]} (first: {v[:3]})" for k, v in bad.items() if v]
    if not parts:
        return
    msg = f"{'; '.join(parts)}; {affected} questions affected"
    if on_missing == "error":
        raise ValueError(f"{msg}. {hint}, or set data.on_missing=skip to drop and count their questions")
    warnings.warn("skipping: " + msg)


def drop_bad_scenes(samples: list[dict[str, Any]], scene_dir: Path, on_missing: str = "error",
                    policy: Optional[FilePolicy] = None, frame: str = "aligned"
                    ) -> tuple[list[dict[str, Any]], dict[Any, Path], dict[str, int]]:
    """Locate and read every scene file of ``frame`` (first of
    :func:`~frozenlm.data.scannet.scene_file_candidates`); unknown scene ids (no file) and empty clouds
    raise (``on_missing=error``) or are dropped with a warning and counted (``skip``); unreadable files
    follow ``policy`` (``data.on_error``: raise, or drop their questions, counted as
    ``unreadable_scene``). Returns (kept samples, files, counts)."""
    if on_missing not in ("error", "skip"):
        raise ValueError(f"data.on_missing must be 'error' or 'skip', got {on_missing!r}")
    policy = policy or FilePolicy()
    files: dict[Any, Path] = {}
    bad: dict[str, list[str]] = {"unknown_scene": [], "empty_cloud": []}
    other: list[str] = []
    unreadable: set[Any] = set()
    scene_ids = sorted({s["scene_id"] for s in samples})
    for sid in scene_ids:
        hits = [p for p in scene_file_candidates(scene_dir, sid, frame) if p.is_file()]
        if not hits:
            bad["unknown_scene"].append(sid)
            if other_frame_file(scene_dir, sid, frame) is not None:
                other.append(sid)
            continue
        points = policy.call(lambda: load_scene_points(hits[0]), f"scene {sid}")
        if points is None:
            unreadable.add(sid)
        elif points.shape[0] == 0:
            bad["empty_cloud"].append(sid)
        else:
            files[sid] = hits[0]
    policy.summary(len(scene_ids), f"SQA3D scenes in {scene_dir}")
    counts = {k: sum(s["scene_id"] in set(v) for s in samples) for k, v in bad.items()}
    export = "_aligned_vert.npy" if frame == "aligned" else "_vert.npy"
    wrong = (f"; {len(other)} of them have only the other frame's export file (first: {other[:3]}), which "
             f"data.situation_frame={frame} does not read" if other else "")
    _report(bad, {"unknown_scene": f"scene ids have no point-cloud file in {scene_dir} (expected <scene_id>{export} "
                                   f"or <scene_id>.npy/.npz/.pth for data.situation_frame={frame}{wrong})",
                  "empty_cloud": "scenes have empty point clouds"},
            sum(counts.values()), on_missing, "Provide the files")
    if policy.skip:
        counts["unreadable_scene"] = sum(s["scene_id"] in unreadable for s in samples)
    kept = [s for s in samples if s["scene_id"] in files]
    return kept, files, counts


def _scene_frame(sid: Any, points_file: Path, meta: Path, scene_dir: Path) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(axisAlignment or None, raw bounding-box centre) of one scene; DataFileError when unreadable."""
    matrix = read_axis_alignment(meta)
    raw_file = scene_dir / f"{sid}_vert.npy"
    src = raw_file if raw_file.is_file() else points_file  # SQA3D's own centre: the raw export vertices
    xyz = load_scene_points(src)[:, :3]
    if len(xyz) == 0:
        raise DataFileError(f"{src}: empty point cloud, no bounding-box centre for the situations of {sid}", src)
    if src == points_file and matrix is not None:  # aligned points: take them back to the raw frame
        return matrix, raw_centre_from_aligned(xyz, matrix)
    return matrix, bbox_centre(xyz)


def align_samples(samples: list[dict[str, Any]], files: dict[Any, Path], scene_dir: Path, meta_dir: Path,
                  on_missing: str = "error", policy: Optional[FilePolicy] = None
                  ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Samples with position and yaw moved into the axis-aligned frame as SQA3D's loader does
    (:func:`~frozenlm.data.scannet.align_situation`). A scene without ``<scene_id>.txt`` in ``meta_dir``
    raises (``on_missing=error``) naming it and the paths tried, or its questions are dropped and
    counted as ``missing_meta``; unreadable meta/centre files follow ``policy``. A meta file without an
    ``axisAlignment`` line means the identity, as in SQA3D, with a warning. Returns (samples, counts)."""
    policy = policy or FilePolicy()
    frames: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    missing: list[str] = []
    tried: dict[Any, list[Path]] = {}
    no_line: list[Any] = []
    unreadable: set[Any] = set()
    for sid in sorted(files):
        candidates = meta_file_candidates(meta_dir, sid)
        meta = next((p for p in candidates if p.is_file()), None)
        if meta is None:
            missing.append(sid)
            tried[sid] = candidates
            continue
        got = policy.call(lambda: _scene_frame(sid, files[sid], meta, scene_dir), f"scene {sid} frame")
        if got is None:
            unreadable.add(sid)
            continue
        matrix, centre = got
        if matrix is None:
            no_line.append(sid)
            matrix = np.eye(4)
        frames[sid] = (matrix, centre)
    first = f"{missing[0]}: looked for {', '.join(map(str, tried[missing[0]]))}" if missing else ""
    counts = {"missing_meta": sum(s["scene_id"] in set(missing) for s in samples)}
    what = f"scenes have no ScanNet meta file <scene_id>.txt for data.situation_frame=aligned ({first})"
    _report({"missing_meta": missing}, {"missing_meta": what}, counts["missing_meta"], on_missing,
            "Set data.meta_dir to ScanNet's scans/ folder (scans/<scene_id>/<scene_id>.txt), or data.situation_frame=raw "
            "to keep the annotated situations with raw clouds (<scene_id>_vert.npy, centred)")
    if no_line:
        warnings.warn(f"{len(no_line)} ScanNet meta files have no axisAlignment line (first: {no_line[:3]}); "
                      "their situations use the identity, as SQA3D's loader does")
    out = []
    for s in samples:
        if s["scene_id"] in frames:
            position, rot = align_situation(s["position"], s["rotation"], *frames[s["scene_id"]])
            out.append({**s, "position": position, "yaw": matrix_yaw(rot)})
    if policy.skip:
        counts["unreadable_scene"] = sum(s["scene_id"] in unreadable for s in samples)
    return out, counts


def load_samples(data_cfg: Any, split: str
                 ) -> tuple[list[dict[str, Any]], Optional[Callable[[Any], np.ndarray]], dict[str, int]]:
    """(samples, scene id -> (N, 6) points, skipped counts) of a split of ``data.name`` rooms3d (generated, or
    read from ``data.cache_dir``) or sqa3d (the release json + ``data.scene_dir``, situations in
    ``data.situation_frame``, see the module doc); no samples if the split does not exist."""
    d = dict(data_cfg)
    name = d.get("name")
    if name == "rooms3d":
        n = d.get(_ROOMS_SPLITS.get(split, ""))
        if not n:
            return [], None, {}
        pts, scenes = load_or_generate_rooms(d.get("cache_dir"), int(n), split, int(d.get("rooms_seed", 0)),
                                             int(d.get("scene_points", 1024)), int(d.get("min_objects", 3)),
                                             int(d.get("max_objects", 8)))
        return rooms_to_samples(scenes), pts.__getitem__, {}
    if name == "sqa3d":
        if not d.get("root") or not d.get("scene_dir"):
            raise ValueError("data.name=sqa3d needs data.root (SQA3D json folder) and data.scene_dir "
                             "(one <scene_id>_aligned_vert.npy or <scene_id>.npy/.npz/.pth per ScanNet scene)")
        frame = d.get("situation_frame") or "aligned"
        if frame not in SITUATION_FRAMES:
            raise ValueError(f"data.situation_frame must be one of {'|'.join(SITUATION_FRAMES)}, got {frame!r}")
        scene_dir, on_missing, policy = Path(d["scene_dir"]).expanduser(), d.get("on_missing", "error"), on_error_policy(d)
        samples = read_sqa3d_split(d["root"], split)
        samples, files, skipped = drop_bad_scenes(samples, scene_dir, on_missing, policy, frame)
        if frame == "aligned":
            meta_dir = Path(d.get("meta_dir") or scene_dir).expanduser()
            samples, more = align_samples(samples, files, scene_dir, meta_dir, on_missing, policy)
            skipped = {**skipped, **{k: v + skipped.get(k, 0) for k, v in more.items()}}
            files = {sid: files[sid] for sid in {s["scene_id"] for s in samples}}
        cache: dict[Any, np.ndarray] = {}
        max_pts = int(d.get("scene_points", 40000))

        def scene(sid: Any) -> np.ndarray:
            if sid not in cache:  # keep a fixed subset per scene in memory; questions share scenes
                arr = load_scene_points(files[sid])
                if frame == "raw":  # SQA3D's positions are relative to the raw cloud's bounding-box centre
                    arr[:, :3] -= bbox_centre(arr[:, :3]).astype(np.float32)
                if len(arr) > max_pts:
                    arr = arr[np.random.default_rng(0).choice(len(arr), max_pts, replace=False)]
                cache[sid] = arr
            return cache[sid]
        return samples, scene, skipped
    raise ValueError(f"unknown data.name {name!r} for task sqa3d; use rooms3d (offline) or sqa3d")


def vocabularies(train_samples: list[dict[str, Any]], max_answers: Optional[int] = None) -> tuple[list[str], list[str]]:
    """(words, answers) of the training samples (situations + questions; answers, at most ``max_answers``)."""
    if not train_samples:
        raise ValueError("the training split is empty: the word and answer vocabularies come from it")
    words = build_word_vocab([s["situation"] for s in train_samples] + [s["question"] for s in train_samples])
    return words, build_answer_vocab([s["answer"] for s in train_samples], max_answers)
