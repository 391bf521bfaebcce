"""ImageNet-1k (ILSVRC2012) as released (issue 18, item 6).

Specifications the fixtures follow:

* image-net.org's ILSVRC2012 release, as torchvision reads it (pytorch/vision,
  ``torchvision/datasets/imagenet.py``): ``ILSVRC2012_img_train.tar`` holds one tar per class
  named by wnid (``n01440764.tar``), each holding that class's JPEGs (``n01440764_10026.JPEG``)
  without a folder (``parse_train_archive``); ``ILSVRC2012_img_val.tar`` holds the flat
  ``ILSVRC2012_val_00000001.JPEG`` ...; the devkit ``ILSVRC2012_devkit_t12`` has
  ``data/ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID per line, line i
  for image i; ``parse_val_groundtruth_txt``) and ``data/meta.mat``, a struct array ``synsets``
  (ILSVRC2012_ID, WNID, words, gloss, num_children, children, wordnet_height,
  num_train_images) whose ``num_children == 0`` entries are the classes (``parse_meta_mat``).
  torchvision then moves each val image into its wnid folder (``parse_val_archive``) and reads
  both splits with ``ImageFolder``: class index = position of the wnid in the sorted wnids.
* Kaggle's ImageNet Object Localization Challenge: ``ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/}`` and
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the string ``"wnid x_min y_min x_max
  y_max"`` once per box).
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from frozenlm.config import load_config
from frozenlm.data import TarShardDataset, build_image_dataset
from frozenlm.data.imagenet_release import read_devkit_labels, read_loc_val_solution
from frozenlm.errors import DataFileError

REPO = Path(__file__).resolve().parents[1]
# ILSVRC2012_ID order is not wnid order: ID 1 is n02119789 (kit fox), which sorts last of these four
LEAVES = {1: "n02119789", 2: "n02100735", 3: "n02110185", 4: "n01440764"}
SORTED = sorted(LEAVES.values())
VAL_IDS = [1, 4, 2, 3, 1, 4, 3]  # ground-truth line i: the ILSVRC2012_ID of ILSVRC2012_val_0000000i
TRAIN = {"n01440764": 3, "n02100735": 2, "n02110185": 2, "n02119789": 3}  # images per class


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path, "JPEG", quality=95)


def _value(img) -> int:
    return int(round(float(np.asarray(img).mean())))


def _write_meta_mat(path: Path) -> None:
    import scipy.io
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, f"class {w}", "a gloss", 0, np.zeros((0,)), 0, 1300) for i, w in LEAVES.items()]
    rows.append((1001, "n00001740", "entity", "the root", 2, np.array([1, 2]), 19, 0))  # not a class
    arr = np.zeros((len(rows),), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        for f, v in zip(fields, row):
            arr[k][f] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": arr})


def _val_value(n: int) -> int:
    return 20 + 25 * n


def _release(tmp: Path) -> dict[str, Path]:
    """The three archives as downloaded plus the devkit unpacked; returns their paths."""
    stage = tmp / "stage"
    # training archive: one tar per class inside the outer tar
    inner = []
    for c, (wnid, n) in enumerate(sorted(TRAIN.items())):
        files = []
        for k in range(n):
            f = stage / "train" / wnid / f"{wnid}_{100 + k}.JPEG"
            _jpeg(f, 10 + 60 * c + 5 * k)
            files.append(f)
        t = stage / "train_tars" / f"{wnid}.tar"
        t.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(t, "w") as tf:
            for f in files:
                tf.add(f, arcname=f.name)
        inner.append(t)
    rel = tmp / "imagenet"
    rel.mkdir()
    with tarfile.open(rel / "ILSVRC2012_img_train.tar", "w") as tf:
        for t in inner:
            tf.add(t, arcname=t.name)
    # validation: flat JPEGs
    val = stage / "val"
    for n in range(1, len(VAL_IDS) + 1):
        _jpeg(val / f"ILSVRC2012_val_{n:08d}.JPEG", _val_value(n))
    with tarfile.open(rel / "ILSVRC2012_img_val.tar", "w") as tf:
        for f in sorted(val.iterdir()):
            tf.add(f, arcname=f.name)
    # devkit
    dk = stage / "ILSVRC2012_devkit_t12"
    _write_meta_mat(dk / "data" / "meta.mat")
    (dk / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in VAL_IDS))
    (dk / "readme.txt").write_text("devkit")
    with tarfile.open(rel / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        tf.add(dk, arcname="ILSVRC2012_devkit_t12")
    return {"root": rel, "stage": stage, "devkit_dir": dk, "train_tars": stage / "train_tars", "val": val}


def _want_val() -> dict[str, str]:
    return {f"ILSVRC2012_val_{n:08d}": LEAVES[i] for n, i in enumerate(VAL_IDS, 1)}


# ----------------------------------------------------------------------------------- labels

def test_devkit_labels_as_torchvision_parses_them(tmp_path: Path) -> None:
    r = _release(tmp_path)
    want = _want_val()
    for where in (r["devkit_dir"], r["devkit_dir"] / "data", r["devkit_dir"] / "data" /
                  "ILSVRC2012_validation_ground_truth.txt", r["root"] / "ILSVRC2012_devkit_t12.tar.gz"):
        labels, classes = read_devkit_labels(where)
        assert labels == want and classes == SORTED, where  # the non-leaf n00001740 is no class


def test_devkit_errors_name_the_file_and_line(tmp_path: Path) -> None:
    r = _release(tmp_path)
    gt = r["devkit_dir"] / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n4\n9\n")
    with pytest.raises(DataFileError, match=r"ground_truth.txt, line 3: '9' is not an ILSVRC2012_ID"):
        read_devkit_labels(r["devkit_dir"])
    (r["devkit_dir"] / "data" / "meta.mat").unlink()
    with pytest.raises(FileNotFoundError, match="meta.mat not found"):
        read_devkit_labels(r["devkit_dir"])


def test_kaggle_loc_val_solution(tmp_path: Path) -> None:
    csv = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{n:08d},{LEAVES[i]} 1 2 30 40" + (f" {LEAVES[i]} 5 6 7 8" if n % 2 else "")
            for n, i in enumerate(VAL_IDS, 1)]
    csv.write_text("ImageId,PredictionString\n" + "\n".join(rows[::-1]) + "\n")  # Kaggle's rows are unordered
    labels, classes = read_loc_val_solution(csv)
    assert labels == _want_val() and classes == SORTED
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n02119789 1 2 3 4 n01440764 1 2 3 4\n")
    with pytest.raises(DataFileError, match="line 2: PredictionString .* of one class"):
        read_loc_val_solution(csv)
    csv.write_text("id,label\n")
    with pytest.raises(DataFileError, match="header 'ImageId,PredictionString'"):
        read_loc_val_solution(csv)


# ------------------------------------------------------------------------- datasets as released

def _torchvision_prepared(r: dict[str, Path], tmp: Path) -> tuple[ImageFolder, ImageFolder]:
    """train/ and val/ as torchvision's parse_train_archive / parse_val_archive lay them out, read with
    ImageFolder: the reference for every label below."""
    tv = tmp / "tv"
    shutil.copytree(r["stage"] / "train", tv / "train")
    for name, wnid in _want_val().items():
        (tv / "val" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(r["val"] / f"{name}.JPEG", tv / "val" / wnid)
    return ImageFolder(str(tv / "train")), ImageFolder(str(tv / "val"))


def _by_name(ds) -> dict[str, int]:
    return {Path(name).name: label for name, label in ds.samples}


def test_archives_as_downloaded_give_torchvision_labels(tmp_path: Path) -> None:
    r = _release(tmp_path)
    ref_train, ref_val = _torchvision_prepared(r, tmp_path)
    cfg = {"name": "tarshards", "train_shards": str(r["root"] / "ILSVRC2012_img_train.tar"),
           "val_shards": str(r["root"] / "ILSVRC2012_img_val.tar"),
           "val_labels": str(r["root"] / "ILSVRC2012_devkit_t12.tar.gz"), "num_classes": 4}
    train = build_image_dataset(cfg, "train", transform=lambda im: im)
    val = build_image_dataset(cfg, "val", transform=lambda im: im)
    assert train.classes == val.classes == ref_train.classes == SORTED
    assert _by_name(train) == _by_name(ref_train) and len(train) == sum(TRAIN.values())
    assert _by_name(val) == _by_name(ref_val) and len(val) == len(VAL_IDS)
    assert val.samples[0][1] == SORTED.index("n02119789") == 3  # ILSVRC2012_ID 1 is index 3, not 0
    # pixels come from the right bytes of the nested archive
    for i in range(len(train)):
        img, y = train[i]
        ref_img, ref_y = ref_train[[Path(p).name for p, _ in ref_train.samples].index(Path(train.samples[i][0]).name)]
        assert y == ref_y and abs(_value(img) - _value(ref_img)) <= 1
    for n in range(1, len(VAL_IDS) + 1):
        assert abs(_value(val[n - 1][0]) - _val_value(n)) <= 2
    assert (r["root"] / "ILSVRC2012_img_train.tar.index.json").is_file()  # scanned once, then cached


def test_extracted_per_class_tars_and_flat_val_folder(tmp_path: Path) -> None:
    r = _release(tmp_path)
    ref_train, ref_val = _torchvision_prepared(r, tmp_path)
    root = tmp_path / "extracted"
    shutil.copytree(r["train_tars"], root / "train")  # ILSVRC2012_img_train.tar unpacked once: n*.tar
    shutil.copytree(r["val"], root / "val")  # ILSVRC2012_img_val.tar unpacked: flat JPEGs
    train = build_image_dataset({"name": "tarshards", "root": str(root)}, "train", transform=lambda im: im)
    assert train.classes == SORTED and _by_name(train) == _by_name(ref_train)
    for labels in (r["devkit_dir"], r["root"] / "ILSVRC2012_devkit_t12.tar.gz"):
        cfg = {"name": "imagefolder", "root": str(root), "val_labels": str(labels), "num_classes": 4}
        val = build_image_dataset(cfg, "val", transform=lambda im: im)
        assert val.classes == SORTED and _by_name(val) == _by_name(ref_val)
        assert [abs(_value(val[k][0]) - _val_value(k + 1)) <= 2 for k in range(len(val))] == [True] * len(VAL_IDS)


def test_kaggle_layout_and_train_val_agreement(tmp_path: Path) -> None:
    r = _release(tmp_path)
    _, ref_val = _torchvision_prepared(r, tmp_path)
    cls_loc = tmp_path / "kaggle" / "ILSVRC" / "Data" / "CLS-LOC"
    shutil.copytree(r["stage"] / "train", cls_loc / "train")
    shutil.copytree(r["val"], cls_loc / "val")
    csv = tmp_path / "kaggle" / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(f"{k},{w} 0 0 5 5\n" for k, w in _want_val().items()))
    cfg = {"name": "imagefolder", "root": str(cls_loc), "val_labels": str(csv), "num_classes": 4}
    train = build_image_dataset(cfg, "train", transform=lambda im: im)
    val = build_image_dataset(cfg, "val", transform=lambda im: im)
    assert train.class_to_idx == val.class_to_idx == {w: i for i, w in enumerate(SORTED)}
    assert _by_name(val) == _by_name(ref_val)
    # a training copy without one class: validation indices follow the training classes, and a
    # validation image of the missing class is an error, not a shifted label
    shutil.rmtree(cls_loc / "train" / "n02100735")
    with pytest.raises(ValueError, match=r"outside the 3 classes in use \(e.g. \['n02100735'\]\)"):
        build_image_dataset({**cfg, "num_classes": None}, "val")
    for f in (cls_loc / "val").iterdir():
        if _want_val()[f.stem] == "n02100735":
            f.unlink()
    val3 = build_image_dataset({**cfg, "num_classes": None}, "val", transform=lambda im: im)
    train3 = build_image_dataset({**cfg, "num_classes": None}, "train", transform=lambda im: im)
    assert val3.classes == train3.classes == [w for w in SORTED if w != "n02100735"]
    assert all(val3.classes[y] == _want_val()[Path(p).stem] for p, y in val3.samples)


def test_flat_val_without_labels_says_what_to_set(tmp_path: Path) -> None:
    r = _release(tmp_path)
    root = tmp_path / "x"
    shutil.copytree(r["val"], root / "val")
    with pytest.raises(FileNotFoundError, match="flat validation set as released. Set data.val_labels"):
        build_image_dataset({"name": "imagefolder", "root": str(root)}, "val")
    with pytest.raises(ValueError, match="data.val_labels naming the devkit or LOC_val_solution.csv"):
        TarShardDataset(r["root"] / "ILSVRC2012_img_val.tar")
    with pytest.raises(ValueError, match="found 4 classes, expected data.num_classes=1000"):
        build_image_dataset({"name": "tarshards", "train_shards": str(r["root"] / "ILSVRC2012_img_train.tar"),
                             "num_classes": 1000}, "train")
    with pytest.raises(ValueError, match="4 classes, expected data.num_classes=1000"):
        build_image_dataset({"name": "imagefolder", "root": str(root), "num_classes": 1000,
                             "val_labels": str(r["devkit_dir"])}, "val")
    _, _ = _torchvision_prepared(r, tmp_path)  # val/ sorted into wnid folders, as torchvision leaves it
    with pytest.raises(ValueError, match="already sorted into class folders; leave data.val_labels unset"):
        build_image_dataset({"name": "imagefolder", "root": str(tmp_path / "tv"), "val_labels": str(r["devkit_dir"])},
                            "val")
    (root / "val" / "stray.JPEG").write_bytes((r["val"] / "ILSVRC2012_val_00000001.JPEG").read_bytes())
    with pytest.raises(ValueError, match=r"1 of 8 images .* have no label in data.val_labels"):
        build_image_dataset({"name": "imagefolder", "root": str(root), "val_labels": str(r["devkit_dir"])}, "val")


def test_imagenet_recipe_takes_the_release(tmp_path: Path) -> None:
    """The documented command: configs/image/imagenet_vit_s.yaml with the three archives as downloaded."""
    from frozenlm.engine.task import task_schema
    from frozenlm.tasks.image import ImageClassification
    r = _release(tmp_path)
    root = r["root"]
    cfg = load_config(REPO / "configs/image/imagenet_vit_s.yaml",
                      ["data.name=tarshards", f"data.train_shards={root}/ILSVRC2012_img_train.tar",
                       f"data.val_shards={root}/ILSVRC2012_img_val.tar",
                       f"data.val_labels={root}/ILSVRC2012_devkit_t12.tar.gz", "data.num_classes=4"],
                      schema_for=task_schema)
    task = ImageClassification()
    train, val = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    assert train.classes == val.classes == SORTED
    assert tuple(val[0][0].shape) == (3, 224, 224) and val[0][1] == 3
