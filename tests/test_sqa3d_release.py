"""The SQA3D release as downloaded (issue 18, items 1 and 2): SQA3D's situation frame and the scene
files of its ScanNet export, on small files written to the official specification:

- questions / annotations json: the SQA3D release, github.com/SilongYong/SQA3D
  ``LLM/v1_balanced_{questions,sqa_annotations}_test_scannetv2.json`` (same fields and nesting);
- the situation transform: SQA3D ``ScanQA/lib/sepdataset.py`` (``bs_center`` = bounding-box centre of
  ``<scene>_vert.npy`` xyz; ``M`` = the ``axisAlignment`` line of ``scans/<scene>/<scene>.txt``;
  position' = M [position + bs_center, 1], R' = M[:3, :3] R(q), q = (_x, _y, _z, _w) as scipy ``from_quat``);
- the scene files: ScanRefer ``data/scannet/batch_load_scannet_data.py`` + ``load_scannet_data.py``
  (github.com/daveredrum/ScanRefer, run by SQA3D's ScanQA README): ``<scene>_vert.npy`` (N, 9) float32
  xyz, rgb 0..255, normals; ``<scene>_aligned_vert.npy`` the same rows with xyz through M;
- the meta file: ScanNet's ``<scene>.txt`` (``key = value`` lines, ``axisAlignment`` 16 numbers row-major).

The expected targets are computed here independently: the agent stands on a vertex and faces another,
so after the transform it must stand on (and face) the same vertices of the aligned cloud; a tilted
quaternion is checked against scipy's Rotation.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.errors import DataFileError
from frozenlm.data.sqa3d import load_scene_points, read_sqa3d_split
from frozenlm.tasks.sqa3d import SituatedQA

N = 400  # vertices per scene (the export keeps 50,000)
SCENES = ("scene0000_00", "scene0001_00")


def _axis_alignment(theta: float, t: tuple[float, float, float]) -> np.ndarray:
    """A ScanNet-style alignment: a rotation about z, then a translation."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0, t[0]], [s, c, 0, t[1]], [0, 0, 1, t[2]], [0, 0, 0, 1]], dtype=np.float64)


MATRICES = {SCENES[0]: _axis_alignment(0.3316, (-5.38439, -2.87178, -0.06435)),
            SCENES[1]: _axis_alignment(-2.1, (3.2, -1.7, -0.02))}


