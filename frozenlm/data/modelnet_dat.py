"""Point-BERT's ModelNet40 ``.dat`` files, read without running their pickle, and our safe ``.npz`` form.

Point-BERT (lulutang0608/Point-BERT, ``datasets/ModelNetDataset.py``; the paper's point-cloud code is
a fork of it) distributes ``modelnet40_{train,test}_8192pts_fps.dat``: ``pickle.dump([list_of_points,
list_of_labels])`` where each point entry is a float32 ``(8192, 6)`` array (x, y, z, nx, ny, nz, the
FPS selection of one ``modelnet40_normal_resampled`` file, not normalised) and each label an int32
``(1,)`` array. :class:`RestrictedUnpickler` rebuilds exactly that: numpy's array reconstruction is
the only callable it resolves (plus latin1 text-to-bytes for protocol 2), so a file that names any other global (``os.system``, ``eval``, ...)
is refused before anything in it runs. :func:`convert_modelnet_dat` writes the result as an ``.npz``
(no pickle) that :func:`read_modelnet_npz` (``data.name: modelnet40_fps``) loads.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import DataFileError
from .cache import atomic_write

__all__ = ["MODELNET40_CLASSES", "RestrictedUnpickler", "ForbiddenGlobalError", "load_modelnet_dat",
           "convert_modelnet_dat", "read_modelnet_npz", "NPZ_FORMAT"]

#: ``modelnet40_shape_names.txt`` of modelnet40_normal_resampled, in label order (alphabetical).
MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup",
    "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop",
    "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa",
    "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox")
#: Written into every converted file, checked when it is read.
NPZ_FORMAT = "frozenlm-modelnet-v1"

# numpy pickles an array as _reconstruct(ndarray, (0,), b"b") + ndarray.__setstate__ (protocols 0-4)
# or as _frombuffer(buffer, dtype, shape, order) (protocol 5), and its dtype as dtype(...) +
# dtype.__setstate__; numpy 1.x names the functions under numpy.core, numpy 2.x under numpy._core.
# The functions are taken from numpy's own reduce, so no deprecated numpy.core shim is imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """Protocol 2 stores bytes as ``_codecs.encode(text, "latin1")``; no other codec is accepted."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode is allowed for latin1 text only, got {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class ForbiddenGlobalError(DataFileError):
    """A pickle names a global outside the allow-list; nothing from the file was run."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array/dtype reconstruction globals.

    Lists, tuples, ints, floats, strings and bytes need no global (protocol 2 bytes go through a
    latin1-only ``_codecs.encode``). Any other ``module.name`` raises
    :class:`ForbiddenGlobalError` naming it, before the global is imported or called; persistent ids
    are refused too (the default ``persistent_load``)."""

    def __init__(self, file: Any, source: str = "") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else is refused."""
        obj = _ALLOWED.get((module, name))
        if obj is None:
            where = f"{self.source}: " if self.source else ""
            raise ForbiddenGlobalError(
                f"{where}the pickle names the global {module}.{name}, which is not allowed (only numpy arrays, "
                f"lists and ints may appear in a Point-BERT ModelNet .dat file); nothing in it was executed. "
                f"Do not load this file with plain pickle", self.source or None)
        return obj


def _as_points(a: Any, i: int, path: Path) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.ndim != 2 or a.shape[1] < 3:
        what = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".strip()
        raise DataFileError(f"{path}: point entry {i} is {what}; expected a float array (P, 3+) "
                            "(x, y, z[, nx, ny, nz])", path)
    return a


def _as_label(a: Any, i: int, path: Path) -> int:
    arr = np.asarray(a) if isinstance(a, (np.ndarray, int)) and not isinstance(a, bool) else None
    if arr is None or arr.dtype.kind not in "iu" or arr.size != 1:  # a plain int is fine too
        raise DataFileError(f"{path}: label entry {i} is {type(a).__name__} {getattr(a, 'shape', '')}; "
                            "expected an integer array of one element (np.array([cls]).astype(np.int32))", path)
    return int(arr.reshape(-1)[0])


def load_modelnet_dat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, P, C) float32, labels (N,) int64) of a Point-BERT ``.dat``, via :class:`RestrictedUnpickler`.

    The layout is checked: a two-element list ``[list_of_points, list_of_labels]`` of equal length,
    each cloud a float array (P, 3+) with the same P, each label an integer array of one element."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Point-BERT ModelNet file not found: {path}")
    with open(path, "rb") as f:
        try:
            obj = RestrictedUnpickler(f, str(path)).load()
        except ForbiddenGlobalError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise DataFileError(f"{path}: not a readable Point-BERT ModelNet pickle ({type(e).__name__}: {e})",
                                path) from None
    if not (isinstance(obj, (list, tuple)) and len(obj) == 2 and all(isinstance(x, list) for x in obj)):
        raise DataFileError(f"{path}: expected the Point-BERT layout [list_of_points, list_of_labels], "
                            f"got {type(obj).__name__}", path)
    pts, labs = obj
    if len(pts) != len(labs) or not pts:
        raise DataFileError(f"{path}: {len(pts)} clouds but {len(labs)} labels", path)
    clouds = [_as_points(a, i, path) for i, a in enumerate(pts)]
    sizes = sorted({c.shape for c in clouds})
    if len(sizes) != 1:
        raise DataFileError(f"{path}: clouds differ in shape ({sizes[:3]}...); expected one (P, C) for all", path)
    labels = np.array([_as_label(a, i, path) for i, a in enumerate(labs)], dtype=np.int64)
    return np.stack(clouds).astype(np.float32, copy=False), labels


def _shape_names(path: Optional[str | Path], dat: Path) -> list[str]:
    if path is None:
        beside = dat.parent / "modelnet40_shape_names.txt"  # where Point-BERT's layout keeps it
        if not beside.is_file():
            return list(MODELNET40_CLASSES)
        path = beside
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"shape-names file not found: {p}")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def convert_modelnet_dat(dat: str | Path, out: str | Path, shape_names: Optional[str | Path] = None
                         ) -> dict[str, Any]:
    """Convert a Point-BERT ``.dat`` into the ``.npz`` that ``data.name: modelnet40_fps`` reads.

    The file holds ``data`` (N, P, 3) float32 xyz as stored (not normalised; the loader normalises
    each cloud as Point-BERT's ``_get_item`` does; the normals are dropped, as ``USE_NORMALS: False``
    does), ``label`` (N,) int64, ``classes`` (JSON) from ``shape_names`` (default: the
    ``modelnet40_shape_names.txt`` next to the .dat, else the standard 40 names) and ``format``.
    Written atomically. Returns a summary (clouds, points, classes, out)."""
    dat, out = Path(dat).expanduser(), Path(out).expanduser()
    if out.suffix != ".npz":
        raise ValueError(f"output {out} must end in .npz")
    points, labels = load_modelnet_dat(dat)
    classes = _shape_names(shape_names, dat)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataFileError(f"{dat}: labels span {labels.min()}..{labels.max()}, outside the {len(classes)} "
                            "shape names; pass the matching shape-names file", dat)
    xyz = np.ascontiguousarray(points[..., :3])
    meta = json.dumps({"source": dat.name, "columns_in_source": int(points.shape[-1])})

    def write(tmp: Path) -> None:
        np.savez(tmp, data=xyz, label=labels, classes=np.array(json.dumps(classes)), format=np.array(NPZ_FORMAT),
                 meta=np.array(meta))

    atomic_write(out, write)
    return {"clouds": len(labels), "points": int(xyz.shape[1]), "classes": len(classes), "out": str(out)}


def read_modelnet_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(points (N, P, 3), labels (N,), classes) of a file written by :func:`convert_modelnet_dat`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"converted ModelNet file not found: {path}; make it from Point-BERT's .dat "
                                "with `frozenlm convert-modelnet DAT OUT.npz`")
    try:
        with np.load(path, allow_pickle=False) as f:
            fmt = str(f["format"]) if "format" in f.files else None
            if fmt != NPZ_FORMAT:
                raise DataFileError(f"{path} is not a converted ModelNet file (format {fmt!r}, expected "
                                    f"{NPZ_FORMAT!r}); make it with `frozenlm convert-modelnet`", path)
            return f["data"], f["label"], list(json.loads(str(f["classes"])))
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, DataFileError):
            raise
        raise DataFileError(f"{path}: unreadable converted ModelNet file ({type(e).__name__}: {e})", path) from None
