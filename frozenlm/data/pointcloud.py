"""Point-cloud classification data: ScanObjectNN h5, ModelNet40 (resampled text, Point-BERT's FPS files, h5),
offline shapes.

Datasets hold every stored point of each cloud ((P, 3) float32 tensors); the per-batch sampling
(FPS to 1200 then a random 1024 for training, FPS to 1024 for testing) and the scale-and-translate
augmentation of Point-BERT run on the batch, see :func:`sample_points` and :func:`scale_and_translate`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm import tqdm

from ..ops.points import farthest_point_sample, gather_points
from .cache import cache_key, load_or_build
from .errors import DataFileError, FilePolicy, on_error_policy
from .modelnet_dat import read_modelnet_npz
from .synthetic.pointcloud import SHAPE_CLASSES, load_or_generate_shapes

__all__ = ["PointCloudDataset", "SCANOBJECTNN_CLASSES", "SCANOBJECTNN_FILES", "POINTCLOUD_DATASETS",
           "read_h5_clouds", "read_modelnet_txt", "read_modelnet_fps", "read_modelnet_h5", "read_scanobjectnn",
           "build_pointcloud_dataset", "pc_normalize", "sample_points", "scale_and_translate",
           "MODELNET_SELECTIONS", "MODELNET_FPS_SEED", "modelnet_fps_starts"]

SCANOBJECTNN_CLASSES = ("bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
                        "pillow", "sink", "sofa", "toilet")
#: variant -> (sub-folder of h5_files, train file, test file)
SCANOBJECTNN_FILES = {
    "OBJ_BG": ("main_split", "training_objectdataset.h5", "test_objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "training_objectdataset.h5", "test_objectdataset.h5"),
    "PB_T50_RS": ("main_split", "training_objectdataset_augmentedrot_scale75.h5",
                  "test_objectdataset_augmentedrot_scale75.h5"),
}
POINTCLOUD_DATASETS = ("shapes", "scanobjectnn", "modelnet40", "modelnet40_fps", "modelnet40_h5")
#: ``data.point_selection`` for ModelNet40 text: Point-BERT's ``uniform=True`` (FPS over every point of
#: the file, what the paper ran) or ``uniform=False`` (the first points of the file).
MODELNET_SELECTIONS = ("fps", "first")
#: Seed of the per-cloud FPS start points (Point-BERT draws them from the unseeded np.random).
MODELNET_FPS_SEED = 0
_FPS_BATCH = 64  # clouds per FPS call while building the cache


class PointCloudDataset(Dataset):
    """In-memory clouds: item i is (points (P, 3) float32 tensor, label int)."""

    def __init__(self, points: np.ndarray, labels: np.ndarray, classes: Sequence[str], source: str = "") -> None:
        points = np.asarray(points)
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        where = f" in {source}" if source else ""
        if points.ndim != 3 or points.shape[-1] < 3:
            raise ValueError(f"point clouds{where} must be (N, P, 3+) (xyz first), got shape {points.shape}")
        if len(points) == 0:
            raise ValueError(f"no point clouds{where}: the file/list is empty")
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} clouds but {len(labels)} labels{where}")
        bad = labels[(labels < 0) | (labels >= len(classes))]
        if len(bad):
            raise ValueError(f"label {int(bad[0])}{where} is out of range for {len(classes)} classes "
                             f"(labels must be in [0, {len(classes) - 1}]); check data.num_classes / the class list")
        self.points = torch.from_numpy(np.ascontiguousarray(points[..., :3], dtype=np.float32))
        self.labels = torch.from_numpy(labels)
        self.classes = list(classes)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.points[i], int(self.labels[i])


def pc_normalize(points: np.ndarray) -> np.ndarray:
    """Centre each cloud (..., P, 3) on its centroid and scale it into the unit sphere."""
    centred = points - points.mean(axis=-2, keepdims=True)
    radius = np.linalg.norm(centred, axis=-1).max(axis=-1, keepdims=True)[..., None]
    return centred / np.maximum(radius, 1e-12)


def read_h5_clouds(path: str | Path, data_key: str = "data", label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
    """(points (N, P, C), labels (N,)) from an h5 file with ``data``/``label`` datasets (ScanObjectNN, ModelNet h5)."""
    import h5py
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"point-cloud h5 file not found: {p}")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise DataFileError(f"{p} is not a readable HDF5 file ({e})", p) from None
    with f:
        missing = [k for k in (data_key, label_key) if k not in f]
        if missing:
            raise KeyError(f"{p} has no dataset(s) {missing}; it has {sorted(f.keys())} "
                           f"(expected '{data_key}' (N, P, 3) and '{label_key}' (N,))")
        data, labels = np.asarray(f[data_key]), np.asarray(f[label_key]).reshape(-1)
    if data.ndim != 3 or data.shape[-1] < 3:
        raise ValueError(f"{p}: dataset '{data_key}' must be (N, P, 3+) points, got shape {data.shape}")
    if len(data) == 0:
        raise ValueError(f"{p}: dataset '{data_key}' is empty")
    return data, labels


def read_scanobjectnn(root: str | Path, variant: str, split: str) -> PointCloudDataset:
    """ScanObjectNN (OBJ_BG, OBJ_ONLY, PB_T50_RS) from ``root`` = the ``h5_files`` folder (or the
    split folder itself, e.g. ``.../main_split``); 2048 points per cloud, 15 classes."""
    if variant not in SCANOBJECTNN_FILES:
        raise ValueError(f"data.variant must be one of {sorted(SCANOBJECTNN_FILES)} for ScanObjectNN, got {variant!r}")
    sub, train_file, test_file = SCANOBJECTNN_FILES[variant]
    name = train_file if split == "train" else test_file
    root = Path(root).expanduser()
    candidates = [root / sub / name, root / name, root / "h5_files" / sub / name]
    path = next((c for c in candidates if c.exists()), None)
    if path is None:
        raise FileNotFoundError(f"ScanObjectNN {variant} {split}: none of {[str(c) for c in candidates]} exists; "
                                "set data.root to the h5_files folder of ScanObjectNN")
    data, labels = read_h5_clouds(path)
    return PointCloudDataset(data, labels, SCANOBJECTNN_CLASSES, source=str(path))


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"ModelNet40 list file not found: {path}")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _first(root: Path, names: Sequence[str]) -> Path:
    return next((root / n for n in names if (root / n).exists()), root / names[0])


def _read_modelnet_file(f: Path, num_points: Optional[int]) -> np.ndarray:
    """xyz of one text file: the first ``num_points`` points, or every point (None)."""
    if f.stat().st_size == 0:
        raise DataFileError(f"{f} is empty", f)
    try:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as e:
        raise DataFileError(f"{f}: not a ModelNet text file of 'x,y,z[,nx,ny,nz]' lines ({e})", f) from None
    if arr.shape[1] < 3:
        raise DataFileError(f"{f}: expected lines 'x,y,z[,nx,ny,nz]', got {arr.shape[1]} values per line", f)
    if num_points is not None and arr.shape[0] < num_points:
        raise DataFileError(f"{f} has {arr.shape[0]} points, fewer than data.num_points={num_points}", f)
    return np.ascontiguousarray(arr[:num_points, :3])


def modelnet_fps_starts(positions: Sequence[int], sizes: Sequence[int], seed: int = MODELNET_FPS_SEED) -> list[int]:
    """FPS start index of the files at list ``positions`` with ``sizes`` points: uniform in [0, size),
    as Point-BERT's ``np.random.randint(0, N)``, but drawn from ``default_rng([seed, position])``, so
    the cache is reproducible and one file's start does not depend on any other file."""
    return [int(np.random.default_rng([seed, int(i)]).integers(n)) for i, n in zip(positions, sizes)]


