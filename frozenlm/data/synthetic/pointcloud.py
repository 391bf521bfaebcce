"""Offline "shapes" point clouds: procedural trimesh objects scanned the way ScanObjectNN's hard split is.

Thirteen classes of primitive and composite meshes with random part proportions. Each sample gets a
random rotation (full turn about the up axis, a small tilt), anisotropic scale, a partial
cut-away (as a single-view scan), background clutter (floor patch and stray blobs), Gaussian noise,
and is normalised to the unit sphere. Sample i of a split depends only on (seed, split, i), so a
dataset is identical across runs and machines; it can be cached to an .npz file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from tqdm import tqdm

from ..cache import cache_key, load_or_build

__all__ = ["SHAPE_CLASSES", "ShapeConfig", "generate_shapes", "make_shape_cloud", "load_or_generate_shapes"]

_SPLIT_ID = {"train": 0, "val": 1, "test": 1}
_VERSION = 1  # bump when the generator changes, so stale caches are not reused


def _tm() -> Any:
    import trimesh
    return trimesh


def _move(mesh: Any, xyz: tuple[float, float, float]) -> Any:
    mesh.apply_translation(xyz)
    return mesh


def _concat(parts: list[Any]) -> Any:
    return _tm().util.concatenate(parts)


def _box(r: np.random.Generator) -> Any:
    return _tm().creation.box(extents=r.uniform(0.8, 1.2, 3))


def _sphere(r: np.random.Generator) -> Any:
    return _tm().creation.icosphere(subdivisions=2, radius=1.0)


def _cylinder(r: np.random.Generator) -> Any:
    return _tm().creation.cylinder(radius=r.uniform(0.4, 0.6), height=r.uniform(1.6, 2.2), sections=24)


def _cone(r: np.random.Generator) -> Any:
    return _tm().creation.cone(radius=r.uniform(0.6, 0.9), height=r.uniform(1.4, 2.0), sections=24)


def _torus(r: np.random.Generator) -> Any:
    return _tm().creation.torus(major_radius=1.0, minor_radius=r.uniform(0.2, 0.35), major_sections=32,
                                minor_sections=12)


def _capsule(r: np.random.Generator) -> Any:
    return _tm().creation.capsule(height=r.uniform(1.4, 2.0), radius=r.uniform(0.35, 0.5), count=[16, 16])


def _legs(r: np.random.Generator, w: float, d: float, h: float, t: float) -> list[Any]:
    c = _tm().creation
    return [_move(c.box(extents=(t, t, h)), (sx * (w / 2 - t), sy * (d / 2 - t), h / 2))
            for sx in (-1, 1) for sy in (-1, 1)]


def _table(r: np.random.Generator) -> Any:
    w, d, h = r.uniform(1.6, 2.2), r.uniform(0.9, 1.3), r.uniform(0.8, 1.1)
    top = _move(_tm().creation.box(extents=(w, d, 0.08)), (0, 0, h + 0.04))
    return _concat([top, *_legs(r, w, d, h, 0.08)])


def _chair(r: np.random.Generator) -> Any:
    w, h, back = r.uniform(0.8, 1.0), r.uniform(0.7, 0.9), r.uniform(0.8, 1.1)
    c = _tm().creation
    seat = _move(c.box(extents=(w, w, 0.08)), (0, 0, h + 0.04))
    rest = _move(c.box(extents=(w, 0.08, back)), (0, -w / 2 + 0.04, h + 0.08 + back / 2))
    return _concat([seat, rest, *_legs(r, w, w, h, 0.07)])


def _mug(r: np.random.Generator) -> Any:
    c = _tm().creation
    rad, h = r.uniform(0.45, 0.6), r.uniform(1.0, 1.4)
    body = c.annulus(r_min=rad - 0.06, r_max=rad, height=h, sections=24)
    handle = c.torus(major_radius=h / 4, minor_radius=0.06, major_sections=16, minor_sections=8)
    handle.apply_transform(_tm().transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    return _concat([body, _move(handle, (rad + h / 8, 0, 0))])


def _dumbbell(r: np.random.Generator) -> Any:
    c = _tm().creation
    length, rad = r.uniform(1.6, 2.2), r.uniform(0.35, 0.5)
    bar = c.cylinder(radius=0.08, height=length, sections=12)
    ends = [_move(c.icosphere(subdivisions=2, radius=rad), (0, 0, s * length / 2)) for s in (-1, 1)]
    return _concat([bar, *ends])


def _arrow(r: np.random.Generator) -> Any:
    c = _tm().creation
    shaft, head = r.uniform(1.2, 1.6), r.uniform(0.5, 0.8)
    return _concat([_move(c.cylinder(radius=0.1, height=shaft, sections=12), (0, 0, shaft / 2)),
                    _move(c.cone(radius=r.uniform(0.3, 0.45), height=head, sections=16), (0, 0, shaft))])


def _cross(r: np.random.Generator) -> Any:
    c = _tm().creation
    a, t = r.uniform(1.6, 2.2), r.uniform(0.25, 0.4)
    return _concat([c.box(extents=(a, t, t)), c.box(extents=(t, a, t)), c.box(extents=(t, t, a))])


def _lamp(r: np.random.Generator) -> Any:
    c = _tm().creation
    pole = r.uniform(1.2, 1.6)
    base = c.cylinder(radius=r.uniform(0.4, 0.55), height=0.08, sections=24)
    stick = _move(c.cylinder(radius=0.05, height=pole, sections=10), (0, 0, pole / 2))
    shade = _move(c.annulus(r_min=0.25, r_max=0.3, height=0.4, sections=20), (0, 0, pole))
    return _concat([base, stick, shade])


SHAPE_BUILDERS: dict[str, Callable[[np.random.Generator], Any]] = {
    "box": _box, "sphere": _sphere, "cylinder": _cylinder, "cone": _cone, "torus": _torus, "capsule": _capsule,
    "table": _table, "chair": _chair, "mug": _mug, "dumbbell": _dumbbell, "arrow": _arrow, "lamp": _lamp,
    "cross": _cross,
}
#: Class names in label order.
SHAPE_CLASSES: tuple[str, ...] = tuple(SHAPE_BUILDERS)


class ShapeConfig(dict):
    """Nuisance settings (all optional): num_points, scale (min, max per axis), tilt_deg, noise
    (std), cut_prob, cut_keep (min, max fraction kept), clutter (max fraction of points)."""

    DEFAULTS: dict[str, Any] = dict(num_points=1024, scale=(0.7, 1.3), tilt_deg=15.0, noise=0.01, cut_prob=0.5,
                                    cut_keep=(0.7, 0.9), clutter=0.2)

    def __init__(self, **kw: Any) -> None:
        unknown = set(kw) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown shapes option(s) {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **{k: v for k, v in kw.items() if v is not None}})


def _rotation(r: np.random.Generator, tilt_deg: float) -> np.ndarray:
    tf = _tm().transformations
    yaw = tf.rotation_matrix(r.uniform(0, 2 * np.pi), (0, 0, 1))
    axis = np.array([*r.normal(size=2), 0.0])
    tilt = tf.rotation_matrix(np.deg2rad(r.uniform(-tilt_deg, tilt_deg)), axis / (np.linalg.norm(axis) + 1e-12))
    return (tilt @ yaw)[:3, :3]


def make_shape_cloud(label: int, rng: np.random.Generator, cfg: Optional[ShapeConfig] = None) -> np.ndarray:
    """One (num_points, 3) float32 cloud of class ``label`` with every nuisance applied."""
    cfg = cfg or ShapeConfig()
    n = int(cfg["num_points"])
    mesh = SHAPE_BUILDERS[SHAPE_CLASSES[label]](rng)
    mesh.apply_translation(-mesh.bounding_box.centroid)
    pts, _ = _tm().sample.sample_surface(mesh, 2 * n, seed=rng)
    pts = pts @ _rotation(rng, float(cfg["tilt_deg"])).T
    pts = pts * rng.uniform(*cfg["scale"], size=3)
    if rng.random() < float(cfg["cut_prob"]):  # a single-view scan misses one side of the object
        u = rng.normal(size=3)
        proj = pts @ (u / np.linalg.norm(u))
        pts = pts[proj <= np.quantile(proj, rng.uniform(*cfg["cut_keep"]))]
    n_clutter = int(rng.uniform(0, float(cfg["clutter"])) * n)
    obj = pts[rng.choice(len(pts), n - n_clutter, replace=len(pts) < n - n_clutter)]
    lo, hi = obj.min(0), obj.max(0)
    n_floor = n_clutter // 2
    floor = np.column_stack([rng.uniform(lo[0] - 0.3, hi[0] + 0.3, n_floor),
                             rng.uniform(lo[1] - 0.3, hi[1] + 0.3, n_floor),
                             np.full(n_floor, lo[2]) + rng.normal(0, 0.02, n_floor)])
    n_blob = n_clutter - n_floor
    blob_c = rng.uniform(lo - 0.4, hi + 0.4, size=(3, 3))
    blobs = blob_c[rng.integers(0, 3, n_blob)] + rng.normal(0, 0.08, (n_blob, 3))
    cloud = np.concatenate([obj, floor, blobs]) + rng.normal(0, float(cfg["noise"]), (n, 3))
    cloud = cloud - cloud.mean(0)
    cloud = cloud / np.linalg.norm(cloud, axis=1).max()
    return cloud[rng.permutation(n)].astype(np.float32)


def generate_shapes(n_per_class: int, split: str = "train", seed: int = 0, num_classes: int = len(SHAPE_CLASSES),
                    progress: bool = True, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, P, 3) float32, labels (N,) int64), N = n_per_class * num_classes, class-interleaved.
    Sample i is drawn from ``np.random.default_rng([seed, split_id, i])``: deterministic per seed."""
    if split not in _SPLIT_ID:
        raise ValueError(f"shapes split must be one of {sorted(_SPLIT_ID)}, got {split!r}")
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"shapes num_classes must be in [1, {len(SHAPE_CLASSES)}], got {num_classes}")
    cfg = ShapeConfig(**options)
    total = n_per_class * num_classes
    labels = np.arange(total, dtype=np.int64) % num_classes
    clouds = np.empty((total, int(cfg["num_points"]), 3), dtype=np.float32)
    for i in tqdm(range(total), desc=f"generating shapes/{split}", disable=not progress, leave=False):
        clouds[i] = make_shape_cloud(int(labels[i]), np.random.default_rng([seed, _SPLIT_ID[split], i]), cfg)
    return clouds, labels


