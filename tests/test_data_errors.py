"""data.on_error (raise | skip) for unreadable user files, the same through every reader."""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from frozenlm.data import build_image_dataset
from frozenlm.data.pointcloud import build_pointcloud_dataset, read_modelnet_txt
from frozenlm.tasks.image import ImageClassification

HINT = "data.on_error=skip"


class _Section(dict):
    """A config section as the builders see it (``.get`` and attribute access), without key validation."""

    __getattr__ = dict.__getitem__


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def _corrupt_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # truncated: the header reads, pixels do not


def _folder(root: Path) -> tuple[list[Path], list[int]]:
    """class a: 2 good PNGs + a truncated JPEG; class b: a garbage PNG + 2 good PNGs."""
    for c, v in (("a", 10), ("b", 200)):
        for i in range(2):
            _png(root / "train" / c / f"good{i}.png", v + i)
    bad = [root / "train" / "a" / "bad.jpg", root / "train" / "b" / "0bad.png"]
    _corrupt_jpeg(bad[0])
    bad[1].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return bad, [0, 0, 1, 1]  # labels of the good images, in ImageFolder order


def _raises_naming(exc_info: pytest.ExceptionInfo, path: Path) -> None:
    err = exc_info.value
    assert isinstance(err, ValueError) and str(path) in str(err) and HINT in str(err), str(err)
    assert err.__cause__ is None and err.__suppress_context__  # no decoder traceback chained to it


def test_corrupt_images_in_image_folder_name_the_file(tmp_path: Path) -> None:
    bad, _ = _folder(tmp_path)
    ds = build_image_dataset({"name": "imagefolder", "root": str(tmp_path)}, "train", transform=T.PILToTensor())
    names = [Path(p) for p, _ in ds.samples]
    for path in bad:
        with pytest.raises(Exception) as exc_info:
            ds[names.index(path)]
        _raises_naming(exc_info, path)


def test_skip_mode_batches_the_rest_with_their_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad, labels = _folder(tmp_path)
    cfg = {"name": "imagefolder", "root": str(tmp_path), "on_error": "skip"}
    ds = build_image_dataset(cfg, "train", transform=T.PILToTensor())
    assert len(ds) == 6
    batch = next(iter(DataLoader(ds, batch_size=6, collate_fn=ImageClassification().collate_fn(None, "train"))))
    x, y = batch
    assert y.tolist() == labels and x.shape == (4, 3, 10, 12)
    assert x[:, 0, 0, 0].tolist() == [10, 11, 200, 201]  # each image kept with its own label
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[data] skipping")]
    assert len(lines) == 2 and all(any(str(p) in ln for ln in lines) for p in bad)
    assert "2 unreadable file(s) skipped" in lines[-1]
    assert sorted(ds.policy.skipped) == sorted(str(p) for p in bad)


def test_on_error_is_validated(tmp_path: Path) -> None:
    _folder(tmp_path)
    with pytest.raises(ValueError, match=re.escape("data.on_error must be one of raise|skip, got 'ignore'")):
        build_image_dataset({"name": "imagefolder", "root": str(tmp_path), "on_error": "ignore"}, "train")


def test_tar_shard_member_that_does_not_decode(tmp_path: Path) -> None:
    _folder(tmp_path)
    shard = tmp_path / "shards" / "train" / "s0.tar"
    shard.parent.mkdir(parents=True)
    with tarfile.open(shard, "w") as tf:
        for p in sorted((tmp_path / "train").rglob("*.*")):
            tf.add(p, arcname=f"{p.parent.name}/{p.name}")
    cfg = {"name": "tarshards", "root": str(tmp_path / "shards")}
    ds = build_image_dataset(cfg, "train", transform=T.PILToTensor())
    i = [n for n, _ in ds.samples].index("a/bad.jpg")
    with pytest.raises(Exception) as exc_info:
        ds[i]
    _raises_naming(exc_info, Path(f"{shard}:a/bad.jpg"))
    ds = build_image_dataset({**cfg, "on_error": "skip"}, "train", transform=T.PILToTensor())
    kept = [ds[k] for k in range(len(ds))]
    assert sum(item is None for item in kept) == 2
    assert [y for item in kept if item is not None for y in [item[1]]] == [0, 0, 1, 1]


