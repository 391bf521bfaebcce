"""Video data as released (issue 18, items 5 and 7): Kinetics layouts, missing videos, VideoMAE's
repeated sampling.

Files are written to the official specifications:
- Kinetics, the cvdf release (github.com/cvdfoundation/kinetics-dataset, ``k400_downloader.sh`` and
  ``k400_extractor.sh``): ``k400/annotations/{train,val}.csv`` with the columns
  ``label,youtube_id,time_start,time_end,split``, videos ``k400/{train,val}/<youtube_id>_<start:06d>_<end:06d>.mp4``;
  its ``arrange_by_classes.py`` symlinks them into ``videos/<split>/<label>/<same name>`` (the label
  exactly as in the csv), the per-label layout the ActivityNet crawler (activitynet/ActivityNet,
  Crawler/Kinetics/download.py) writes directly.
- SSv2 (the 20BN release): ``something-something-v2-{labels,train}.json`` and
  ``20bn-something-something-v2/<id>.webm``.
- Repeated sampling, VideoMAE (MCG-NJU/VideoMAE): ``run_class_finetuning.py`` (DataLoader batch_size
  = videos per GPU with ``collate_fn=multiple_samples_collate`` when ``--num_sample > 1``;
  ``total_batch_size = batch_size * update_freq * world_size``; ``lr * total_batch_size / 256``;
  ``len(dataset_train) // total_batch_size`` steps per epoch), ``ssv2.py`` / ``kinetics.py``
  ``VideoClsDataset.__getitem__`` (one ``loadvideo_decord`` per video, then ``_aug_frame`` num_sample
  times), ``utils.multiple_samples_collate`` (flattens the clips video by video), and the SSv2 ViT-S / ViT-B
  ``finetune.sh`` scripts (32 GPUs x 12, 64 GPUs x 6, ``--num_sample 2``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.errors import DataFileError
from frozenlm.data.synthetic.video import render_clip, write_mp4
from frozenlm.data.video import repeated_sample_collate, skip_none_collate
from frozenlm.data.video.dataset import VideoClipDataset
from frozenlm.engine.data import build_loader
from frozenlm.errors import ConfigError
from frozenlm.tasks.video import VideoClassification

RECIPE = "configs/video/kinetics400_vit_s.yaml"
# (label, youtube_id, start, end): K400-style rows; labels with spaces and brackets as in the real csv.
TRAIN = [("abseiling", "-3B32lodo2M", 59, 69), ("riding a bike", "0Y_8sWjtUQs", 14, 24),
         ("passing American football (in game)", "zzz0VBz_h3w", 0, 10), ("abseiling", "Ye7HMxFLQ_k", 120, 130)]
VAL = [("riding a bike", "aBcDeFgHiJk", 5, 15), ("passing American football (in game)", "_-_-QwErTyU", 31, 41),
       ("abseiling", "9876543210a", 2, 12)]
CLASSES = sorted({r[0] for r in TRAIN})


def name(row: tuple[str, str, int, int]) -> str:
    return f"{row[1]}_{row[2]:06d}_{row[3]:06d}.mp4"


def cvdf_release(root: Path) -> Path:
    """``k400/`` as the cvdf scripts leave it (the test split and replacement/ left out)."""
    k = root / "k400"
    (k / "annotations").mkdir(parents=True)
    for split, rows in (("train", TRAIN), ("val", VAL)):
        lines = ["label,youtube_id,time_start,time_end,split"]
        lines += [(f'"{lab}"' if " " in lab else lab) + f",{yt},{s},{e},{split}" for lab, yt, s, e in rows]
        (k / "annotations" / f"{split}.csv").write_text("\n".join(lines) + "\n")
        (k / split).mkdir()
        for i, row in enumerate(rows):
            write_mp4(render_clip(CLASSES.index(row[0]), seed=i, size=32, num_frames=8), k / split / name(row))
    return k


def arrange_by_classes(k: Path) -> Path:
    """What cvdf's arrange_by_classes.py does: ``videos/<split>/<label>/<name>`` symlinks to the files."""
    for split, rows in (("train", TRAIN), ("val", VAL)):
        for row in rows:
            dst = k / "videos" / split / row[0] / name(row)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to((k / split / name(row)).resolve())
    return k / "videos"


def recipe(k: Path, *extra: str):
    """The Kinetics recipe pointed at the release, shrunk to 32 px clips of 4 frames."""
    return load_config(RECIPE, [f"data.train_csv={k / 'annotations/train.csv'}",
                                f"data.val_csv={k / 'annotations/val.csv'}", f"data.video_dir={k}",
                                "data.num_classes=3", "data.img_size=32", "data.short_side=32", "data.num_frames=4",
                                "data.interval=2", "data.test_clips=1", "data.test_crops=1", "data.auto_augment=null",
                                "data.on_error=raise", *extra])


