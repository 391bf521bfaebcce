"""Official releases as downloaded and extracted, read through the entry point their configs use
(issue 18, "What it must show"): Argoverse 2 and Argoverse 1 motion forecasting, Flickr30k with
Karpathy's split, ImageNet-A / -R / -Sketch / -C and ImageNet-S50.

Each test writes the release's own layout in miniature, from these specifications:

* Argoverse 2 (argoverse/av2-api): ``DOWNLOAD.md`` (the ``motion-forecasting/`` bucket holds
  ``train/ val/ test/``; ``train.tar`` extracts to ``train/``), ``tutorials/
  generate_forecasting_scenario_visualizations.py`` (``<split>/<scenario_id>/scenario_<id>.parquet``
  with ``log_map_archive_<id>.json`` beside it), ``src/av2/datasets/motion_forecasting/
  scenario_serialization.py`` (one parquet row per track and timestep: observed, track_id, object_type,
  object_category, timestep, position_x, position_y, heading, velocity_x, velocity_y, scenario_id,
  start_timestamp, end_timestamp, num_timestamps, focal_track_id, city), ``src/av2/map/map_api.py``
  ``from_json`` and ``src/av2/map/lane_segment.py`` ``from_dict`` (the map JSON keys). The parquet is
  written here with pandas from those columns, not with av2's serializer.
* Argoverse 1 (argoverse/argoverse-api): ``tests/test_data/forecasting/0.csv`` (columns TIMESTAMP,
  TRACK_ID, OBJECT_TYPE, X, Y, CITY_NAME; OBJECT_TYPE AGENT / AV / OTHERS),
  ``argoverse/data_loading/argoverse_forecasting_loader.py`` (a split is a folder of ``<seq>.csv``) and
  ``demo_usage/argoverse_forecasting_tutorial.ipynb`` (``forecasting_sample/data/``); the extracted
  ``forecasting_{train,val,test}_v1.1.tar.gz`` give ``train/data/``, ``val/data/`` and ``test_obs/data/``
  (ZikangZhou/HiVT ``README.md``; uber-research/LaneGCN ``get_data.sh`` + ``lanegcn.py``).
* Flickr30k: Karpathy's ``dataset_flickr30k.json`` (karpathy/neuraltalk ``imagernn/data_provider.py``:
  ``{"images": [{"filename", "split", "imgid", "sentids", "sentences": [{"raw", "tokens", "imgid",
  "sentid"}]}]}``) next to the ``flickr30k-images/<filename>`` folder (dandelin/ViLT ``DATA.md``, the
  preparation METER's data follows); relevance by image id as in dandelin/ViLT
  ``vilt/modules/objectives.py`` ``compute_irtr_recall``.
* ImageNet-A / -R: ``imagenet-a.tar`` / ``imagenet-r.tar`` extract to ``imagenet-a/<wnid>/*.jpg`` (200
  wnids) plus a ``README.txt`` (hendrycks/natural-adv-examples ``README.md`` + ``eval.py``,
  hendrycks/imagenet-r ``README.md`` + ``eval.py``: ImageFolder over the folder, logits masked to the 200
  wnids). ImageNet-Sketch: ``ImageNet-Sketch.zip`` extracts to ``sketch/<wnid>/*.JPEG`` for the 1,000
  classes (HaohanWang/ImageNet-Sketch ``README.md``). ImageNet-C: the five Zenodo tars
  (``blur noise digital weather extra``) extract to ``<corruption>/<severity 1-5>/<wnid>/*.JPEG``, the
  benchmark's 15 corruptions plus 4 held-out extras (hendrycks/robustness ``ImageNet-C/test.py``).
* ImageNet-S50 (LUSSeg/ImageNet-S ``README.md``): ``ImageNetS50/validation/<wnid>/<name>.JPEG`` and
  ``validation-segmentation/<wnid>/<name>.png``, RGB masks with class id R + 256 G, 0 = other
  (background), 1000 = ignored.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from frozenlm.config import load_config as _load_config
from frozenlm.engine.task import task_schema
from frozenlm.errors import DataFileError

AV2_CFG = "configs/motion/av2_vectornet.yaml"
AV1_CFG = "configs/motion/argoverse_vectornet.yaml"
F30K_CFG = "configs/retrieval/flickr30k_meter.yaml"
IMAGENET_CFG = "configs/image/imagenet_vit_s.yaml"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_config(path: str, overrides: list[str]):
    """The config as `frozenlm train` loads it: every key checked against the task's schema."""
    return _load_config(path, overrides, schema_for=task_schema)