def _fps_select(clouds: list[np.ndarray], starts: list[int], num_points: int,
                device: Optional[torch.device] = None) -> list[np.ndarray]:
    """Point-BERT's ``farthest_point_sample`` (squared distance on xyz, given start, ties to the lowest
    index) of each cloud down to ``num_points``, in selection order; equal-size clouds share a call.
    ``device``: where FPS runs (default: the current GPU if there is one, else the CPU)."""
    out: list[Optional[np.ndarray]] = [None] * len(clouds)
    by_size: dict[int, list[int]] = {}
    for i, c in enumerate(clouds):
        if c.shape[0] < num_points:
            raise ValueError(f"cloud {i} has {c.shape[0]} points, fewer than data.file_points={num_points}")
        by_size.setdefault(c.shape[0], []).append(i)
    # A GPU, when there is one, builds the cache much sooner (the CPU needs ~0.45 s per cloud). It
    # should pick the same points: each step is one correctly rounded float32 sub, mul or add per
    # element (separate kernels, nothing to fuse into an FMA) and an argmax whose ties go to the
    # lowest index on both. benchmarks/modelnet_fps.py checks this; it has not yet run on a GPU.
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    for members in by_size.values():
        xyz = torch.from_numpy(np.stack([clouds[i] for i in members])).to(device)
        idx = farthest_point_sample(xyz, num_points, start=torch.tensor([starts[i] for i in members], device=device))
        for j, i in enumerate(members):
            out[i] = clouds[i][idx[j].cpu().numpy()]
    return out  # type: ignore[return-value]


