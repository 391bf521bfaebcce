"""ScanNet scene frames for SQA3D: scene file names, the ``axisAlignment`` meta file, and the situation
transform that SQA3D's own loader applies.

What SQA3D does (github.com/SilongYong/SQA3D, ``ScanQA/lib/sepdataset.py``, ``ScannetQADataset``):

- ``_load_data``: the point cloud is ``<scene>_aligned_vert.npy``; ``bs_center`` is the centre of the
  axis-aligned bounding box of ``<scene>_vert.npy`` xyz (the raw, unaligned vertices),
  ``(max + min) / 2``; ``axis_align_matrix`` is the 16 numbers of the ``axisAlignment = ...`` line of
  ScanNet's ``scans/<scene>/<scene>.txt``, row-major 4 x 4 (the identity when the line is absent).
- ``__getitem__``: ``position' = M @ [position + bs_center, 1]`` and ``R' = M[:3, :3] @ R(q)`` with
  ``q = (_x, _y, _z, _w)``, scalar last (scipy ``Rotation.from_quat``; ``utils/sqa_data_2_ScanQA.py``
  lists the annotation's ``rotation`` values in file order ``_x, _y, _z, _w``).

The files come from the ScanNet export that SQA3D's ScanQA README runs (ScanRefer's
``data/scannet/batch_load_scannet_data.py`` and ``load_scannet_data.py``, github.com/daveredrum/ScanRefer):
``<scene>_vert.npy`` holds the vertices of ``<scene>_vh_clean_2.ply`` as (N, 9) float32 (xyz, rgb 0..255,
vertex normals), ``<scene>_aligned_vert.npy`` the same rows with xyz through ``M``; both are cut to the
same 50,000 random rows.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import DataFileError

__all__ = ["SITUATION_FRAMES", "GENERIC_SUFFIXES", "scene_file_candidates", "other_frame_file", "is_export_file",
           "meta_file_candidates", "read_axis_alignment", "bbox_centre", "raw_centre_from_aligned", "quaternion_matrix", "matrix_yaw",
           "align_situation"]

SITUATION_FRAMES = ("aligned", "raw")
GENERIC_SUFFIXES = ("npy", "npz", "pth")
_EXPORT = {"aligned": "_aligned_vert.npy", "raw": "_vert.npy"}


def scene_file_candidates(scene_dir: Path, scene_id: str, frame: str) -> list[Path]:
    """The point-cloud files that may hold ``scene_id`` in ``frame``, first match wins: the export's
    file of that frame (``_aligned_vert.npy`` / ``_vert.npy``), then ``<scene_id>.npy/.npz/.pth``
    (read as a cloud already in that frame)."""
    if frame not in SITUATION_FRAMES:
        raise ValueError(f"data.situation_frame must be one of {'|'.join(SITUATION_FRAMES)}, got {frame!r}")
    return [scene_dir / f"{scene_id}{_EXPORT[frame]}", *(scene_dir / f"{scene_id}.{s}" for s in GENERIC_SUFFIXES)]


def other_frame_file(scene_dir: Path, scene_id: str, frame: str) -> Optional[Path]:
    """The export file of the other frame when it exists (to say why a scene was not found)."""
    other = "raw" if frame == "aligned" else "aligned"
    path = scene_dir / f"{scene_id}{_EXPORT[other]}"
    return path if path.is_file() else None


def is_export_file(path: Path) -> bool:
    """Whether ``path`` is named like an SQA3D/ScanRefer export file (colours always 0..255)."""
    return path.name.endswith(_EXPORT["raw"])  # "_aligned_vert.npy" ends with "_vert.npy" too


def meta_file_candidates(meta_dir: Path, scene_id: str) -> list[Path]:
    """Where ``<scene_id>.txt`` may be: ScanNet's ``scans/<scene>/<scene>.txt`` layout, then flat."""
    return [meta_dir / scene_id / f"{scene_id}.txt", meta_dir / f"{scene_id}.txt"]


def read_axis_alignment(path: Path) -> Optional[np.ndarray]:
    """The (4, 4) float64 ``axisAlignment`` matrix (row-major) of a ScanNet ``<scene>.txt``, or None when
    the file has no such line (SQA3D then uses the identity)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: cannot read the ScanNet meta file ({type(e).__name__}: {e})", path) from None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "axisAlignment":
            try:
                numbers = [float(x) for x in value.split()]
            except ValueError:
                numbers = []
            if len(numbers) != 16:
                raise DataFileError(f"{path}: the axisAlignment line must hold 16 numbers (a row-major 4 x 4 "
                                    f"matrix), got {value.strip()[:80]!r}", path)
            matrix = np.asarray(numbers, dtype=np.float64).reshape(4, 4)
            if abs(np.linalg.det(matrix[:3, :3])) < 1e-8:
                raise DataFileError(f"{path}: the axisAlignment rotation is singular ({value.strip()[:80]!r})", path)
            return matrix
    return None


def bbox_centre(xyz: np.ndarray) -> np.ndarray:
    """Centre of the axis-aligned bounding box of (N, 3) points, (max + min) / 2, float64."""
    xyz = np.asarray(xyz, dtype=np.float64)
    return (xyz.max(0) + xyz.min(0)) / 2


def raw_centre_from_aligned(aligned_xyz: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bounding-box centre of the raw vertices recovered from axis-aligned ones (``M^-1`` applied)."""
    pts = np.c_[np.asarray(aligned_xyz, dtype=np.float64), np.ones(len(aligned_xyz))]
    return bbox_centre((pts @ np.linalg.inv(matrix).T)[:, :3])


def quaternion_matrix(q: Sequence[float]) -> np.ndarray:
    """(3, 3) rotation of a scalar-last quaternion (x, y, z, w), normalised first."""
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n == 0.0:
        raise ValueError("a rotation quaternion has zero norm")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_yaw(rot: np.ndarray) -> float:
    """Heading of a rotation matrix: the angle of its rotated x axis about z (radians)."""
    return math.atan2(float(rot[1, 0]), float(rot[0, 0]))


def align_situation(position: Sequence[float], quaternion: Sequence[float], matrix: np.ndarray,
                    centre: np.ndarray) -> tuple[list[float], np.ndarray]:
    """SQA3D's situation transform (module docstring): (position', R') = (M [p + c, 1], M[:3, :3] R(q))."""
    p = np.append(np.asarray(position, dtype=np.float64) + centre, 1.0)
    return (matrix @ p)[:3].tolist(), matrix[:3, :3] @ quaternion_matrix(quaternion)