def _jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, format="JPEG", quality=95)


def _assert_colour(x: torch.Tensor, rgb: tuple[int, int, int], mean, std, tol: float = 3 / 255) -> None:
    """A solid-colour image after resize / crop / normalise: every pixel is (c / 255 - mean) / std."""
    for c in range(3):
        want = (rgb[c] / 255 - mean[c]) / std[c]
        assert torch.allclose(x[c], torch.full_like(x[c], want), atol=tol / std[c]), (c, float(x[c].mean()), want)


# ----------------------------------------------------------------------------- Argoverse 2

def _av2_scenario(split_dir: Path, sid: str, x0: float, n_steps: int = 110, observed: int = 50) -> None:
    """One scenario folder as the release ships it. The focal track drives north at 10 m/s (1 m per
    0.1 s step) from (x0, 2000) with heading pi/2; the AV follows 8 m behind; one lane runs north 2 m
    west of the focal track."""
    rows = []
    for tid, otype, cat, dy in (("AV", "vehicle", 1, -8.0), ("31337", "vehicle", 3, 0.0)):
        for t in range(n_steps):
            rows.append({"observed": t < observed, "track_id": tid, "object_type": otype, "object_category": cat,
                         "timestep": t, "position_x": x0, "position_y": 2000.0 + dy + t, "heading": math.pi / 2,
                         "velocity_x": 0.0, "velocity_y": 10.0})
    df = pd.DataFrame(rows)
    df["scenario_id"] = sid
    df["start_timestamp"] = 315_966_000_000_000_000
    df["end_timestamp"] = 315_966_000_000_000_000 + (n_steps - 1) * 100_000_000
    df["num_timestamps"] = n_steps
    df["focal_track_id"] = "31337"
    df["city"] = "PIT"
    d = split_dir / sid
    d.mkdir(parents=True)
    df.to_parquet(d / f"scenario_{sid}.parquet")
    ys = [1950.0, 2050.0, 2150.0]
    lane = {"id": 4242, "is_intersection": False, "lane_type": "VEHICLE",
            "left_lane_boundary": [{"x": x0 - 3.8, "y": y, "z": 0.0} for y in ys],
            "right_lane_boundary": [{"x": x0 - 0.2, "y": y, "z": 0.0} for y in ys],
            "left_lane_mark_type": "SOLID_WHITE", "right_lane_mark_type": "DASHED_WHITE",
            "left_neighbor_id": None, "right_neighbor_id": None, "predecessors": [], "successors": []}
    area = {"id": 7, "area_boundary": [{"x": x0 - 10, "y": 1900.0, "z": 0.0}, {"x": x0 + 10, "y": 1900.0, "z": 0.0},
                                       {"x": x0 + 10, "y": 2200.0, "z": 0.0}]}
    (d / f"log_map_archive_{sid}.json").write_text(json.dumps(
        {"pedestrian_crossings": {}, "lane_segments": {"4242": lane}, "drivable_areas": {"7": area}}))