def labelled(ds) -> list[tuple[str, str]]:
    return [(str(p), ds.classes[y]) for p, y in ds.items]


def test_cvdf_release_as_downloaded_trains_and_evaluates(tmp_path: Path) -> None:
    k = cvdf_release(tmp_path)
    task = VideoClassification()
    cfg = recipe(k)
    train, val = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    assert train.classes == CLASSES == ["abseiling", "passing American football (in game)", "riding a bike"]
    assert labelled(train) == [(str(k / "train" / name(r)), r[0]) for r in TRAIN]  # train/ under video_dir
    assert labelled(val) == [(str(k / "val" / name(r)), r[0]) for r in VAL]  # and val/
    clips, y = train[1]
    assert clips.shape == (2, 3, 4, 32, 32) and y == 2  # the recipe's num_sample 2
    x, yv = val[0]
    assert x.shape == (3, 4, 32, 32) and yv == 2


def test_per_label_folders_are_found_and_agree_with_the_csv(tmp_path: Path) -> None:
    k = cvdf_release(tmp_path)
    videos = arrange_by_classes(k)
    task = VideoClassification()
    ds = task.build_dataset(recipe(k, f"data.video_dir={videos}"), "train")  # layout: auto
    assert labelled(ds) == [(str(videos / "train" / r[0] / name(r)), r[0]) for r in TRAIN]
    assert ds[2][0].shape == (2, 3, 4, 32, 32)  # the symlinks decode
    # Forcing the other layout looks for the files flat in videos/train/: all of them are missing.
    with pytest.raises(DataFileError, match=r"kinetics train: 4 of 4 listed videos are missing"):
        task.build_dataset(recipe(k, f"data.video_dir={videos}", "data.layout=flat"), "train")
    with pytest.raises(ValueError, match="data.layout must be one of"):
        task.build_dataset(recipe(k, "data.layout=per_class"), "train")


def test_a_video_folder_per_split(tmp_path: Path) -> None:
    k = cvdf_release(tmp_path)
    elsewhere = tmp_path / "disk2" / "kinetics_val_clips"
    elsewhere.parent.mkdir()
    os.rename(k / "val", elsewhere)
    by_label = arrange_by_classes_only_train(k, tmp_path / "disk3")
    cfg = recipe(k, "data.video_dir=null", f"data.train_video_dir={by_label}", f"data.val_video_dir={elsewhere}")
    task = VideoClassification()
    assert labelled(task.build_dataset(cfg, "train")) == [(str(by_label / r[0] / name(r)), r[0]) for r in TRAIN]
    assert labelled(task.build_dataset(cfg, "val")) == [(str(elsewhere / name(r)), r[0]) for r in VAL]
    with pytest.raises(ValueError, match=r"data.video_dir \(or data.val_video_dir\) must be set"):
        task.build_dataset(recipe(k, "data.video_dir=null", f"data.train_video_dir={by_label}"), "val")
    with pytest.raises(FileNotFoundError, match="data.val_video_dir = .*nowhere is not a folder"):
        task.build_dataset(recipe(k, f"data.val_video_dir={tmp_path / 'nowhere'}"), "val")


def arrange_by_classes_only_train(k: Path, dest: Path) -> Path:
    for row in TRAIN:
        (dest / row[0]).mkdir(parents=True, exist_ok=True)
        (dest / row[0] / name(row)).symlink_to((k / "train" / name(row)).resolve())
    return dest


def test_missing_videos_are_counted_when_the_dataset_is_built(tmp_path: Path, capsys) -> None:
    k = cvdf_release(tmp_path)
    gone = [TRAIN[0], TRAIN[2]]
    for row in gone:
        (k / "train" / name(row)).unlink()
    task = VideoClassification()
    with pytest.raises(DataFileError) as e:  # on_error: raise (default) -> one error naming them
        task.build_dataset(recipe(k), "train")
    msg = str(e.value)
    assert "kinetics train: 2 of 4 listed videos are missing" in msg
    assert all(str(k / "train" / name(r)) in msg for r in gone) and "data.on_error=skip" in msg
    assert "data.train_video_dir" in msg and "data.layout" in msg
    capsys.readouterr()
    ds = task.build_dataset(recipe(k, "data.on_error=skip"), "train")
    err = capsys.readouterr().err
    assert err.count("[data]") == 1 and "2 of 4 listed videos are missing" in err and "2 remain" in err
    assert labelled(ds) == [(str(k / "train" / name(r)), r[0]) for r in (TRAIN[1], TRAIN[3])]
    assert ds.skipped == [str(k / "train" / name(r)) for r in gone]
    # every remaining item decodes, so no batch loses a video at training time
    loader = build_loader(ds, global_batch=2, micro_batch=2, rank=0, world_size=1, seed=0, shuffle=True,
                          drop_last=True, num_workers=0, collate_fn=task.collate_fn(recipe(k), "train"))
    (x, y), = list(loader)
    assert x.shape[0] == 4 and sorted(y.tolist()) == [0, 0, 2, 2]
    for row in (TRAIN[1], TRAIN[3]):
        (k / "train" / name(row)).unlink()
    with pytest.raises(DataFileError, match="4 of 4 listed videos are missing.*fetch them or fix"):
        task.build_dataset(recipe(k, "data.on_error=skip"), "train")  # nothing left: an error even under skip


