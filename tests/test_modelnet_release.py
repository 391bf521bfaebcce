"""ModelNet40 as Point-BERT prepares it (issue 18, item 3).

Specification: lulutang0608/Point-BERT, ``datasets/ModelNetDataset.py`` (the paper's point-cloud code,
ziqipang/LM4VisualEncoding ``pointcloud_classification``, is a fork of Point-BERT and uses its data
preparation): with ``uniform=True`` each ``modelnet40_normal_resampled/<class>/<id>.txt`` is read whole
(``np.loadtxt(..., delimiter=',')``, float32), ``farthest_point_sample(point_set, npoints)`` picks
``npoints`` of them (start ``np.random.randint(0, N)``, squared distance on the first three columns,
distance array initialised to 1e10, ``argmax``), and ``pc_normalize`` centres/scales the selected
xyz. The result is cached as ``modelnet40_{split}_{npoints}pts_fps.dat`` =
``pickle.dump([list_of_points, list_of_labels])`` with float32 (npoints, 6) clouds and
``np.array([cls]).astype(np.int32)`` labels (Point-BERT's DATASET.md distributes these files).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.cli import main as cli_main
from frozenlm.config import load_config
from frozenlm.data.modelnet_dat import (MODELNET40_CLASSES, ForbiddenGlobalError, convert_modelnet_dat,
                                        load_modelnet_dat, read_modelnet_npz)
from frozenlm.data.pointcloud import build_pointcloud_dataset, modelnet_fps_starts, read_modelnet_txt
from frozenlm.errors import DataFileError
from frozenlm.ops.points import farthest_point_sample

REPO = Path(__file__).resolve().parents[1]


def reference_fps(point: np.ndarray, npoint: int, start: int) -> np.ndarray:
    """Point-BERT's ``farthest_point_sample`` written out from its description, with the random
    start passed in (Point-BERT draws it from the unseeded ``np.random``). Returns the indices."""
    xyz = point[:, :3]
    distance = np.ones((point.shape[0],)) * 1e10
    chosen = np.zeros((npoint,), dtype=np.int64)
    farthest = start
    for i in range(npoint):
        chosen[i] = farthest
        dist = np.sum((xyz - xyz[farthest, :]) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = int(np.argmax(distance, -1))
    return chosen


def reference_normalize(pc: np.ndarray) -> np.ndarray:
    """Point-BERT's ``pc_normalize``."""
    pc = pc - np.mean(pc, axis=0)
    return pc / np.max(np.sqrt(np.sum(pc ** 2, axis=1)))


# ------------------------------------------------------------------------------------------ FPS

def test_fps_equals_point_bert_reference_on_small_clouds() -> None:
    rng = np.random.default_rng(0)
    clouds = (rng.normal(size=(6, 300, 6)) * [1.0, 0.5, 2.0, 1, 1, 1]).astype(np.float32)
    starts = [0, 17, 299, 5, 123, 250]
    ours = farthest_point_sample(torch.from_numpy(np.ascontiguousarray(clouds[..., :3])), 120,
                                 start=torch.tensor(starts))
    for b in range(len(clouds)):
        ref = reference_fps(clouds[b], 120, starts[b])
        assert ours[b].tolist() == ref.tolist(), b
    # grid points have many equal distances: ties must go to the lowest index in both
    grid = np.stack(np.meshgrid(*[np.arange(5, dtype=np.float32)] * 3, indexing="ij"), -1).reshape(1, -1, 3)
    ours = farthest_point_sample(torch.from_numpy(grid), 40, start=torch.tensor([62]))
    assert ours[0].tolist() == reference_fps(grid[0], 40, 62).tolist()


def test_fps_start_points_are_seeded_per_file() -> None:
    starts = modelnet_fps_starts([0, 1, 2, 3], [10000, 10000, 10000, 50])
    assert starts == modelnet_fps_starts([0, 1, 2, 3], [10000, 10000, 10000, 50])  # reproducible
    assert all(0 <= s < n for s, n in zip(starts, [10000, 10000, 10000, 50])) and len(set(starts[:3])) == 3
    assert modelnet_fps_starts([2], [10000]) == [starts[2]]  # a file's start does not depend on the others


# ----------------------------------------------------------------------- text layout + FPS cache

def _write_resampled(root: Path, n_points: int = 300) -> dict[str, tuple[Path, int]]:
    """A small modelnet40_normal_resampled (lines x,y,z,nx,ny,nz): {shape id: (its file, its label)}."""
    from test_pointcloud import _write_modelnet_txt
    arrays = _write_modelnet_txt(root, n_points, seed=3,
                                 items=(("bed", "train"), ("airplane", "train"), ("bathtub", "train"), ("bed", "test")),
                                 make=lambda rng, n: np.hstack([rng.normal(size=(n, 3)) * [2.0, 1.0, 0.5] + 3.0,
                                                                rng.normal(size=(n, 3))]))
    names = ["airplane", "bathtub", "bed"]
    return {sid: (root / sid.rsplit("_", 1)[0] / f"{sid}.txt", names.index(sid.rsplit("_", 1)[0])) for sid in arrays}