def test_argoverse2_release_as_extracted(tmp_path: Path) -> None:
    """`train.tar` / `val.tar` extracted into one folder: data.root is that folder, the recipe reads it."""
    pytest.importorskip("av2")
    from frozenlm.tasks.motion import MotionForecasting
    root = tmp_path / "motion-forecasting"
    train_ids = ["0a0ef009-9d44-4399-99e6-50004d345f34", "00a0ec58-1fb9-4a2b-bfd7-f4f5f6f8a1f2"]
    for k, sid in enumerate(train_ids):
        _av2_scenario(root / "train", sid, x0=1000.0 + 500 * k)
    _av2_scenario(root / "val", "ffb6c1ac-5ef3-4d3a-9f1e-7d3c1b1b2f0e", x0=3000.0)
    cfg = load_config(AV2_CFG, [f"data.root={root}", "num_workers=0"])
    task = MotionForecasting()
    train, val = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    assert len(train) == 2 and len(val) == 1
    assert train.ids == sorted(train_ids)  # scenario folders in sorted order
    s = train[0]  # 00a0ec58...: x0 = 1500
    # focal frame: origin = focal position at the last observed step (t = 49), heading north -> +x
    torch.testing.assert_close(s["origin"], torch.tensor([1500.0, 2049.0], dtype=torch.float64))
    assert math.isclose(float(s["angle"]), math.pi / 2, abs_tol=1e-9)
    torch.testing.assert_close(s["target"], torch.tensor([[float(k + 1), 0.0] for k in range(60)]))
    vec, mask = s["vectors"], s["vector_mask"]
    assert int(s["num_agents"]) == 2 and vec.shape[0] == 3  # focal, AV, one lane
    assert mask.sum(1).tolist() == [49, 49, 9]  # 50 observed steps -> 49 vectors; av2 centerline: 10 points
    torch.testing.assert_close(vec[0, 48, :4], torch.tensor([-1.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec[1, 48, 2:4], torch.tensor([-8.0, 0.0]), atol=1e-5, rtol=0)  # 8 m behind
    assert vec[0, :, 6].eq(1).all() and vec[1:, :, 6].eq(0).all()  # is_focal
    assert vec[2, :9, 5].eq(1).all()  # is_lane
    torch.testing.assert_close(vec[2, :9, 1], torch.full((9,), 2.0), atol=1e-4, rtol=0)  # 2 m to the left
    # test/ ships the 50 observed steps only: no future to score, said per file
    from frozenlm.data.motion import MotionDataError
    _av2_scenario(root / "test", "0b0a2bb7-c4f4-44cd-958a-9ee15cb34aca", x0=100.0, n_steps=50)
    with pytest.raises(MotionDataError, match=r"scenario_0b0a2bb7.*future"):
        task.build_dataset(cfg, "test")


# ----------------------------------------------------------------------------- Argoverse 1

def _av1_csv(path: Path, x0: float, n_steps: int = 50, city: str = "PIT") -> None:
    """One sequence: the AGENT drives east at 0.5 m per step from (x0, 100), the AV 10 m behind,
    one OTHERS track parked 5 m to the agent's left (north)."""
    rows = []
    for t in range(n_steps):
        ts = 315_969_629.0 + 0.1 * t
        for tid, typ, x, y in (("00000000-0000-0000-0000-000000000000", "AV", x0 - 10 + 0.5 * t, 100.0),
                               ("00000000-0000-0000-0000-000000007735", "AGENT", x0 + 0.5 * t, 100.0),
                               ("00000000-0000-0000-0000-000000008206", "OTHERS", x0 + 5.0, 105.0)):
            rows.append({"TIMESTAMP": ts, "TRACK_ID": tid, "OBJECT_TYPE": typ, "X": x, "Y": y, "CITY_NAME": city})
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["TIMESTAMP", "TRACK_ID", "OBJECT_TYPE", "X", "Y", "CITY_NAME"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


@pytest.mark.filterwarnings("ignore:data.lanes_file is not set")
def test_argoverse1_release_as_extracted(tmp_path: Path) -> None:
    """`forecasting_{train,val,test}_v1.1.tar.gz` extracted into one folder: train/data, val/data, test_obs/data."""
    from frozenlm.tasks.motion import MotionForecasting
    root = tmp_path / "argoverse1"
    _av1_csv(root / "train" / "data" / "1.csv", 200.0)
    _av1_csv(root / "train" / "data" / "2.csv", 300.0, city="MIA")
    _av1_csv(root / "val" / "data" / "3.csv", 400.0)
    _av1_csv(root / "test_obs" / "data" / "4.csv", 500.0, n_steps=20)  # the test split has the 2 s history only
    cfg = load_config(AV1_CFG, [f"data.root={root}", "num_workers=0"])
    task = MotionForecasting()
    with pytest.warns(UserWarning, match="lanes_file is not set.*agents only"):
        train, val = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    assert len(train) == 2 and len(val) == 1 and train.ids == ["1", "2"]
    s = train[0]
    torch.testing.assert_close(s["origin"], torch.tensor([209.5, 100.0], dtype=torch.float64))  # AGENT at t = 19
    assert abs(float(s["angle"])) < 1e-9  # heading east: the displacement of the last steps
    torch.testing.assert_close(s["target"], torch.tensor([[0.5 * (k + 1), 0.0] for k in range(30)]),
                               atol=1e-5, rtol=0)
    vec, mask = s["vectors"], s["vector_mask"]
    assert int(s["num_agents"]) == 3 and mask.sum(1).tolist() == [19, 19, 19]  # no lanes without data.lanes_file
    torch.testing.assert_close(vec[0, 18, :4], torch.tensor([-0.5, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    # nearest first: the parked car (5.3 m away, left = +y in the agent's frame), then the AV (10 m behind)
    torch.testing.assert_close(vec[1, 18, 2:4], torch.tensor([-4.5, 5.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec[2, 18, 2:4], torch.tensor([-10.0, 0.0]), atol=1e-5, rtol=0)
    # the unscored test split: a clear error, not "no test split"
    with pytest.raises(ValueError, match="test_obs.*no futures"):
        task.build_dataset(cfg, "test")
    # lanes exported from the AV1 map (data.lanes_file): one centerline 2 m left of the agent's path
    lanes = tmp_path / "av1_centerlines.json"
    lanes.write_text(json.dumps({"PIT": [[[150.0, 102.0], [250.0, 102.0]]], "MIA": [[[0.0, 0.0], [1.0, 0.0]]]}))
    with_lanes = task.build_dataset(load_config(AV1_CFG, [f"data.root={root}", f"data.lanes_file={lanes}"]), "train")
    v = with_lanes[0]["vectors"]
    assert v.shape[0] == 4 and v[3, 0, 5] == 1  # the lane after the 3 agents
    torch.testing.assert_close(v[3, 0, :4], torch.tensor([-59.5, 2.0, 40.5, 2.0]), atol=1e-5, rtol=0)
    # a split folder with CSVs both flat and in data/ is refused rather than read twice
    _av1_csv(root / "val" / "5.csv", 600.0)
    with pytest.raises(FileNotFoundError, match="itself and in data/"):
        task.build_dataset(cfg, "val")


def test_argoverse1_whole_city_lane_file_is_cut_to_each_scene_exactly(tmp_path: Path) -> None:
    """A lane file of a whole city's map (the AV1 export of docs/motion.md) is cut per scene with one
    vectorised distance test: the polylines equal those of the plain loop over every centerline."""
    from frozenlm.data.motion import CityLanes, read_av1_csv, vectorize
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 400, (3000, 2))
    lines = [s + np.linspace(0, 20, 6)[:, None] * rng.normal(size=2) for s in starts]
    lines[5] = np.array([[239.5, 150.0], [239.5, 160.0]])  # 50.0 m from the agent of 1.csv: on the boundary
    for k, x0 in enumerate((180.0, 230.0, 300.0)):
        _av1_csv(tmp_path / f"{k}.csv", x0)
        slow = read_av1_csv(tmp_path / f"{k}.csv", 20, {"PIT": lines})
        fast = read_av1_csv(tmp_path / f"{k}.csv", 20, {"PIT": CityLanes(lines)}, lane_radius=50.0)
        assert 0 < len(fast.lanes) < len(slow.lanes) == 3000
        a, b = vectorize(slow, 20, 30, 50.0, 32, 64), vectorize(fast, 20, 30, 50.0, 32, 64)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        if k == 1:
            assert any(np.array_equal(c, lines[5]) for c in fast.lanes)


# ----------------------------------------------------------------------------- Flickr30k (Karpathy split)

F30K_SPLITS = [("1000092795.jpg", "train"), ("10002456.jpg", "train"), ("1000268201.jpg", "train"),
               ("1000344755.jpg", "val"), ("1007129816.jpg", "test"), ("1009434119.jpg", "test")]


def _flickr30k(root: Path) -> list[tuple[int, int, int]]:
    """dataset_flickr30k.json + flickr30k-images/ with one solid colour per image; the second test image
    repeats a caption of the first (exact duplicates occur in the real captions)."""
    images, colours, sentid = [], [], 0
    for imgid, (fn, split) in enumerate(F30K_SPLITS):
        raws = [f"Image {imgid} caption {j}: a person does thing number {j} ." for j in range(5)]
        if imgid == 5:
            raws[2] = "Image 4 caption 1: a person does thing number 1 ."
        sents = [{"tokens": r.lower().rstrip(" .").split(), "raw": r, "imgid": imgid, "sentid": sentid + j}
                 for j, r in enumerate(raws)]
        images.append({"sentids": [s["sentid"] for s in sents], "imgid": imgid, "sentences": sents,
                       "split": split, "filename": fn})
        sentid += 5
        colours.append((40 * imgid, 200 - 30 * imgid, 90))
        _jpeg(root / "flickr30k-images" / fn, colours[-1], (40, 30))
    (root / "karpathy").mkdir(parents=True)
    (root / "karpathy" / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return colours


def test_flickr30k_karpathy_release(tmp_path: Path) -> None:
    """The recipe with data.ann_file / data.image_dir pointing at the files as downloaded."""
    from frozenlm.data.vqa import CLIP_MEAN, CLIP_STD
    from frozenlm.tasks.retrieval import RetrievalTask, recall_at_k
    colours = _flickr30k(tmp_path)
    over = [f"data.ann_file={tmp_path / 'karpathy' / 'dataset_flickr30k.json'}",
            f"data.image_dir={tmp_path / 'flickr30k-images'}"]
    cfg = load_config(F30K_CFG, over)
    task = RetrievalTask()
    train = task.build_dataset(cfg, "train")
    assert len(train) == 15  # 3 images x 5 captions
    item = train[0]
    assert item["question"] == "Image 0 caption 0: a person does thing number 0 ." and item["image_id"] == 0
    assert item["image"].shape == (3, 224, 224)
    _assert_colour(item["image"], colours[0], CLIP_MEAN, CLIP_STD)
    assert len(task.build_dataset(cfg, "val")) == 1
    test = task.build_dataset(cfg, "test")
    assert len(test) == 2 and len(test.texts) == 10  # real test split: 1,000 images, 5,000 texts
    # relevance by image (METER / ViLT): the duplicated caption belongs to its own image only
    assert test.image_texts == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert test.texts[7] == test.texts[1]
    _assert_colour(test[1]["image"], colours[5], CLIP_MEAN, CLIP_STD)
    # IR@1 as the task computes it (text -> image, relevance inverted from image_texts): text 7 ranking
    # image 0, which holds the same string, first is a miss (with string relevance it would be a hit)
    text_images: list[list[int]] = [[] for _ in test.texts]
    for i, rel in enumerate(test.image_texts):
        for t in rel:
            text_images[t].append(i)
    scores = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    scores[7] = torch.tensor([1.0, 0.0])
    assert recall_at_k(scores, text_images, ks=(1,))[1] == 9
    # an image missing from flickr30k-images/: named at build time, or left out under on_error=skip
    (tmp_path / "flickr30k-images" / "1009434119.jpg").unlink()
    with pytest.raises(DataFileError, match=r"1 of 2 images .*1009434119\.jpg.*flickr30k-images"):
        task.build_dataset(cfg, "test")
    skipped = task.build_dataset(load_config(F30K_CFG, [*over, "data.on_error=skip"]), "test")
    assert len(skipped) == 1 and skipped.image_texts == [[0, 1, 2, 3, 4]]


# ----------------------------------------------------------------------------- ImageNet-A / -R / -Sketch / -C

@pytest.mark.parametrize("name,folder", [("imagenet_a", "imagenet-a"), ("imagenet_r", "imagenet-r")])
def test_imagenet_a_r_release(tmp_path: Path, name: str, folder: str) -> None:
    """imagenet-{a,r}.tar extracted: 200 wnid folders and a README.txt; labels 0..199, 200-class masking."""
    from frozenlm.data.imagenet_variants import imagenet_wnids, reference_subset_wnids
    from frozenlm.tasks.image import ImageClassification
    root = tmp_path / folder
    wnids = reference_subset_wnids(name)
    for k, w in enumerate(wnids):
        fn = f"0.00{k:04d}_digital clock _ digital clock_0.8{k:05d}.jpg" if name == "imagenet_a" else f"art_{k}.jpg"
        _jpeg(root / w / fn, (k, 255 - k, 128))
    (root / "README.txt").write_text("ImageNet-A/R: 200 ImageNet classes\n")
    cfg = load_config(IMAGENET_CFG, [f"data.name={name}", f"data.root={root}"])
    task = ImageClassification()
    ds = task.build_dataset(cfg, "val")
    assert len(ds) == 200 and ds.targets == list(range(200))
    all_wnids = imagenet_wnids()
    assert task._class_indices.tolist() == [all_wnids.index(w) for w in sorted(wnids)]
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 224, 224)
    _assert_colour(x, (0, 255, 128), IMAGENET_MEAN, IMAGENET_STD)
    # the task scores on the 200 classes: a 1k logit outside them cannot win
    logits = torch.zeros(2, 1000)
    logits[:, 0 if all_wnids[0] not in wnids else 1] = 50.0
    logits[0, all_wnids.index(sorted(wnids)[0])] = 10.0
    logits[1, all_wnids.index(sorted(wnids)[199])] = 10.0

    class Fixed(torch.nn.Module):
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            return logits
    sums = task.eval_batch(Fixed(), (torch.zeros(2, 3, 224, 224), torch.tensor([0, 199])), cfg)
    assert float(sums["correct1"]) == 2.0


def test_imagenet_sketch_release(tmp_path: Path) -> None:
    """ImageNet-Sketch.zip extracted: sketch/<wnid>/ for all 1,000 classes, labels = ImageNet-1k indices."""
    from frozenlm.data.imagenet_variants import imagenet_wnids
    from frozenlm.tasks.image import ImageClassification
    root = tmp_path / "sketch"
    wnids = imagenet_wnids()
    for k, w in enumerate(wnids):
        _jpeg(root / w / "sketch_0.JPEG", (k % 256, 0, 255 - k % 256), (8, 8))
    cfg = load_config(IMAGENET_CFG, ["data.name=imagenet_sketch", f"data.root={root}"])
    task = ImageClassification()
    ds = task.build_dataset(cfg, "val")
    assert len(ds) == 1000 and ds.targets == list(range(1000)) and task._class_indices is None
    x, y = ds[999]
    assert y == 999 and ds.samples[999][0].endswith("n15075141/sketch_0.JPEG")
    _assert_colour(x, (999 % 256, 0, 255 - 999 % 256), IMAGENET_MEAN, IMAGENET_STD)


def test_imagenet_c_release(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The five Zenodo tars extracted into one folder: 19 corruption folders x 5 severities. The benchmark's
    15 are evaluated by default (the 4 extras named in a printed line); the mean is over those 15."""
    from frozenlm.data.imagenet_variants import (IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA_CORRUPTIONS,
                                                 summarize_imagenet_c)
    from frozenlm.tasks.image import ImageClassification
    wnids = ("n01440764", "n15075141")
    corruptions = sorted(IMAGENET_C_CORRUPTIONS + IMAGENET_C_EXTRA_CORRUPTIONS)
    for c in corruptions:
        for s in range(1, 6):
            for k, w in enumerate(wnids):
                _jpeg(tmp_path / c / str(s) / w / f"ILSVRC2012_val_0000{k + 1:04d}.JPEG", (10 * s, 100 * k, 50), (8, 8))
    cfg = load_config(IMAGENET_CFG, ["data.name=imagenet_c", f"data.root={tmp_path}"])
    task = ImageClassification()
    ds = task.build_dataset(cfg, "val")
    assert "left out the held-out extra corruption(s)" in capsys.readouterr().err
    assert len(ds) == 15 * 5 * 2 and sorted({c for c, _ in ds.parts}) == sorted(IMAGENET_C_CORRUPTIONS)
    assert ds.parts[0] == ("brightness", 1)
    x, y, part = ds[1]
    assert (y, part) == (999, 0)  # n15075141 = ImageNet-1k class 999, in (brightness, 1)
    _assert_colour(x, (10, 100, 50), IMAGENET_MEAN, IMAGENET_STD)

    class AlwaysTench(torch.nn.Module):  # right on every n01440764 image, wrong on every n15075141 one
        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(inp.shape[0], 1000)
            out[:, 0] = 1.0
            return out
    items = [ds[i] for i in range(len(ds))]
    batch = (torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items]),
             torch.tensor([it[2] for it in items]))
    m = task.finalize(task.eval_batch(AlwaysTench(), batch, cfg), cfg)
    assert m["imagenet_c/mean"] == pytest.approx(50.0) and "imagenet_c/mean_with_extra" not in m
    assert m["imagenet_c/gaussian_noise"] == pytest.approx(50.0)
    # the extras when named; the summary keeps the benchmark mean apart from the one with them
    named = load_config(IMAGENET_CFG, ["data.name=imagenet_c", f"data.root={tmp_path}",
                                       f"data.corruptions=[{','.join(corruptions)}]"])
    assert len(ImageClassification().build_dataset(named, "val")) == 19 * 5 * 2
    # ImageNet-C images are 224 x 224 and hendrycks' test.py feeds them as they are (CenterCrop(224) only):
    # data.crop_pct=1.0 does the same, the default eval transform (resize 256, crop 224) zooms them
    rng = np.random.default_rng(0)
    grad = np.clip(np.add.outer(np.arange(224), np.arange(224))[..., None] // 2 + rng.integers(0, 40, (224, 224, 3)),
                   0, 255).astype(np.uint8)
    Image.fromarray(grad).save(tmp_path / "brightness" / "1" / wnids[0] / "ILSVRC2012_val_00000001.JPEG", quality=95)
    ref = np.asarray(Image.open(tmp_path / "brightness" / "1" / wnids[0] / "ILSVRC2012_val_00000001.JPEG"),
                     np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    as_is = ImageClassification().build_dataset(load_config(IMAGENET_CFG, [
        "data.name=imagenet_c", f"data.root={tmp_path}", "data.crop_pct=1.0"]), "val")[0][0]
    torch.testing.assert_close(as_is, ref, atol=1e-5, rtol=0)
    assert (ImageClassification().build_dataset(cfg, "val")[0][0] - ref).abs().mean() > 0.1
    acc = {(c, 1): (80.0 if c in IMAGENET_C_CORRUPTIONS else 20.0) for c in corruptions}
    summ = summarize_imagenet_c(acc)
    assert summ["mean"] == pytest.approx(80.0)
    assert summ["mean_with_extra"] == pytest.approx((15 * 80.0 + 4 * 20.0) / 19)


# ----------------------------------------------------------------------------- ImageNet-S50

def test_imagenet_s50_release(tmp_path: Path) -> None:
    """ImageNetS50/validation + validation-segmentation, read by `frozenlm analyze ... data=imagenet_s`."""
    from frozenlm.analysis.datasets import build_analysis_dataset
    root = tmp_path / "ImageNetS50"
    wnids = ("n01443537", "n01491361")  # two of ImageNet-S50's classes (ids 1 and 2 in the sorted list)
    ids = {"n01443537": 1, "n01491361": 2}
    for w in wnids:
        for j in range(2):
            name = f"ILSVRC2012_val_{ids[w] * 10 + j:08d}"
            _jpeg(root / "validation" / w / f"{name}.JPEG", (200, 10 * j, 0), (64, 32))
            seg = np.zeros((32, 64, 3), np.uint8)  # 0 = other (background)
            seg[8:24, 16:48, 0] = ids[w]  # the object: id % 256 in R, id // 256 in G
            seg[0:4, 0:64, 0], seg[0:4, 0:64, 1] = 1000 % 256, 1000 // 256  # ignored region: id 1000
            (root / "validation-segmentation" / w).mkdir(parents=True, exist_ok=True)
            Image.fromarray(seg).save(root / "validation-segmentation" / w / f"{name}.png")
    _jpeg(root / "test" / "ILSVRC2012_test_00000001.JPEG", (0, 0, 0))  # test masks live on the server only
    ds = build_analysis_dataset("imagenet_s", img_size=32, in_chans=3, n=64, root=root)
    assert len(ds) == 4 and [lab for _, _, lab in ds.samples] == [0, 0, 1, 1]
    x, label, mask = ds[0]
    assert label == 0 and x.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert abs(float(x[0].mean()) - 200 / 255) < 3 / 255  # not normalised here: the caller applies mean/std
    m = mask.numpy()  # the 64 x 32 mask resized (nearest, no crop) to 32 x 32: columns halve
    assert (m[0:4] == 255).all()  # id 1000 = R 232 + 256 * G 3 -> ignored
    assert (m[8:24, 8:24] == 1).all()  # the class id -> object
    assert m[4:8].max() == 0 and m[24:].max() == 0 and m[8:24, :8].max() == 0 and m[8:24, 24:].max() == 0