def read_modelnet_txt(root: str | Path, split: str, num_points: int = 8192, num_classes: int = 40,
                      cache: bool = True, progress: bool = True, policy: Optional[FilePolicy] = None,
                      cache_dir: Optional[str | Path] = None, selection: str = "fps") -> PointCloudDataset:
    """ModelNet40 'modelnet40_normal_resampled': ``<class>/<class>_NNNN.txt`` lines ``x,y,z,nx,ny,nz``,
    listed by ``modelnet40_{train,test}.txt`` with names in ``modelnet40_shape_names.txt``.

    ``selection`` picks ``num_points`` of each file's points as Point-BERT's ``ModelNetDataset`` does
    (lulutang0608/Point-BERT, datasets/ModelNetDataset.py): ``"fps"`` (its ``uniform=True``, what the
    paper ran) runs farthest-point sampling over every point of the file (see
    :func:`modelnet_fps_starts` for the start point); ``"first"`` (``uniform=False``) keeps the first
    ones. The selected xyz are then normalised to the unit sphere (Point-BERT's ``pc_normalize``).
    ``policy``: unreadable files raise, or are skipped with their labels. The result is cached as
    .npz (no pickle) in ``cache_dir`` (default: next to the data), keyed on the list files, every
    listed file (name, size, mtime) and the settings (``num_points``, ``selection``, the FPS seed)."""
    if selection not in MODELNET_SELECTIONS:
        raise ValueError(f"data.point_selection must be one of {'|'.join(MODELNET_SELECTIONS)}, got {selection!r}")
    root = Path(root).expanduser()
    policy = policy or FilePolicy()
    names_file = _first(root, [f"modelnet{num_classes}_shape_names.txt", "shape_names.txt"])
    names = _read_lines(names_file)
    lst = root / f"modelnet{num_classes}_{'train' if split == 'train' else 'test'}.txt"
    index = {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for sid in _read_lines(lst):
        cls = sid.rsplit("_", 1)[0]
        if cls not in index:
            raise ValueError(f"{lst}: shape {sid!r} has class {cls!r}, which is not in the shape-names file")
        f = root / cls / f"{sid}.txt"
        if not f.exists():
            raise FileNotFoundError(f"ModelNet file {f} listed in {lst} does not exist")
        files.append(f)
        labels.append(index[cls])
    what = f"ModelNet{num_classes} {split}"
    fps = selection == "fps"

    def build() -> tuple[np.ndarray, np.ndarray, list[str]]:
        clouds, kept = [], []
        # FPS needs every point of a file; it runs in chunks so only a chunk of full clouds is held at once.
        step = _FPS_BATCH if fps else len(files)
        desc = f"reading {what}" + (f" + FPS to {num_points} points" if fps else "")
        bar = tqdm(total=len(files), desc=desc, disable=not progress, leave=False)
        for lo in range(0, len(files), step):
            chunk, chunk_pos, chunk_lab = [], [], []
            for i in range(lo, min(lo + step, len(files))):
                arr = policy.call(lambda: _read_modelnet_file(files[i], None if fps else num_points),
                                  f"label {labels[i]}")
                bar.update(1)
                if arr is None:
                    continue
                if fps and arr.shape[0] < num_points:
                    policy.handle(DataFileError(f"{files[i]} has {arr.shape[0]} points, fewer than "
                                                f"data.file_points={num_points}", files[i]), f"label {labels[i]}")
                    continue
                chunk.append(arr)
                chunk_pos.append(i)
                chunk_lab.append(labels[i])
            if fps and chunk:
                chunk = _fps_select(chunk, modelnet_fps_starts(chunk_pos, [len(c) for c in chunk]), num_points)
            clouds.extend(chunk)
            kept.extend(chunk_lab)
        bar.close()
        policy.summary(len(files), what)
        if not clouds:
            raise ValueError(f"{lst}: none of its {len(files)} files could be read")
        return pc_normalize(np.stack(clouds)).astype(np.float32), np.asarray(kept, dtype=np.int64), policy.skipped

    def save(obj: tuple[np.ndarray, np.ndarray, list[str]], tmp: Path) -> None:
        np.savez(tmp, data=obj[0], label=obj[1], skipped=np.array(json.dumps(obj[2])))

    def load(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
        with np.load(path, allow_pickle=False) as f:
            return f["data"], f["label"], json.loads(str(f["skipped"]))

    if not cache:
        data, lab, _ = build()
        return PointCloudDataset(data, lab, names, source=str(lst))
    settings = {"what": "modelnet_txt", "version": 2, "split": lst.name, "num_points": int(num_points),
                "num_classes": int(num_classes), "on_error": policy.mode}
    if fps:  # "first" keeps its former key, so caches built before the FPS option stay valid
        settings.update(version=3, selection="fps", fps="point-bert", fps_seed=MODELNET_FPS_SEED)
    key = cache_key(settings, [names_file, lst, *files], root)
    tag = "_fps" if fps else ""
    path = Path(cache_dir or root).expanduser() / f"{lst.stem}_{num_points}pts{tag}_{key}.npz"
    data, lab, skipped = load_or_build(path, build, save, load)
    if skipped and not policy.skipped:  # read from the cache: repeat what was skipped when it was built
        policy.skipped = list(skipped)
        policy.summary(len(files), f"{what} (cached in {path.name})")
    return PointCloudDataset(data, lab, names, source=str(lst))


def read_modelnet_fps(root: str | Path, split: str, num_points: int = 8192, num_classes: int = 40
                      ) -> PointCloudDataset:
    """Point-BERT's own FPS selection: ``root/modelnet40_{train,test}_<num_points>pts_fps.npz``, written
    from its ``.dat`` by ``frozenlm convert-modelnet`` (see :mod:`frozenlm.data.modelnet_dat`); each
    cloud is normalised to the unit sphere as Point-BERT's ``_get_item`` does."""
    name = f"modelnet{num_classes}_{'train' if split == 'train' else 'test'}_{num_points}pts_fps.npz"
    path = Path(root).expanduser() / name
    if not path.is_file():
        dat = path.with_suffix(".dat")
        hint = (f"convert it first: frozenlm convert-modelnet {dat} {path}" if dat.is_file() else
                f"convert Point-BERT's {dat.name} with `frozenlm convert-modelnet {dat.name} {name}`")
        raise FileNotFoundError(f"{path} not found; {hint}")
    data, labels, classes = read_modelnet_npz(path)
    if len(classes) != num_classes:
        raise ValueError(f"{path} has {len(classes)} classes, data.num_classes is {num_classes}")
    return PointCloudDataset(pc_normalize(data[..., :3]).astype(np.float32), labels, classes, source=str(path))


def read_modelnet_h5(root: str | Path, split: str, num_points: Optional[int] = None,
                     policy: Optional[FilePolicy] = None) -> PointCloudDataset:
    """ModelNet40 'modelnet40_ply_hdf5_2048': ``ply_data_{train,test}*.h5`` (data (N, 2048, 3), label
    (N, 1)) and ``shape_names.txt``. ``policy``: an unreadable h5 file raises, or is skipped."""
    root = Path(root).expanduser()
    policy = policy or FilePolicy()
    files = sorted(root.glob(f"ply_data_{'train' if split == 'train' else 'test'}*.h5"))
    if not files:
        raise FileNotFoundError(f"no ply_data_{split}*.h5 files in {root}; set data.root to modelnet40_ply_hdf5_2048")
    names = _read_lines(_first(root, ["shape_names.txt", "modelnet40_shape_names.txt"]))
    parts = [p for p in (policy.call(lambda: read_h5_clouds(f)) for f in files) if p is not None]
    policy.summary(len(files), f"ModelNet40 h5 {split}")
    if not parts:
        raise ValueError(f"none of the {len(files)} ply_data_{split}*.h5 files in {root} could be read")
    data = np.concatenate([d for d, _ in parts])
    if num_points is not None:
        if data.shape[1] < num_points:
            raise ValueError(f"{root}: clouds have {data.shape[1]} points, fewer than data.num_points={num_points}")
        data = data[:, :num_points]
    return PointCloudDataset(data, np.concatenate([lab for _, lab in parts]), names, source=str(root))


def build_pointcloud_dataset(data_cfg: Mapping[str, Any], split: str) -> PointCloudDataset:
    """Dataset named by ``data.name`` (one of POINTCLOUD_DATASETS) for ``split`` ("train" or "val"/"test")."""
    name = data_cfg.get("name")
    root = data_cfg.get("root")
    if name == "shapes":
        n = data_cfg.get("train_per_class" if split == "train" else "test_per_class")
        opts = dict(data_cfg.get("shapes") or {})
        pts, lab = load_or_generate_shapes(data_cfg.get("cache_dir"), int(n), split, int(data_cfg.get("shapes_seed", 0)),
                                           int(data_cfg.get("num_classes") or len(SHAPE_CLASSES)), **opts)
        k = int(data_cfg.get("num_classes") or len(SHAPE_CLASSES))
        return PointCloudDataset(pts, lab, SHAPE_CLASSES[:k], source="generated shapes")
    if name not in POINTCLOUD_DATASETS:
        raise ValueError(f"data.name must be one of {POINTCLOUD_DATASETS}, got {name!r}")
    if not root:
        raise ValueError(f"data.root must point at the {name} files (nothing is downloaded)")
    if name == "scanobjectnn":
        return read_scanobjectnn(root, str(data_cfg.get("variant", "PB_T50_RS")), split)
    if name == "modelnet40":
        # fps unless the config says otherwise: what Point-BERT and the paper ran
        return read_modelnet_txt(root, split, int(data_cfg.get("file_points") or 8192),
                                 policy=on_error_policy(data_cfg), cache_dir=data_cfg.get("cache_dir"),
                                 selection=str(data_cfg.get("point_selection") or "fps"))
    if name == "modelnet40_fps":
        return read_modelnet_fps(root, split, int(data_cfg.get("file_points") or 8192),
                                 int(data_cfg.get("num_classes") or 40))
    return read_modelnet_h5(root, split, policy=on_error_policy(data_cfg))


def sample_points(points: Tensor, n: int, fps_points: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """Point-BERT's batch sampling: FPS to ``fps_points`` then a random ``n`` of them (training), or
    FPS to ``n`` (``fps_points`` None: testing). points (B, P, 3) -> (B, n, 3)."""
    p = points.shape[1]
    if n > p:
        raise ValueError(f"cannot sample {n} points from clouds of {p}; lower data.num_points")
    if fps_points is None:
        return gather_points(points, farthest_point_sample(points, n)) if n < p else points
    m = min(int(fps_points), p)
    if m < n:
        raise ValueError(f"data.train_fps_points ({fps_points}) must be >= data.num_points ({n})")
    idx = farthest_point_sample(points, m) if m < p else torch.arange(p, device=points.device).expand(len(points), p)
    # one random subset shared by the batch, as Point-BERT's fine-tuning loop does
    pick = torch.randperm(m, generator=generator)[:n].to(points.device)
    return gather_points(points, idx[:, pick])


def scale_and_translate(points: Tensor, scale: tuple[float, float] = (2.0 / 3.0, 1.5),
                        shift: float = 0.2, generator: Optional[torch.Generator] = None) -> Tensor:
    """Point-BERT's PointcloudScaleAndTranslate: per cloud, xyz * U(scale) per axis + U(-shift, shift) per axis."""
    b = points.shape[0]
    s = torch.empty(b, 1, 3).uniform_(scale[0], scale[1], generator=generator).to(points)
    t = torch.empty(b, 1, 3).uniform_(-shift, shift, generator=generator).to(points)
    return points * s + t