def load_or_generate_shapes(cache_dir: Optional[str | Path], n_per_class: int, split: str = "train", seed: int = 0,
                            num_classes: int = len(SHAPE_CLASSES), progress: bool = True,
                            **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate_shapes`, cached as ``cache_dir/shapes_<split>_<hash>.npz`` (no pickle) when
    ``cache_dir`` is given, through :func:`frozenlm.data.cache.load_or_build` (atomic; one builder
    per node under torch.distributed); the hash covers every argument and the generator version."""
    if cache_dir is None:
        return generate_shapes(n_per_class, split, seed, num_classes, progress, **options)
    key = cache_key({"what": "shapes", "v": _VERSION, "n": n_per_class, "seed": seed, "classes": num_classes,
                     "split": "test" if split == "val" else split,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in ShapeConfig(**options).items()}})
    path = Path(cache_dir).expanduser() / f"shapes_{split}_{key}.npz"

    def load(p: Path) -> tuple[np.ndarray, np.ndarray]:
        with np.load(p, allow_pickle=False) as f:
            return f["data"], f["label"]

    return load_or_build(path, lambda: generate_shapes(n_per_class, split, seed, num_classes, progress, **options),
                         lambda obj, tmp: np.savez(tmp, data=obj[0], label=obj[1]), load)