def test_missing_ssv2_videos(tmp_path: Path) -> None:
    labels = {"Approaching something with your camera": "0", "Pushing something from left to right": "1"}
    (tmp_path / "something-something-v2-labels.json").write_text(json.dumps(labels))
    entries = [{"id": str(i), "label": "pushing a pen from left to right", "template": "Pushing [something] from left to right",
                "placeholders": ["a pen"]} for i in (78687, 42326, 100)]
    (tmp_path / "something-something-v2-train.json").write_text(json.dumps(entries))
    vids = tmp_path / "20bn-something-something-v2"
    vids.mkdir()
    (vids / "78687.webm").write_bytes(b"present; not decoded by this check")
    cfg = load_config("configs/video/ssv2_vit_s.yaml", [
        f"data.labels_json={tmp_path / 'something-something-v2-labels.json'}", "data.num_classes=2",
        f"data.train_json={tmp_path / 'something-something-v2-train.json'}", f"data.video_dir={vids}",
        "data.on_error=raise"])
    with pytest.raises(DataFileError, match=r"ssv2 train: 2 of 3 listed videos are missing \(.*42326.webm, .*100.webm\)"):
        VideoClassification().build_dataset(cfg, "train")


# ---- VideoMAE's repeated sampling -----------------------------------------------------------------

def _gray_ramp(path: Path, n: int = 24) -> Path:
    """Frame k is a uniform grey 8 + 10 k: any crop of a frame tells which frame it is."""
    write_mp4(np.stack([np.full((32, 32, 3), 8 + 10 * k, np.uint8) for k in range(n)]), path, crf=0)
    return path


def _frame_ids(clip: torch.Tensor) -> list[int]:
    """(C, T, H, W) normalised clip of the grey ramp -> the frame numbers it holds."""
    grey = clip[0] * 0.229 + 0.485  # undo ImageNet normalisation of channel 0
    return [round((float(g.mean()) * 255 - 8) / 10) for g in grey]