def _write_meta(scans: Path, sid: str, matrix: np.ndarray | None) -> Path:
    path = scans / sid / f"{sid}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [] if matrix is None else ["axisAlignment = " + " ".join(f"{v:.6f}" for v in matrix.ravel()) + " "]
    lines += ["colorHeight = 968", "colorWidth = 1296", "fx_color = 1170.187988", "numColorFrames = 5578",
              "sceneType = Apartment"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _raw_vertices(seed: int) -> np.ndarray:
    """(N, 9) like read_mesh_vertices_rgb_normal: raw ScanNet xyz (not centred), rgb 0..255, unit normals."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform((0, 0, 0), (6, 5, 3), (N, 3)) + (2.0, -1.0, 0.1)
    rgb = rng.integers(0, 256, (N, 3)).astype(np.float64)
    nrm = rng.normal(size=(N, 3))
    return np.c_[xyz, rgb, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)].astype(np.float32)


def _aligned(raw: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """What load_scannet_data.export writes: xyz through M (homogeneous, row vectors times M^T)."""
    out = raw.copy()
    out[:, :3] = (np.c_[raw[:, :3].astype(np.float64), np.ones(len(raw))] @ matrix.T)[:, :3]
    return out


def _centre(xyz: np.ndarray) -> np.ndarray:
    xyz = xyz.astype(np.float64)
    return (xyz.max(0) + xyz.min(0)) / 2


# (scene, vertex the agent stands on, vertex it faces) for every question; the val split is checked
STANDS = {"train": [(SCENES[0], 5, 17), (SCENES[1], 3, 40)],
          "val": [(SCENES[0], 11, 250), (SCENES[1], 7, 99), (SCENES[0], 300, 2)]}


def _write_release(root: Path, forms: tuple[str, ...] = ("aligned_vert", "vert"), meta: bool = True) -> dict:
    """The release json in ``root``, scene files in ``root/scannet_data``, meta files in ``root/scans``.
    Returns the raw vertices and the annotated situations."""
    data = root / "scannet_data"
    data.mkdir(parents=True, exist_ok=True)
    raws = {sid: _raw_vertices(i) for i, sid in enumerate(SCENES)}
    for sid, raw in raws.items():
        aligned = _aligned(raw, MATRICES[sid])
        if "vert" in forms:
            np.save(data / f"{sid}_vert.npy", raw)
        if "aligned_vert" in forms:
            np.save(data / f"{sid}_aligned_vert.npy", aligned)
        if "npz" in forms:
            np.savez(data / f"{sid}.npz", points=aligned[:, :6])
        if "pth" in forms:
            torch.save(torch.from_numpy(aligned[:, :6]), data / f"{sid}.pth")
        if meta:
            _write_meta(root / "scans", sid, MATRICES[sid])
    qid = 220602000000
    situations = {}
    for split, stands in STANDS.items():
        questions, annotations = [], []
        for sid, iv, iw in stands:
            qid += 1
            raw, c = raws[sid], _centre(raws[sid][:, :3])
            d = raw[iw, :3].astype(np.float64) - raw[iv, :3]
            phi = math.atan2(d[1], d[0])  # heading in the raw frame; SQA3D's quaternions turn about z
            pos = raw[iv, :3].astype(np.float64) - c  # SQA3D positions: relative to the raw bbox centre
            questions.append({"scene_id": sid, "situation": "I am standing by the ottoman facing the piano.",
                              "alternative_situation": [], "question": "What is in front of me?", "question_id": qid})
            annotations.append({"scene_id": sid, "question_type": "N/A", "answer_type": "other", "question_id": qid,
                                "answers": [{"answer": "piano", "answer_confidence": "yes", "answer_id": 1}],
                                "rotation": {"_x": 0, "_y": 0, "_z": math.sin(phi / 2), "_w": math.cos(phi / 2)},
                                "position": {"x": pos[0], "y": pos[1], "z": pos[2]}})
            situations[qid] = (sid, iv, iw, pos, phi)
        info = {"description": "This is v1.0 of the SQA3D dataset.", "version": "1.0"}
        (root / f"v1_balanced_questions_{split}_scannetv2.json").write_text(json.dumps(
            {"info": info, "data_type": "scannet", "data_subtype": "v2", "questions": questions}))
        (root / f"v1_balanced_sqa_annotations_{split}_scannetv2.json").write_text(json.dumps(
            {"info": info, "data_type": "scannet", "data_subtype": "v2", "annotations": annotations}))
    return {"raw": raws, "situations": situations}


def _cfg(root: Path, *extra: str):
    return load_config("configs/sqa3d/sqa3d.yaml", [f"data.root={root}", f"data.scene_dir={root / 'scannet_data'}",
                                                     f"data.meta_dir={root / 'scans'}", f"data.num_points={N}",
                                                     f"data.scene_points={N}", *extra])


def _val(root: Path, *extra: str):
    return SituatedQA().build_dataset(_cfg(root, *extra), "val")


def _heading(v: np.ndarray) -> list[float]:
    return [v[0] / math.hypot(v[0], v[1]), v[1] / math.hypot(v[0], v[1])]


def test_aligned_situation_lands_on_the_same_vertices_of_the_aligned_cloud(tmp_path: Path) -> None:
    rel = _write_release(tmp_path)
    assert _cfg(tmp_path).data.situation_frame == "aligned"  # the default, what SQA3D trains on
    ds = _val(tmp_path)
    for i, s in enumerate(ds.samples):
        sid, iv, iw, pos, _ = rel["situations"][s["question_id"]]
        aligned = _aligned(rel["raw"][sid], MATRICES[sid])
        item = ds[i]
        # the model sees the export's aligned cloud, colours / 255, normals dropped
        np.testing.assert_allclose(item["points"].numpy(), np.c_[aligned[:, :3], aligned[:, 3:6] / 255], atol=1e-6)
        np.testing.assert_allclose(item["position"].numpy(), aligned[iv, :3], atol=1e-4)
        np.testing.assert_allclose(item["orientation"].numpy(), _heading(aligned[iw, :3] - aligned[iv, :3]), atol=1e-5)
        assert np.abs(item["position"].numpy() - pos).max() > 0.5  # the annotation as is would be far off
    assert ds.skipped == {"unknown_scene": 0, "empty_cloud": 0, "missing_meta": 0}


def test_tilted_quaternion_follows_scipy(tmp_path: Path) -> None:
    """R' = M[:3, :3] R(q) with q scalar-last (SQA3D uses scipy); the heading is R's rotated x axis."""
    Rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    rel = _write_release(tmp_path)
    q = np.array([0.21, -0.33, 0.52, 0.76])
    q /= np.linalg.norm(q)
    path = tmp_path / "v1_balanced_sqa_annotations_val_scannetv2.json"
    obj = json.loads(path.read_text())
    obj["annotations"][0]["rotation"] = dict(zip(("_x", "_y", "_z", "_w"), q.tolist()))
    path.write_text(json.dumps(obj))
    ds = _val(tmp_path)
    sid, iv, _, pos, _ = rel["situations"][ds.samples[0]["question_id"]]
    m = MATRICES[sid]
    expect = Rotation.from_matrix(m[:3, :3]) * Rotation.from_quat(q)
    yaw = expect.as_euler("ZYX")[0]
    assert ds[0]["orientation"].tolist() == pytest.approx([math.cos(yaw), math.sin(yaw)], abs=1e-6)
    c = _centre(rel["raw"][sid][:, :3])
    assert ds[0]["position"].tolist() == pytest.approx((m[:3, :3] @ (pos + c) + m[:3, 3]).tolist(), abs=1e-5)


def test_missing_meta_file_is_an_error_naming_scene_and_path(tmp_path: Path) -> None:
    _write_release(tmp_path)
    meta = tmp_path / "scans" / SCENES[1] / f"{SCENES[1]}.txt"
    meta.unlink()
    with pytest.raises(ValueError, match=rf"1 scenes have no ScanNet meta file.*{SCENES[1]}.*{re.escape(str(meta))}"
                                         r".*data\.meta_dir.*data\.situation_frame=raw"):
        _val(tmp_path)
    with pytest.warns(UserWarning, match="1 questions affected"):
        ds = _val(tmp_path, "data.on_missing=skip")
    assert [s["scene_id"] for s in ds.samples] == [SCENES[0], SCENES[0]] and ds.skipped["missing_meta"] == 1
    # without data.meta_dir the meta files are looked for in data.scene_dir, and the error says where
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "scannet_data" / SCENES[0] / f"{SCENES[0]}.txt"))):
        SituatedQA().build_dataset(_cfg(tmp_path, "data.meta_dir=null"), "val")


def test_meta_file_without_or_with_a_broken_axis_alignment(tmp_path: Path) -> None:
    rel = _write_release(tmp_path)
    _write_meta(tmp_path / "scans", SCENES[0], None)  # SQA3D: no axisAlignment line means the identity
    with pytest.warns(UserWarning, match=rf"1 ScanNet meta files have no axisAlignment line.*{SCENES[0]}"):
        ds = _val(tmp_path)
    raw = rel["raw"][SCENES[0]]
    i = next(i for i, s in enumerate(ds.samples) if s["scene_id"] == SCENES[0])
    _, iv, _, pos, _ = rel["situations"][ds.samples[i]["question_id"]]
    np.testing.assert_allclose(ds[i]["position"].numpy(), raw[iv, :3], atol=1e-4)
    bad = tmp_path / "scans" / SCENES[1] / f"{SCENES[1]}.txt"
    bad.write_text("axisAlignment = " + " ".join(["1"] * 15) + "\nsceneType = Office\n")
    with pytest.raises(DataFileError, match=re.escape(str(bad)) + ".*16 numbers"):
        _val(tmp_path)


def test_unreadable_raw_vertices_follow_on_error(tmp_path: Path) -> None:
    _write_release(tmp_path)
    bad = tmp_path / "scannet_data" / f"{SCENES[1]}_vert.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataFileError, match=re.escape(str(bad))):
        _val(tmp_path)
    ds = _val(tmp_path, "+data.on_error=skip")
    assert {s["scene_id"] for s in ds.samples} == {SCENES[0]} and ds.skipped["unreadable_scene"] == 1


def test_raw_frame_only_when_asked_for(tmp_path: Path) -> None:
    rel = _write_release(tmp_path, meta=False)  # no meta files at all: only the raw frame works
    with pytest.raises(ValueError, match="no ScanNet meta file"):
        _val(tmp_path)
    ds = _val(tmp_path, "data.situation_frame=raw")
    for i, s in enumerate(ds.samples):
        sid, iv, iw, pos, phi = rel["situations"][s["question_id"]]
        raw = rel["raw"][sid]
        centred = raw[:, :3] - _centre(raw[:, :3])
        item = ds[i]
        assert s["position"] == pytest.approx(pos.tolist())  # the annotation as it is
        np.testing.assert_allclose(item["points"][:, :3].numpy(), centred, atol=1e-5)  # _vert.npy, centred
        np.testing.assert_allclose(item["position"].numpy(), centred[iv], atol=1e-5)
        assert item["orientation"].tolist() == pytest.approx([math.cos(phi), math.sin(phi)], abs=1e-6)
    with pytest.raises(ValueError, match="data.situation_frame must be one of aligned|raw"):
        _val(tmp_path, "data.situation_frame=world")


@pytest.mark.parametrize("forms", [("npz",), ("pth",), ("npz", "vert"), ("aligned_vert",)])
def test_every_aligned_file_form_gives_the_same_targets(tmp_path: Path, forms: tuple[str, ...]) -> None:
    """Without <scene>_vert.npy the raw centre comes from the aligned points taken back through M^-1."""
    ref = _val(_mk(tmp_path / "ref", ("aligned_vert", "vert")))
    ds = _val(_mk(tmp_path / "x", forms))
    for a, b in zip(ref, ds):
        np.testing.assert_allclose(b["position"].numpy(), a["position"].numpy(), atol=1e-4)
        np.testing.assert_allclose(b["orientation"].numpy(), a["orientation"].numpy(), atol=1e-6)
        np.testing.assert_allclose(b["points"].numpy(), a["points"].numpy(), atol=1e-5)


def _mk(root: Path, forms: tuple[str, ...]) -> Path:
    _write_release(root, forms)
    return root


def test_which_file_is_read_when_several_exist(tmp_path: Path) -> None:
    rel = _write_release(tmp_path, ("aligned_vert", "vert"))
    data = tmp_path / "scannet_data"
    for sid in SCENES:  # a decoy with the generic name: the export's file of the frame wins
        np.save(data / f"{sid}.npy", np.zeros((N, 6), np.float32))
    ds = _val(tmp_path)
    assert ds[0]["points"][:, :3].abs().sum() > 0
    raw_ds = _val(tmp_path, "data.situation_frame=raw")
    sid = raw_ds.samples[0]["scene_id"]
    raw = rel["raw"][sid]
    np.testing.assert_allclose(raw_ds[0]["points"][:, :3].numpy(), raw[:, :3] - _centre(raw[:, :3]), atol=1e-5)
    # with only the other frame's export file the scene is not found, and the message says why
    for sid in SCENES:
        (data / f"{sid}.npy").unlink()
        (data / f"{sid}_aligned_vert.npy").unlink()
    with pytest.raises(ValueError, match=r"2 scene ids have no point-cloud file.*<scene_id>_aligned_vert\.npy.*"
                                         r"only the other frame's export file"):
        _val(tmp_path)
    assert len(_val(tmp_path, "data.situation_frame=raw")) == 3


def test_export_colours_are_always_0_to_255(tmp_path: Path) -> None:
    """The export's rgb is 0..255 even in a dark scene whose values never exceed 1."""
    raw = _raw_vertices(0)
    raw[:, 3:6] = np.random.default_rng(1).integers(0, 2, (N, 3))
    np.save(tmp_path / "scene0000_00_vert.npy", raw)
    np.save(tmp_path / "scene0000_00.npy", raw[:, :6])
    assert load_scene_points(tmp_path / "scene0000_00_vert.npy")[:, 3:].max() == pytest.approx(1 / 255)
    assert load_scene_points(tmp_path / "scene0000_00.npy")[:, 3:].max() == 1.0  # a generic file: already 0..1
    assert load_scene_points(tmp_path / "scene0000_00_vert.npy").shape == (N, 6)  # normals dropped


def test_reader_keeps_the_annotated_quaternion(tmp_path: Path) -> None:
    rel = _write_release(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = read_sqa3d_split(tmp_path, "val")
    _, _, _, pos, phi = rel["situations"][samples[0]["question_id"]]
    assert samples[0]["rotation"] == pytest.approx([0, 0, math.sin(phi / 2), math.cos(phi / 2)])
    assert samples[0]["position"] == pytest.approx(pos.tolist()) and samples[0]["yaw"] == pytest.approx(phi)