def test_modelnet_text_fps_selection_as_point_bert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "modelnet40_normal_resampled"
    files = _write_resampled(root)
    ds = read_modelnet_txt(root, "train", num_points=64, progress=False, selection="fps")
    assert [int(v) for v in ds.labels] == [2, 0, 1]
    starts = modelnet_fps_starts(range(3), [300] * 3)
    for pos, sid in enumerate(["bed_0001", "airplane_0002", "bathtub_0003"]):
        point_set = np.loadtxt(files[sid][0], delimiter=",").astype(np.float32)
        want = reference_normalize(point_set[reference_fps(point_set, 64, starts[pos])][:, :3])
        np.testing.assert_allclose(ds.points[pos].numpy(), want, atol=1e-5)
    first = read_modelnet_txt(root, "train", num_points=64, progress=False, selection="first")
    assert not torch.equal(first.points, ds.points)  # the two selections differ ...
    caches = sorted(p.name for p in root.glob("modelnet40_train_64pts*.npz"))
    assert len(caches) == 2 and sum("_fps_" in c for c in caches) == 1  # ... and are cached apart
    with monkeypatch.context() as m:  # the cache is used: nothing is parsed again
        m.setattr(np, "loadtxt", lambda *a, **k: pytest.fail("a cached split was parsed again"))
        again = read_modelnet_txt(root, "train", num_points=64, progress=False, selection="fps")
    assert torch.equal(again.points, ds.points) and torch.equal(again.labels, ds.labels)
    with np.load(next(root.glob("modelnet40_train_64pts_fps_*.npz")), allow_pickle=False) as f:
        assert f["data"].shape == (3, 64, 3)  # a plain npz, no pickled objects


def test_modelnet_fps_cache_follows_npoints_and_files(tmp_path: Path) -> None:
    root = tmp_path / "mn"
    files = _write_resampled(root)
    a = read_modelnet_txt(root, "train", num_points=64, progress=False, selection="fps")
    b = read_modelnet_txt(root, "train", num_points=32, progress=False, selection="fps")
    assert b.points.shape == (3, 32, 3) and len(list(root.glob("modelnet40_train_*pts_fps_*.npz"))) == 2
    f = files["airplane_0002"][0]
    arr = np.loadtxt(f, delimiter=",")
    np.savetxt(f, arr[::-1], delimiter=",", fmt="%.6f")  # same size, other order: another FPS start point
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = read_modelnet_txt(root, "train", num_points=64, progress=False, selection="fps")
    assert len(list(root.glob("modelnet40_train_64pts_fps_*.npz"))) == 2  # a new cache, not the stale one
    assert torch.equal(c.points[0], a.points[0]) and not torch.equal(c.points[1], a.points[1])


def test_recipes_select_points_by_fps(tmp_path: Path) -> None:
    root = tmp_path / "mn"
    _write_resampled(root)
    from frozenlm.engine.task import task_schema
    cfg = load_config(REPO / "configs/pointcloud/modelnet40_1k.yaml",
                      [f"data.root={root}", "data.file_points=64", f"data.cache_dir={tmp_path / 'cache'}"],
                      schema_for=task_schema)
    assert cfg.data.point_selection == "fps"
    ds = build_pointcloud_dataset(cfg.data, "test")
    ref = read_modelnet_txt(root, "test", num_points=64, progress=False, selection="fps", cache=False)
    assert torch.equal(ds.points, ref.points)
    with pytest.raises(ValueError, match="point_selection must be one of fps|first"):
        build_pointcloud_dataset({**cfg.data, "point_selection": "random"}, "test")


# ---------------------------------------------------------------------- Point-BERT's .dat files

def _point_bert_lists(n: int = 5, p: int = 48) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(7)
    points = [(rng.normal(size=(p, 6)) * 2 + 1).astype(np.float32) for _ in range(n)]
    labels = [np.array([c]).astype(np.int32) for c in (0, 39, 7, 7, 23)[:n]]
    return points, labels


