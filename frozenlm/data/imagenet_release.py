"""Labels of the ImageNet-1k (ILSVRC2012) validation images as the release ships them.

The validation images come as one flat set, ``ILSVRC2012_val_00000001.JPEG`` ... ``_00050000.JPEG``
(``ILSVRC2012_img_val.tar``, or Kaggle's ``ILSVRC/Data/CLS-LOC/val/``); their classes are in one of

* the devkit ``ILSVRC2012_devkit_t12`` (folder or ``.tar.gz``): ``data/ILSVRC2012_validation_ground_truth.txt``
  holds one 1-based ``ILSVRC2012_ID`` per image, line i for image i, and ``data/meta.mat`` maps
  each ID to its wnid (struct array ``synsets``; the 1000 classes are the entries with
  ``num_children == 0``). This is the parse of torchvision's ``datasets/imagenet.py``
  (``parse_meta_mat``, ``parse_val_groundtruth_txt``), read here by field name;
* Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString`` rows whose prediction string is
  ``"wnid x_min y_min x_max y_max"`` repeated once per box.

The class *index* of a wnid is never its ILSVRC2012_ID: it is the wnid's position in the sorted
wnid list, as torchvision's and timm's ``ImageFolder`` give the training folders, so that train
and validation labels agree.
"""
from __future__ import annotations

import csv
import io
import re
import tarfile
from pathlib import Path
from typing import IO

from ..errors import DataFileError

__all__ = ["WNID", "VAL_IMAGE", "is_wnid", "read_val_labels", "read_devkit_labels", "read_loc_val_solution"]

WNID = re.compile(r"^n\d{8}$")
VAL_IMAGE = re.compile(r"^ILSVRC2012_val_(\d{8})$")
_GT = "data/ILSVRC2012_validation_ground_truth.txt"
_META = "data/meta.mat"


def is_wnid(name: str) -> bool:
    """True for a WordNet id such as ``n01440764``."""
    return bool(WNID.match(name))


def _leaf_wnids(meta: IO[bytes] | Path, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the classes (synsets without children) in a devkit ``meta.mat``."""
    try:
        import scipy.io
    except ImportError:
        raise ImportError("reading the ImageNet devkit's meta.mat needs scipy (pip install scipy), or label the "
                          "validation images with Kaggle's LOC_val_solution.csv instead") from None
    try:
        synsets = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise DataFileError(f"{where}: not the devkit's meta.mat with a 'synsets' struct ({type(e).__name__}: {e})",
                            where) from None
    fields = synsets.dtype.names or ()
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "num_children") if f not in fields]
    if missing:
        raise DataFileError(f"{where}: 'synsets' lacks the field(s) {missing} (has {list(fields)})", where)
    out: dict[int, str] = {}
    for ident, wnid, kids in zip(synsets["ILSVRC2012_ID"].reshape(-1), synsets["WNID"].reshape(-1),
                                 synsets["num_children"].reshape(-1)):
        if int(kids) == 0:
            if not is_wnid(str(wnid)) or int(ident) in out:
                raise DataFileError(f"{where}: bad or repeated leaf synset ILSVRC2012_ID={ident} WNID={wnid!r}",
                                    where)
            out[int(ident)] = str(wnid)
    if not out:
        raise DataFileError(f"{where}: no synset has num_children == 0 (no classes)", where)
    return out


def _devkit_parts(path: Path) -> tuple[IO[bytes] | Path, str, str, str]:
    """(meta.mat as file or path, its name for messages, ground-truth text, its name)."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        found: dict[str, bytes] = {}
        with tarfile.open(path) as tf:
            for m in tf:
                for want in (_META, _GT):
                    if m.isfile() and (m.name == want or m.name.endswith("/" + want)):
                        f = tf.extractfile(m)
                        found[want] = f.read() if f is not None else b""
        lost = [w for w in (_META, _GT) if w not in found]
        if lost:
            raise DataFileError(f"{path}: the devkit archive has no {lost} (expected ILSVRC2012_devkit_t12/{_GT} "
                                f"and .../{_META})", path)
        return io.BytesIO(found[_META]), f"{path}:{_META}", found[_GT].decode(), f"{path}:{_GT}"
    if path.is_file():  # the ground-truth text itself, meta.mat beside it (the devkit's data/ folder)
        gt, meta = path, path.parent / "meta.mat"
    else:
        base = path / "data" if (path / "data").is_dir() else path
        gt, meta = base / Path(_GT).name, base / "meta.mat"
    for f in (gt, meta):
        if not f.is_file():
            raise FileNotFoundError(f"ImageNet devkit file {f} not found; data.val_labels must name the "
                                    "ILSVRC2012_devkit_t12 folder or .tar.gz, its data/ folder, or LOC_val_solution.csv")
    return meta, str(meta), gt.read_text(), str(gt)


def read_devkit_labels(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """({"ILSVRC2012_val_00000001": wnid, ...}, sorted class wnids) from the ImageNet devkit."""
    meta, meta_name, gt_text, gt_name = _devkit_parts(Path(path).expanduser())
    id_to_wnid = _leaf_wnids(meta, meta_name)
    labels: dict[str, str] = {}
    for n, line in enumerate(gt_text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            labels[f"ILSVRC2012_val_{n:08d}"] = id_to_wnid[int(line)]
        except (ValueError, KeyError):
            raise DataFileError(f"{gt_name}, line {n}: {line.strip()!r} is not an ILSVRC2012_ID of {meta_name} "
                                f"(1..{len(id_to_wnid)})", gt_name) from None
    if not labels:
        raise DataFileError(f"{gt_name} is empty", gt_name)
    return labels, sorted(id_to_wnid.values())


def read_loc_val_solution(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """({"ILSVRC2012_val_00008726": wnid, ...}, sorted wnids named) from Kaggle's ``LOC_val_solution.csv``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"LOC_val_solution.csv not found: {path}")
    labels: dict[str, str] = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataFileError(f"{path}: expected the header 'ImageId,PredictionString', got {header}", path)
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            wnids = set(tokens[::5])
            if len(tokens) % 5 or len(wnids) != 1 or not is_wnid(tokens[0]):
                raise DataFileError(f"{path}, line {n}: PredictionString {row[1:2]} is not 'wnid x y x y' boxes "
                                    "of one class", path)
            labels[row[0].strip()] = tokens[0]
    if not labels:
        raise DataFileError(f"{path} has no rows", path)
    return labels, sorted(set(labels.values()))


def read_val_labels(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """Validation labels from ``data.val_labels``: a ``.csv`` is Kaggle's ``LOC_val_solution.csv``;
    anything else the devkit (folder, ``data/`` folder, ground-truth ``.txt`` or ``.tar.gz``).
    Returns (image stem -> wnid, the sorted wnids of every class the file knows)."""
    p = Path(path).expanduser()
    if p.suffix.lower() == ".csv":
        return read_loc_val_solution(p)
    if not p.exists():
        raise FileNotFoundError(f"data.val_labels {p} does not exist; name the ILSVRC2012_devkit_t12 folder or "
                                ".tar.gz, or Kaggle's LOC_val_solution.csv")
    return read_devkit_labels(p)