def test_modelnet_text_file_that_does_not_parse(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_pointcloud import _write_modelnet_txt
    root = tmp_path / "mn"
    arrays = _write_modelnet_txt(root)
    bad = root / "bathtub" / "bathtub_0003.txt"
    bad.write_text("0.1,0.2,0.3\nnot,a,number\n" * 30)
    with pytest.raises(Exception) as exc_info:
        read_modelnet_txt(root, "train", num_points=32, progress=False, selection="first")
    _raises_naming(exc_info, bad)
    ds = build_pointcloud_dataset({"name": "modelnet40", "root": str(root), "file_points": 32, "on_error": "skip", "point_selection": "first"},
                                  "train")
    assert [int(v) for v in ds.labels] == [0, 2]  # airplane_0001, bed_0002: labels stay with their clouds
    x = arrays["bed_0002"][:32, :3].round(6)
    x = (x - x.mean(0)) / np.linalg.norm(x - x.mean(0), axis=1).max()
    np.testing.assert_allclose(ds[1][0].numpy(), x, atol=1e-5)
    err = capsys.readouterr().err
    assert str(bad) in err and "skipped 1 of 3 unreadable file(s)" in err


def test_sqa3d_scene_file_that_does_not_load(tmp_path: Path) -> None:
    from frozenlm.data.errors import FilePolicy
    from frozenlm.data.sqa3d import drop_bad_scenes
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    np.save(scenes / "s0.npy", np.random.default_rng(0).random((50, 6)).astype(np.float32))
    (scenes / "s1.npy").write_bytes(b"\x93NUMPY garbage")
    samples = [{"scene_id": "s0", "q": 0}, {"scene_id": "s1", "q": 1}, {"scene_id": "s1", "q": 2}]
    with pytest.raises(Exception) as exc_info:
        drop_bad_scenes(samples, scenes, "error", FilePolicy("raise"))
    _raises_naming(exc_info, scenes / "s1.npy")
    kept, files, counts = drop_bad_scenes(samples, scenes, "error", FilePolicy("skip"))
    assert kept == samples[:1] and list(files) == ["s0"] and counts["unreadable_scene"] == 2


def test_av2_scenario_file_that_does_not_parse(tmp_path: Path) -> None:
    from test_motion import _write_av2
    from frozenlm.data.motion import build_motion_dataset
    root = tmp_path / "av2"
    _write_av2(root / "val" / "good")
    bad = _write_av2(root / "val" / "bad") / "scenario_hand.parquet"
    bad.write_bytes(b"PAR1" + bytes(40))
    cfg = {"name": "av2", "root": str(root), "future": 5}
    with pytest.raises(Exception) as exc_info:
        build_motion_dataset(_Section(cfg), "val")
    _raises_naming(exc_info, bad)
    ds = build_motion_dataset(_Section(cfg, on_error="skip"), "val")
    assert len(ds) == 1


def test_vqa_and_retrieval_images(tmp_path: Path) -> None:
    from frozenlm.data.errors import DropSkipped, FilePolicy
    from frozenlm.data.retrieval import RetrievalDataset
    from frozenlm.data.vqa import VQADataset
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    _png(good, 7)
    bad.write_bytes(b"not an image")
    records = [{"image": good, "question": "what?", "answers": ["yes"] * 10},
               {"image": bad, "question": "what?", "answers": ["no"] * 10}]
    ds = VQADataset([dict(r) for r in records], ["yes", "no"], T.PILToTensor())
    with pytest.raises(Exception) as exc_info:
        ds[1]
    _raises_naming(exc_info, bad)
    ds = VQADataset([dict(r) for r in records], ["yes", "no"], T.PILToTensor(), policy=FilePolicy("skip"))
    batch = DropSkipped()([ds[0], ds[1]])
    assert batch["index"].tolist() == [0] and batch["target"].tolist() == [[1.0, 0.0]]
    # retrieval evaluation ranks the whole split: unreadable images leave it with their captions
    rd = RetrievalDataset([good, bad, good], [["a x"], ["b y"], ["c z"]], T.PILToTensor(), "images",
                          policy=FilePolicy("skip"))
    assert len(rd) == 2 and rd.texts == ["a x", "c z"] and rd.image_texts == [[0], [1]]
    with pytest.raises(ValueError, match="every item of a batch"):
        DropSkipped()([None, None])
