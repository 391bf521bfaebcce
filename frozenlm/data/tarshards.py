"""Map-style dataset over ImageNet-style tar shards, read by byte offset.

Member layouts (the class layouts and the ``.cls`` layout are not mixed in one dataset):

* ``<class or wnid>/<name>.JPEG`` -- the class is the member's parent folder name; classes are
  sorted by name (as ImageNet sorts wnids, and as ImageFolder does).
* ImageNet's training archive as released: ``ILSVRC2012_img_train.tar`` holds one uncompressed tar
  per class, ``n01440764.tar`` ..., each holding that class's JPEGs without a folder. An inner
  ``.tar`` member is read in place (its images' offsets are offsets into the outer file) and its
  name without ``.tar`` is the class. The same per-class tars extracted into a folder are shards
  named by wnid: a member without a folder takes its class from a shard named like ``n01440764.tar``.
* images without a class folder labelled by file stem (``member_labels``): ImageNet's
  ``ILSVRC2012_img_val.tar`` with the devkit's or Kaggle's labels.
* webdataset pairs ``<key>.jpg`` + ``<key>.cls`` -- the label is the integer in ``.cls``.

Each shard is scanned once; the member offsets are cached in ``<shard>.index.json`` next to
the shard (kept in memory only when that folder is read-only; under torch.distributed one process
per node scans and writes them while the others wait).  Reading a sample is one
``seek`` + ``read`` on a per-process file handle, so the dataset works with any sampler
(DistributedSampler, RepeatAugSampler) and with DataLoader worker processes.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path
from typing import Callable, Sequence

from typing import Mapping

from torch.utils.data import Dataset

from .cache import atomic_write, build_once
from .errors import FilePolicy, read_image
from .folder import IMAGE_EXTENSIONS
from .imagenet_release import is_wnid

_INDEX_VERSION = 2  # 2: members of inner .tar files are indexed too (with their class)


def find_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Resolve a directory, a glob, a single ``.tar`` or a list of those to sorted shard paths."""
    if isinstance(spec, (list, tuple)):
        out: list[Path] = []
        for s in spec:
            out.extend(find_shards(s))
        return out
    s = str(spec)
    if os.path.isdir(s):
        paths = sorted(Path(s).glob("*.tar"))
    elif any(ch in s for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(s))
    else:
        paths = [Path(s)] if os.path.isfile(s) else []
    if not paths:
        raise FileNotFoundError(
            f"no .tar shards found for {s!r}; expected a directory of *.tar, a glob or a .tar file, "
            "with members <class>/<name>.JPEG or webdataset <key>.jpg + <key>.cls")
    return paths


def _scan_members(tf: tarfile.TarFile, path: Path, base: int, prefix: str, cls: str | None,
                  images: dict[str, list], labels: dict[str, int], order: list[str], nested: bool) -> None:
    for m in tf:
        if not m.isfile():
            continue
        key, ext = os.path.splitext(m.name)
        ext = ext.lower()
        if ext in IMAGE_EXTENSIONS:
            images[prefix + key] = [prefix + m.name, base + m.offset_data, m.size, None, cls]
            order.append(prefix + key)
        elif ext == ".cls":
            f = tf.extractfile(m)
            text = f.read().decode().strip() if f is not None else ""
            try:
                labels[prefix + key] = int(text)
            except ValueError as e:
                raise ValueError(f"{path}: member {m.name!r} should hold an integer class, got {text!r}") from e
        elif ext == ".tar" and nested:  # one class per inner tar, as ILSVRC2012_img_train.tar
            inner = tf.extractfile(m)
            if inner is None:
                continue
            stem = os.path.basename(key)
            try:
                with tarfile.open(fileobj=inner, mode="r:") as itf:
                    _scan_members(itf, path, base + m.offset_data, f"{stem}/", stem, images, labels, order, False)
            except tarfile.TarError as e:
                raise ValueError(f"{path}: inner archive {m.name!r} is not an uncompressed tar ({e})") from None


def _scan_shard(path: Path) -> list[list]:
    """[name, data_offset, size, cls_label_or_None, class_or_None] for each image member of a shard
    (class: the inner tar an image sits in, else None)."""
    images: dict[str, list] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    with tarfile.open(path, "r:") as tf:  # "r:" -- offsets only make sense for uncompressed tars
        _scan_members(tf, path, 0, "", None, images, labels, order, True)
    for key, lab in labels.items():
        if key in images:
            images[key][3] = lab
    return [images[k] for k in order]


def load_shard_index(path: Path, cache: bool = True) -> list[list]:
    """Member index of one shard, from ``<shard>.index.json`` when it is current."""
    idx_path = path.with_name(path.name + ".index.json")
    st = path.stat()
    if cache and idx_path.is_file():
        try:
            data = json.loads(idx_path.read_text())
            if (data.get("version") == _INDEX_VERSION and data.get("size") == st.st_size
                    and data.get("mtime_ns") == st.st_mtime_ns):
                return data["members"]
        except (OSError, ValueError, KeyError):
            pass  # stale or unreadable cache: rebuild below
    members = _scan_shard(path)
    if cache:
        blob = json.dumps({"version": _INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                           "members": members})
        try:
            atomic_write(idx_path, lambda tmp: tmp.write_text(blob))
        except OSError:
            pass  # read-only shard folder: keep the index in memory only
    return members


