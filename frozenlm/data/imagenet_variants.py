"""ImageNet and its robustness test sets (ImageNet-A, -R, -Sketch, -C).

Label conventions (they matter for comparing numbers with the paper):

* ImageNet-Sketch and ImageNet-C: labels are indices into timm's sorted 1k ImageNet wnid
  list, looked up by folder name, so a partial copy of the data still gets correct labels.
* ImageNet-A and ImageNet-R (200 classes): by default (``label_space="subset"``) labels are
  0..199, the rank of the wnid among the dataset's own sorted wnids, and predictions are
  ``argmax`` over ``mask_logits(logits, dataset.class_indices)`` -- the convention of the
  ImageNet-A/R authors' evaluation code.  With ``label_space="1k"`` labels are indices into
  the 1k list instead (use them with unmasked 1k logits).  Because timm's wnid list is
  sorted, rank among the subset == position of the 1k index among ``class_indices``.
"""

from __future__ import annotations

import bisect
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from .errors import FilePolicy
from .folder import CheckedImageFolder

# The 15 corruptions of the ImageNet-C benchmark (the 4 "extra" ones are not in mCE/mean acc).
IMAGENET_C_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
IMAGENET_C_EXTRA_CORRUPTIONS: tuple[str, ...] = (
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)


def _timm_info_dir() -> Path:
    import timm.data

    return Path(timm.data.__file__).parent / "_info"


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted), as shipped by timm."""
    path = _timm_info_dir() / "imagenet_synsets.txt"
    wnids = tuple(path.read_text().split())
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError(f"{path}: expected 1000 sorted wnids, got {len(wnids)}")
    return wnids


@functools.lru_cache(maxsize=None)
def imagenet_wnid_to_index() -> dict[str, int]:
    """Map wnid -> ImageNet-1k class index."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


@functools.lru_cache(maxsize=None)
def reference_subset_wnids(name: str) -> tuple[str, ...]:
    """timm's canonical 200 wnids for ``name`` in {"imagenet_a", "imagenet_r"}."""
    short = {"imagenet_a": "a", "imagenet_r": "r"}.get(name)
    if short is None:
        raise ValueError(f"no reference wnid list for {name!r}; known: imagenet_a, imagenet_r")
    return tuple((_timm_info_dir() / f"imagenet_{short}_synsets.txt").read_text().split())


def wnids_to_indices(wnids: Iterable[str]) -> list[int]:
    """Positions of ``wnids`` in the sorted 1k list; clear error for unknown wnids."""
    table = imagenet_wnid_to_index()
    wnids = list(wnids)
    unknown = [w for w in wnids if w not in table]
    if unknown:
        raise ValueError(
            f"{len(unknown)} folder name(s) are not ImageNet-1k wnids (e.g. {unknown[:5]}); "
            "expected folders named like n01440764")
    return [table[w] for w in wnids]


def mask_logits(logits: torch.Tensor, class_indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Keep only the 1k-logit columns of a 200-class subset (ImageNet-A/R evaluation).

    ``logits``: (B, 1000).  Returns (B, len(class_indices)) in the order of
    ``class_indices``; ``argmax`` of the result is a label in subset space (0..199).
    """
    idx = torch.as_tensor(class_indices, dtype=torch.long, device=logits.device)
    if logits.shape[-1] <= int(idx.max()):
        raise ValueError(f"logits have {logits.shape[-1]} classes but class_indices go up to {int(idx.max())}")
    return logits.index_select(-1, idx)


def _check_dir(root: str | os.PathLike, layout: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory {str(path)!r} does not exist; expected layout: {layout}")
    return path


class WnidImageFolder(CheckedImageFolder):
    """ImageFolder whose class folders are ImageNet wnids (unreadable images follow ``policy``).

    ``label_space="1k"``: target = ImageNet-1k index of the folder's wnid.
    ``label_space="subset"``: target = rank of the wnid among the folders found (0..K-1).
    ``class_indices`` always holds the 1k indices of the found wnids (sorted), for
    :func:`mask_logits`.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 label_space: str = "1k", **kwargs) -> None:
        if label_space not in ("1k", "subset"):
            raise ValueError(f"label_space must be '1k' or 'subset', got {label_space!r}")
        self.label_space = label_space
        _check_dir(root, "<root>/<wnid>/<image>.JPEG (wnids like n01440764)")
        super().__init__(str(root), transform=transform, **kwargs)
        self.class_indices: list[int] = wnids_to_indices(self.classes)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
        if not classes:
            raise FileNotFoundError(
                f"no class folders in {directory!r}; expected <root>/<wnid>/<image>.JPEG")
        if self.label_space == "1k":
            return classes, dict(zip(classes, wnids_to_indices(classes)))
        return classes, {c: i for i, c in enumerate(classes)}

    @property
    def num_classes(self) -> int:
        """Width of the label space (1000 for '1k', number of wnids for 'subset')."""
        return 1000 if self.label_space == "1k" else len(self.classes)


def build_imagenet_subset(root: str | os.PathLike, name: str, transform: Callable | None = None,
                          label_space: str = "subset", num_classes: int | None = 200,
                          strict_wnids: bool = False, policy: FilePolicy | None = None) -> WnidImageFolder:
    """ImageNet-A or ImageNet-R (``name``) as a :class:`WnidImageFolder`.

    ``num_classes``: expected number of wnid folders (200 for the real sets; ``None`` skips).
    ``strict_wnids``: also require the wnids to equal timm's reference list for ``name``.
    """
    ds = WnidImageFolder(root, transform=transform, label_space=label_space, policy=policy)
    if num_classes is not None and len(ds.classes) != num_classes:
        raise ValueError(f"{name}: found {len(ds.classes)} class folders in {str(root)!r}, "
                         f"expected {num_classes} (set data.num_classes to override)")
    if strict_wnids:
        ref = reference_subset_wnids(name)
        if tuple(ds.classes) != ref:
            missing = sorted(set(ref) - set(ds.classes))[:5]
            extra = sorted(set(ds.classes) - set(ref))[:5]
            raise ValueError(f"{name}: wnids in {str(root)!r} differ from timm's list "
                             f"(missing e.g. {missing}, unexpected e.g. {extra})")
    return ds