@pytest.mark.parametrize("protocol", [2, 3, 4, 5, "numpy1"])
def test_point_bert_dat_converts_and_loads(tmp_path: Path, protocol, capsys: pytest.CaptureFixture) -> None:
    points, labels = _point_bert_lists()
    root = tmp_path / "modelnet40_normal_resampled"
    root.mkdir()
    blob = pickle.dumps([points, labels], protocol=2 if protocol == "numpy1" else protocol)
    if protocol == "numpy1":  # as numpy 1.x writes it (Point-BERT's era): the function under numpy.core
        old = b"cnumpy._core.multiarray\n_reconstruct\n"
        assert old in blob
        blob = blob.replace(old, b"cnumpy.core.multiarray\n_reconstruct\n")
    dat = root / "modelnet40_train_48pts_fps.dat"
    dat.write_bytes(blob)
    data, labs = load_modelnet_dat(dat)
    assert data.shape == (5, 48, 6) and data.dtype == np.float32 and np.array_equal(data, np.stack(points))
    assert labs.tolist() == [0, 39, 7, 7, 23]
    out = root / "modelnet40_train_48pts_fps.npz"
    cli_main(["convert-modelnet", str(dat), str(out)])
    assert "5 clouds x 48 points, 40 classes" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as f:  # everything in it reads without pickle
        assert sorted(f.files) == ["classes", "data", "format", "label", "meta"]
    ds = build_pointcloud_dataset({"name": "modelnet40_fps", "root": str(root), "file_points": 48,
                                   "num_classes": 40}, "train")
    assert ds.classes == list(MODELNET40_CLASSES) and [int(v) for v in ds.labels] == [0, 39, 7, 7, 23]
    for i, pts in enumerate(points):  # xyz only, normalised as Point-BERT's _get_item does
        np.testing.assert_allclose(ds[i][0].numpy(), reference_normalize(pts[:, :3]), atol=1e-6)


def test_dat_conversion_takes_the_shape_names_beside_it(tmp_path: Path) -> None:
    points, labels = _point_bert_lists(n=3)
    labels = [np.array([c]).astype(np.int32) for c in (0, 2, 1)]
    (tmp_path / "modelnet40_shape_names.txt").write_text("a\nb\nc\n")
    dat = tmp_path / "x.dat"
    dat.write_bytes(pickle.dumps([points[:3], labels]))
    convert_modelnet_dat(dat, tmp_path / "x.npz")
    assert read_modelnet_npz(tmp_path / "x.npz")[2] == ["a", "b", "c"]
    dat.write_bytes(pickle.dumps([points[:3], [np.array([5]).astype(np.int32)] * 3]))
    with pytest.raises(DataFileError, match="labels span 5..5, outside the 3 shape names"):
        convert_modelnet_dat(dat, tmp_path / "y.npz")
    assert not (tmp_path / "y.npz").exists()


class _RunsCommand:
    """What an attacker would put in a .dat: unpickling it with plain pickle runs ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", ["system", "exec", "label"])
def test_dat_with_forbidden_global_is_refused_without_running_it(tmp_path: Path, payload: str,
                                                                  capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    points, labels = _point_bert_lists(n=2)
    if payload == "system":
        obj, name = [[points[0], _RunsCommand(marker)], labels], r"(posix|os)\.system"
    elif payload == "exec":
        obj, name = [points, labels, _RunsExec(marker)], r"builtins\.exec"
    else:  # hidden where a label should be
        obj, name = [points, [labels[0], _RunsCommand(marker)]], r"(posix|os)\.system"
    dat = tmp_path / "modelnet40_test_8192pts_fps.dat"
    dat.write_bytes(pickle.dumps(obj))
    with pytest.raises(ForbiddenGlobalError, match=f"{dat}: the pickle names the global {name}, which is not allowed"):
        load_modelnet_dat(dat)
    assert not marker.exists()
    with pytest.raises(SystemExit) as e:
        cli_main(["convert-modelnet", str(dat), str(tmp_path / "out.npz")])
    assert e.value.code == 2 and "not allowed" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out.npz").exists()


def test_dat_layout_errors(tmp_path: Path) -> None:
    points, labels = _point_bert_lists(n=2)
    cases = {
        "dict": ({"points": 1}, "expected the Point-BERT layout"),
        "count": ([points, labels[:1]], "2 clouds but 1 labels"),
        "ints": ([[np.zeros((4, 6), np.int32)] * 2, labels], "point entry 0 is ndarray int32"),
        "label": ([points, [np.array([1.5])] * 2], "label entry 0"),
        "shapes": ([[points[0], points[0][:10]], labels], "clouds differ in shape"),
    }
    for key, (obj, msg) in cases.items():
        dat = tmp_path / f"{key}.dat"
        dat.write_bytes(pickle.dumps(obj))
        with pytest.raises(DataFileError, match=msg):
            load_modelnet_dat(dat)
    (tmp_path / "junk.dat").write_bytes(b"not a pickle at all")
    with pytest.raises(DataFileError, match="not a readable Point-BERT ModelNet pickle"):
        load_modelnet_dat(tmp_path / "junk.dat")
    (tmp_path / "modelnet40_test_8192pts_fps.dat").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="convert it first: frozenlm convert-modelnet"):
        build_pointcloud_dataset({"name": "modelnet40_fps", "root": str(tmp_path)}, "test")
    np.savez(tmp_path / "modelnet40_train_8192pts_fps.npz", data=np.zeros((1, 2, 3)))
    with pytest.raises(DataFileError, match="not a converted ModelNet file"):
        build_pointcloud_dataset({"name": "modelnet40_fps", "root": str(tmp_path)}, "train")