def test_repeated_sampling_is_one_frame_draw_with_distinct_augmentations(tmp_path: Path, monkeypatch) -> None:
    import frozenlm.data.video.dataset as dsmod
    ramp = _gray_ramp(tmp_path / "ramp.mp4")
    calls = []
    real = dsmod.decode_frames
    monkeypatch.setattr(dsmod, "decode_frames", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    ds = VideoClipDataset([(ramp, 3)], 5, train=True, num_frames=4, img_size=32, scale=(0.2, 0.6), num_sample=2)
    draws = []
    for seed in range(6):
        torch.manual_seed(seed)
        dsmod.random.seed(seed)
        clips, y = ds[0]
        assert clips.shape == (2, 3, 4, 32, 32) and y == 3
        a, b = _frame_ids(clips[0]), _frame_ids(clips[1])
        assert a == b  # both clips hold the same frames: one TSN draw per video, as VideoMAE's one loadvideo_decord
        assert all(round(5.75 * i) <= f <= round(5.75 * (i + 1)) for i, f in enumerate(a))  # TSN: 4 segments of 23/4
        draws.append(tuple(a))
    assert len(calls) == 6  # decoded once per video, not once per clip
    assert len(set(draws)) > 1  # the draw itself is random (the check above has power)
    # Distinct augmentations: on a textured clip the two crops differ.
    tex = tmp_path / "tex.mp4"
    write_mp4(render_clip(0, seed=1, size=48, num_frames=8), tex)
    ds = VideoClipDataset([(tex, 0)], 5, train=True, num_frames=4, img_size=32, scale=(0.2, 0.6), num_sample=2,
                          auto_augment="rand-m7-n4-mstd0.5-inc1")
    torch.manual_seed(0)
    clips, _ = ds[0]
    assert not torch.allclose(clips[0], clips[1])
    # Evaluation ignores num_sample (VideoMAE repeats only in training).
    ev = VideoClipDataset([(tex, 0)], 5, train=False, num_frames=4, img_size=32, num_sample=2)
    assert ev[0][0].shape == (3, 4, 32, 32)


@pytest.mark.parametrize("world_size", [1, 2])
def test_repeated_sampling_batches_and_steps_as_in_videomae(tmp_path: Path, world_size: int) -> None:
    files = []
    for i in range(10):
        files.append((tmp_path / f"v{i}.mp4", i))
        write_mp4(render_clip(i % 12, seed=i, size=32, num_frames=8), files[-1][0])
    ds = VideoClipDataset(files, 10, train=True, num_frames=4, img_size=32, num_sample=2)
    cfg = load_config("configs/video/shapes_smollm2.yaml", ["data.num_sample=2"])
    collate = VideoClassification().collate_fn(cfg, "train")
    assert collate is repeated_sample_collate
    assert VideoClassification().collate_fn(cfg, "val") is skip_none_collate
    batch_size = 4  # videos per step over all ranks = VideoMAE's total_batch_size
    per_rank = []
    for rank in range(world_size):
        loader = build_loader(ds, global_batch=batch_size, micro_batch=batch_size // world_size, rank=rank,
                              world_size=world_size, seed=0, shuffle=True, drop_last=True, num_workers=0,
                              collate_fn=collate)
        assert len(loader) == len(ds) // batch_size == 2  # len(dataset_train) // total_batch_size
        per_rank.append(list(loader))
    seen = []
    for step in range(2):
        step_videos = []
        for rank in range(world_size):
            x, y = per_rank[rank][step]
            # per rank: (videos per GPU) x num_sample clips, the two clips of a video side by side
            assert x.shape == (2 * batch_size // world_size, 3, 4, 32, 32)
            assert torch.equal(y[0::2], y[1::2]) and not torch.equal(x[0::2], x[1::2])
            step_videos += y[0::2].tolist()
        assert len(set(step_videos)) == batch_size  # batch_size distinct videos per step
        seen += step_videos
    assert len(set(seen)) == len(seen) == 8  # each video at most once per epoch (DistributedSampler)


def test_recipes_match_videomae_scripts_and_conflicts_are_refused(tmp_path: Path) -> None:
    from frozenlm.engine.optim import base_lr
    s = load_config("configs/video/ssv2_vit_s.yaml")
    # scripts/ssv2/videomae_vit_small_...: 4 nodes x 8 GPUs, --batch_size 12 --num_sample 2 --lr 1e-3
    assert s.data.num_sample == 2 and (s.repeated_aug or 1) == 1 and s.batch_size == 12 * 32
    assert base_lr(s) == pytest.approx(1e-3 * (12 * 1 * 32) / 256)  # args.lr * total_batch_size / 256
    assert s.optim.min_lr == pytest.approx(1e-6 * 384 / 256) and s.optim.warmup_lr == pytest.approx(1e-6 * 384 / 256)
    b = load_config("configs/video/ssv2_vit_b.yaml")  # 8 nodes x 8 GPUs, --batch_size 6 --lr 5e-4
    assert b.data.num_sample == 2 and b.batch_size == 6 * 64 and base_lr(b) == pytest.approx(5e-4 * 384 / 256)
    assert b.model.layer_decay == 0.75 and b.epochs == 30
    kin = load_config("configs/video/kinetics400_vit_s.yaml")  # scripts/kinetics/videomae_vit_small_...
    assert kin.data.num_sample == 2 and base_lr(kin) == pytest.approx(5e-4 * 384 / 256) and kin.epochs == 150
    cfg = load_config("configs/video/shapes_smollm2.yaml", [f"data.root={tmp_path}", "data.n_train=12",
                                                           "data.n_val=12", "data.num_sample=2", "repeated_aug=2"])
    with pytest.raises(ConfigError, match="data.num_sample=2 .* repeated_aug=2 .* 4 times"):
        VideoClassification().build_dataset(cfg, "train")


def test_training_steps_see_batch_size_times_num_sample_clips(tmp_path: Path, monkeypatch) -> None:
    from frozenlm.engine.train import train
    shapes = []
    real = VideoClassification.train_step_loss

    def spy(self, model, batch, cfg):
        shapes.append(tuple(batch[0].shape))
        return real(self, model, batch, cfg)

    monkeypatch.setattr(VideoClassification, "train_step_loss", spy)
    train(load_config("configs/video/shapes_smollm2.yaml", [
        f"data.root={tmp_path / 'data'}", "data.n_train=36", "data.n_val=12", "batch_size=8", "data.num_sample=2",
        "epochs=1", "model.lm.variant=none", "progress=false", "eval_every=null", f"run_dir={tmp_path / 'run'}"]))
    assert shapes == [(16, 3, 8, 32, 32)] * (36 // 8)  # 4 steps of 8 videos x 2 clips