def enumerate_imagenet_c(root: str | os.PathLike, corruptions: Sequence[str] | None = None,
                         severities: Sequence[int] | None = None) -> list[tuple[str, int, Path]]:
    """List the (corruption, severity, directory) triples of an ImageNet-C tree.

    Layout: ``root/<corruption>/<severity 1-5>/<wnid>/*.JPEG``.  ``corruptions=None`` takes
    every corruption folder found except the 4 extra ones of ``extra.tar``
    (:data:`IMAGENET_C_EXTRA_CORRUPTIONS`), which the benchmark holds out: a copy of all five released
    tars then gives the 15 x 5 of the published mean, and a printed line names what was left out
    (name the extras in ``corruptions`` to evaluate them). Named corruptions or severities that are
    missing raise.
    """
    layout = "<root>/<corruption>/<severity 1-5>/<wnid>/<image>.JPEG"
    base = _check_dir(root, layout)
    found = sorted(e.name for e in os.scandir(base) if e.is_dir())
    if corruptions is None:
        extra = [c for c in found if c in IMAGENET_C_EXTRA_CORRUPTIONS]
        names = [c for c in found if c not in IMAGENET_C_EXTRA_CORRUPTIONS] or found
        if extra and names != found:
            print(f"[data] ImageNet-C: left out the held-out extra corruption(s) {extra} found in {str(base)!r} "
                  "(not in the benchmark's 15); name them in data.corruptions to evaluate them",
                  file=sys.stderr, flush=True)
    else:
        missing = [c for c in corruptions if c not in found]
        if missing:
            raise FileNotFoundError(f"ImageNet-C corruption folder(s) {missing} not in {str(base)!r} "
                                    f"(found {found}); expected layout {layout}")
        names = list(corruptions)
    out: list[tuple[str, int, Path]] = []
    for c in names:
        sev_found = sorted(int(e.name) for e in os.scandir(base / c) if e.is_dir() and e.name.isdigit())
        sev = sev_found if severities is None else [int(s) for s in severities]
        for s in sev:
            d = base / c / str(s)
            if not d.is_dir():
                raise FileNotFoundError(f"ImageNet-C: missing severity folder {str(d)!r}; expected layout {layout}")
            out.append((c, s, d))
    if not out:
        raise FileNotFoundError(f"no ImageNet-C corruption/severity folders under {str(base)!r}; expected {layout}")
    return out


def imagenet_c_datasets(root: str | os.PathLike, transform: Callable | None = None,
                        corruptions: Sequence[str] | None = None,
                        severities: Sequence[int] | None = None, policy: FilePolicy | None = None
                        ) -> list[tuple[str, int, WnidImageFolder]]:
    """One 1k-labelled dataset per (corruption, severity), for per-corruption accuracy (one shared
    ``policy`` for unreadable images)."""
    policy = policy or FilePolicy()
    return [(c, s, WnidImageFolder(d, transform=transform, label_space="1k", policy=policy))
            for c, s, d in enumerate_imagenet_c(root, corruptions, severities)]


class ImageNetCConcat(ConcatDataset):
    """All chosen ImageNet-C sub-datasets as one dataset; ``parts`` keeps (corruption, severity)."""

    def __init__(self, parts: list[tuple[str, int, Dataset]]) -> None:
        super().__init__([p[2] for p in parts])
        self.parts = [(c, s) for c, s, _ in parts]
        self.classes = list(imagenet_wnids())
        self.num_classes = 1000


def summarize_imagenet_c(acc: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Per-corruption accuracy (mean over severities) plus ``"mean"`` over corruptions.

    ``acc`` maps (corruption, severity) -> top-1.  The paper's ImageNet-C number is this mean
    over the 15 standard corruptions x 5 severities.  When extra corruptions were evaluated too
    (:data:`IMAGENET_C_EXTRA_CORRUPTIONS`), ``"mean"`` stays over the others and ``"mean_with_extra"``
    covers all of them.
    """
    per: dict[str, list[float]] = {}
    for (c, _s), a in acc.items():
        per.setdefault(c, []).append(float(a))
    out = {c: sum(v) / len(v) for c, v in sorted(per.items())}
    core = [v for c, v in out.items() if c not in IMAGENET_C_EXTRA_CORRUPTIONS]
    if core and len(core) < len(out):
        out["mean_with_extra"] = sum(out.values()) / len(out)
        out["mean"] = sum(core) / len(core)
    elif out:
        out["mean"] = sum(out.values()) / len(out)
    return out


class PartTagged(Dataset):
    """ImageNet-C items tagged with their (corruption, severity) part, for per-corruption accuracy."""

    def __init__(self, ds: ImageNetCConcat) -> None:
        self.ds, self.parts, self.num_classes, self.classes = ds, ds.parts, ds.num_classes, ds.classes

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[Any, int, int] | None:
        item = self.ds[i]
        if item is None:  # an unreadable image skipped under data.on_error=skip
            return None
        return item[0], item[1], bisect.bisect_right(self.ds.cumulative_sizes, i)