class TarShardDataset(Dataset):
    """Images inside uncompressed ``.tar`` shards, random access by offset.

    ``samples``: list of (member name, label); ``classes``: sorted class names (class layouts)
    or ``"0".."K-1"`` (webdataset ``.cls`` layout).  ``class_names`` pins the class order
    explicitly (e.g. the train split's classes for a val split missing some). ``member_labels``
    (file stem -> class name) labels every image by its file stem instead (ImageNet's flat
    validation tar). ``policy``: what an undecodable image does (raise naming ``shard:member``,
    or skip; see ``data.on_error``).
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable | None = None, num_classes: int | None = None,
                 class_names: Sequence[str] | None = None, cache_index: bool = True,
                 policy: FilePolicy | None = None, member_labels: Mapping[str, str] | None = None) -> None:
        self.shards = [str(p) for p in find_shards(shards)]
        self.member_labels = member_labels
        self.transform = transform
        self.policy = policy or FilePolicy()

        def index_all() -> list[list[list]]:
            return [load_shard_index(Path(p), cache_index) for p in self.shards]

        if cache_index:
            # One process per node scans and writes missing index files first; every rank then reads them.
            build_once(lambda: all(Path(f"{p}.index.json").is_file() for p in self.shards), index_all)
        entries: list[tuple[int, str, int, int, int | None]] = []
        given: list[str | None] = []  # the class an inner tar gives its images
        for si, members in enumerate(index_all()):
            for name, off, size, lab, cls in members:
                entries.append((si, name, off, size, lab))
                given.append(cls)
        if not entries:
            raise ValueError(f"no image members ({', '.join(IMAGE_EXTENSIONS)}) in shards {self.shards[:3]}...")
        with_cls = sum(e[4] is not None for e in entries)
        if 0 < with_cls < len(entries):
            raise ValueError(f"{len(entries) - with_cls} of {len(entries)} images have no .cls label while "
                             "others do; use one layout (<class>/<name>.JPEG or <key>.jpg + <key>.cls)")
        if with_cls:
            top = max(e[4] for e in entries)
            k = num_classes if num_classes is not None else top + 1
            if top >= k or min(e[4] for e in entries) < 0:
                raise ValueError(f"shards {self.shards[0]}...: .cls labels span 0..{top}, "
                                 f"outside data.num_classes={k}")
            self.classes = [str(i) for i in range(k)]
            labels = [e[4] for e in entries]
        else:
            of = [self._class_of(self.shards[e[0]], e[1], g) for e, g in zip(entries, given)]
            found = sorted(set(of))
            if class_names is not None:
                unknown = sorted(set(found) - set(class_names))
                if unknown:
                    raise ValueError(f"shards {self.shards[0]}... hold {len(unknown)} class(es) outside the "
                                     f"{len(class_names)} classes in use (e.g. {unknown[:5]}); the training split "
                                     "must hold every class of these images")
                self.classes = list(class_names)
            else:
                self.classes = found
            if num_classes is not None and len(self.classes) != num_classes:
                raise ValueError(f"shards {self.shards[0]}... ({len(self.shards)} files): found "
                                 f"{len(self.classes)} classes, expected data.num_classes={num_classes}")
            to_idx = {c: i for i, c in enumerate(self.classes)}
            labels = [to_idx[c] for c in of]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        # Flat tuples keep the pickled dataset small for worker start-up.
        self._shard_of = [e[0] for e in entries]
        self._offset = [e[2] for e in entries]
        self._size = [e[3] for e in entries]
        self.samples: list[tuple[str, int]] = [(e[1], lab) for e, lab in zip(entries, labels)]
        self.targets = labels
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    def _class_of(self, shard: str, name: str, given: str | None) -> str:
        """Class of member ``name`` of ``shard``: its label by file stem (``member_labels``), the inner
        tar it sits in, its parent folder, or the shard's name when that is a wnid."""
        if self.member_labels is not None:
            stem = os.path.splitext(os.path.basename(name))[0]
            if stem not in self.member_labels:
                raise ValueError(f"{shard}: member {name!r} has no label in data.val_labels; is it the label file "
                                 "of these images?")
            return self.member_labels[stem]
        if given:
            return given
        parent = os.path.basename(os.path.dirname(name))
        if parent:
            return parent
        stem = Path(shard).name[:-len(".tar")] if shard.endswith(".tar") else Path(shard).stem
        if is_wnid(stem):  # a per-class tar of ILSVRC2012_img_train.tar, extracted
            return stem
        raise ValueError(f"{shard}: tar member {name!r} has no class folder; expected <class>/<name>.JPEG, "
                         "webdataset <key>.jpg + <key>.cls, a shard named by its wnid (n01440764.tar) or, "
                         "for ImageNet's flat validation images (ILSVRC2012_val_*.JPEG), data.val_labels "
                         "naming the devkit or LOC_val_solution.csv")

    @property
    def num_classes(self) -> int:
        """Number of classes in the label space."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def read_bytes(self, index: int) -> bytes:
        """Raw encoded bytes of sample ``index``."""
        if self._pid != os.getpid():  # forked worker: never share the parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        si = self._shard_of[index]
        fh = self._handles.get(si)
        if fh is None:
            fh = self._handles[si] = open(self.shards[si], "rb")
        fh.seek(self._offset[index])
        return fh.read(self._size[index])

    def _load(self, index: int) -> tuple:
        name, label = self.samples[index]
        img = read_image(self.read_bytes(index), f"{self.shards[self._shard_of[index]]}:{name}")
        if self.transform is not None:
            img = self.transform(img)
        return img, label

    def __getitem__(self, index: int):
        """(image, label), or None for an unreadable image under ``data.on_error=skip``."""
        return self.policy.call(lambda: self._load(index), f"item {index}, label {self.samples[index][1]}")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # file objects cannot be pickled (spawned workers)
        return state

    def __del__(self) -> None:
        for fh in getattr(self, "_handles", {}).values():
            try:
                fh.close()
            except Exception:
                pass
