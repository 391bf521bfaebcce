"""Point-cloud task: Point-BERT + LMLayer, Point-BERT checkpoints, data loaders, shapes generator, training."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.pointcloud import (PointCloudDataset, build_pointcloud_dataset, read_h5_clouds, read_modelnet_h5,
                                      read_modelnet_txt, read_scanobjectnn, sample_points, scale_and_translate)
from frozenlm.data.synthetic.pointcloud import SHAPE_CLASSES, generate_shapes, load_or_generate_shapes
from frozenlm.engine.optim import param_groups
from frozenlm.engine.train import train
from frozenlm.layer import LMLayer, count_parameters
from frozenlm.lm.load import load_blocks
from frozenlm.lm.stack import BlockStack
from frozenlm.lm.readers.base import CheckpointError
from frozenlm.models import create_model
from frozenlm.models.pointbert import PointBERT, load_pointbert_weights
from frozenlm.tasks.pointcloud import PointCloudClassification, pointcloud_finalize
from _best import assert_best_checkpoint

TINY = dict(trans_dim=48, depth=2, num_heads=2, encoder_dims=32, num_group=8, group_size=8,
            encoder_widths=(16, 32, 64), drop_path_rate=0.0)


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M's last block, read once for the whole module (reading it takes seconds)."""
    return load_blocks("smollm2-135m", (-1,), freeze=True)


def tiny(lm=None, **kw) -> PointBERT:
    if isinstance(lm, BlockStack):  # a shared frozen block: wrap it in a fresh sandwich
        lm = LMLayer(TINY["trans_dim"], source="smollm2-135m", blocks=lm, init="default")
    return create_model("point_bert_mini", num_classes=5, lm=lm, **{**TINY, **kw})


# ---------------------------------------------------------------- model

def test_paper_size_and_registry() -> None:
    m = create_model("point_bert", num_classes=15)
    assert count_parameters(m)["trainable"] == 22_059_535  # Point-BERT's 22.1M
    assert (m.num_group, m.group_size, m.trans_dim, len(m.blocks.blocks)) == (64, 32, 384, 12)
    with pytest.raises(ValueError, match="unknown Point-BERT size"):
        from frozenlm.models.pointbert import build_pointbert
        build_pointbert("point_bert_huge")


def test_forward_order_lm_after_last_block_before_norm(smol) -> None:
    torch.manual_seed(0)
    m = tiny(lm=smol).eval()
    x = torch.randn(2, 64, 3)
    with torch.no_grad():
        nb, center = m.group(x)
        t = m.reduce_dim(m.encoder(nb))
        t = torch.cat([m.cls_token.expand(2, -1, -1), t], 1)
        pos = torch.cat([m.cls_pos.expand(2, -1, -1), m.pos_embed(center)], 1)
        for blk in m.blocks.blocks:  # the position MLP is added before EVERY block
            t = blk(t + pos)
        t = m.norm(m.lm_layer(t))
        expected = m.cls_head_finetune(torch.cat([t[:, 0], t[:, 1:].max(1).values], -1))
        got = m(x)
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, expected)
    assert m.lm_layer.variant == "frozen" and m.lm_layer.layer_indices == [29]
    # PyTorch default init for the adapters (not Point-BERT's trunc_normal .02)
    assert m.lm_layer.proj_in.weight.std() > 0.05


def test_permutation_invariance_with_centroid_fps_start(smol) -> None:
    torch.manual_seed(1)
    m = tiny(lm=smol, fps_start="centroid").eval()
    x = torch.randn(3, 96, 3)
    perm = torch.randperm(96)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x[:, perm]), atol=1e-4, rtol=1e-4)
        # the Point-BERT default (FPS from the first point) picks other centres for a shuffled cloud
        m.fps_start = "first"
        assert not torch.allclose(m.group(x)[1], m.group(x[:, perm])[1])


def test_gradients_flow_through_frozen_block(smol) -> None:
    m = tiny(lm=smol)
    m(torch.randn(2, 64, 3)).logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in m.lm_layer.blocks.parameters())
    assert m.encoder.first_conv[0].weight.grad.abs().sum() > 0
    assert m.lm_layer.proj_in.weight.grad.abs().sum() > 0


def test_bad_point_shapes() -> None:
    m = tiny()
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        m(torch.randn(2, 64, 6))
    with pytest.raises(ValueError, match="at least"):
        m(torch.randn(2, 4, 3))


def _state(m: PointBERT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in m.state_dict().items() if not k.startswith("lm_layer.")}


def test_load_pointbert_finetuned_layout(tmp_path: Path, smol) -> None:
    src = tiny()
    ck = {"base_model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 300}
    torch.save(ck, tmp_path / "ft.pth")
    dst = tiny(lm=smol)
    rep = load_pointbert_weights(dst, tmp_path / "ft.pth")
    assert rep.missing == [] and rep.unexpected == []
    for k, v in _state(src).items():
        assert torch.equal(dst.state_dict()[k], v), k
    # another class count: the head is dropped and reported missing, the backbone still loads
    other = create_model("point_bert_mini", num_classes=7, **TINY)
    rep = load_pointbert_weights(other, tmp_path / "ft.pth")
    assert set(rep.missing) == {"cls_head_finetune.3.weight", "cls_head_finetune.3.bias"}


def test_load_pointbert_pretraining_layout(tmp_path: Path) -> None:
    src = tiny()
    sd = {f"module.transformer_q.{k}": v for k, v in src.state_dict().items() if not k.startswith("cls_head")}
    sd["module.transformer_q.cls_head.0.weight"] = torch.zeros(4, 4)  # MoCo projection: not used
    sd["module.transformer_k.cls_token"] = torch.zeros(1, 1, 48)
    sd["module.dvae.codebook"] = torch.zeros(8, 4)
    torch.save({"base_model": sd}, tmp_path / "Point-BERT.pth")
    dst = create_model("point_bert_mini", num_classes=15, pretrained_path=str(tmp_path / "Point-BERT.pth"), **TINY)
    assert torch.equal(dst.blocks.blocks[1].attn.qkv.weight, src.blocks.blocks[1].attn.qkv.weight)
    rep = load_pointbert_weights(dst, tmp_path / "Point-BERT.pth")
    assert rep.unexpected == ["dvae.codebook", "transformer_k.cls_token", "transformer_q.cls_head.0.weight"]
    assert rep.missing == sorted(k for k in dst.state_dict() if k.startswith("cls_head_finetune."))


def test_load_pointbert_errors(tmp_path: Path) -> None:
    torch.save({"base_model": {"module.cls_token": torch.zeros(1, 1, 99)}}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="cls_token"):
        load_pointbert_weights(tiny(), tmp_path / "wrong.pth")
    torch.save({"foo.bar": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no key matches"):
        load_pointbert_weights(tiny(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_pointbert_weights(tiny(), tmp_path / "missing.pth")


# ---------------------------------------------------------------- data

def _write_h5(path: Path, data: np.ndarray, label: np.ndarray, **extra: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
        for k, v in extra.items():
            f.create_dataset(k, data=v)


def test_scanobjectnn_h5_layout(tmp_path: Path) -> None:
    root = tmp_path / "h5_files"
    rng = np.random.default_rng(0)
    files = {("main_split", "training_objectdataset_augmentedrot_scale75.h5"): 6,
             ("main_split", "test_objectdataset_augmentedrot_scale75.h5"): 3,
             ("main_split", "training_objectdataset.h5"): 4, ("main_split_nobg", "test_objectdataset.h5"): 2}
    written = {}
    for (sub, name), n in files.items():
        d, lab = rng.normal(size=(n, 2048, 3)).astype(np.float32), rng.integers(0, 15, n).astype(np.int64)
        _write_h5(root / sub / name, d, lab, mask=np.ones((n, 2048), np.int64))
        written[name, sub] = (d, lab)
    ds = read_scanobjectnn(root, "PB_T50_RS", "train")
    d, lab = written["training_objectdataset_augmentedrot_scale75.h5", "main_split"]
    assert len(ds) == 6 and ds.num_classes == 15 and ds.classes[0] == "bag"
    x, y = ds[4]
    assert x.shape == (2048, 3) and torch.equal(x, torch.from_numpy(d[4])) and y == int(lab[4])
    assert len(read_scanobjectnn(root, "PB_T50_RS", "test")) == 3
    assert len(read_scanobjectnn(root / "main_split", "OBJ_BG", "train")) == 4  # root = the split folder
    ds = build_pointcloud_dataset({"name": "scanobjectnn", "root": str(root), "variant": "OBJ_ONLY"}, "val")
    assert torch.equal(ds.points, torch.from_numpy(written["test_objectdataset.h5", "main_split_nobg"][0]))
    with pytest.raises(FileNotFoundError, match="h5_files"):
        read_scanobjectnn(root, "OBJ_ONLY", "train")
    with pytest.raises(ValueError, match="variant"):
        read_scanobjectnn(root, "OBJ", "train")


def test_h5_bad_inputs(tmp_path: Path) -> None:
    _write_h5(tmp_path / "2d.h5", np.zeros((2, 10, 2), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"2d\.h5.*\(N, P, 3\+\)"):
        read_h5_clouds(tmp_path / "2d.h5")
    _write_h5(tmp_path / "empty.h5", np.zeros((0, 10, 3), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        read_h5_clouds(tmp_path / "empty.h5")
    with h5py.File(tmp_path / "nolabel.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((2, 10, 3), np.float32))
    with pytest.raises(KeyError, match="label"):
        read_h5_clouds(tmp_path / "nolabel.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="HDF5"):
        read_h5_clouds(tmp_path / "junk.h5")
    d, lab = np.zeros((2, 10, 3), np.float32), np.array([0, 15])
    with pytest.raises(ValueError, match="label 15 .*out of range for 15 classes"):
        PointCloudDataset(d, lab, [str(i) for i in range(15)], source="x.h5")


def _write_modelnet_txt(root: Path, n_points: int = 40, seed: int = 1,
                        items: tuple = (("airplane", "train"), ("bed", "train"), ("bathtub", "train"), ("bed", "test")),
                        make=lambda rng, n: rng.normal(size=(n, 6)).astype(np.float32) * 3 + 1) -> dict[str, np.ndarray]:
    """A small modelnet40_normal_resampled: shape names, train/test lists, '<class>/<id>.txt' rows made by
    ``make(rng, n_points)`` (x,y,z,nx,ny,nz); returns {shape id: the array written}."""
    names = ["airplane", "bathtub", "bed"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(names) + "\n")
    rng = np.random.default_rng(seed)
    arrays, lists = {}, {"train": [], "test": []}
    for i, (cls, split) in enumerate(items):
        sid = f"{cls}_{i + 1:04d}"
        arr = make(rng, n_points)
        (root / cls).mkdir(exist_ok=True)
        np.savetxt(root / cls / f"{sid}.txt", arr, delimiter=",", fmt="%.6f")
        lists[split].append(sid)
        arrays[sid] = arr
    for split, ids in lists.items():
        (root / f"modelnet40_{split}.txt").write_text("\n".join(ids) + "\n")
    return arrays


def test_modelnet_text_layout_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "modelnet40_normal_resampled"
    arrays = _write_modelnet_txt(root)
    ds = read_modelnet_txt(root, "train", num_points=32, num_classes=40, progress=False, selection="first")
    assert len(ds) == 3 and ds.classes == ["airplane", "bathtub", "bed"]
    assert [int(v) for v in ds.labels] == [0, 2, 1]
    x = arrays["bed_0002"][:32, :3].round(6)
    x = x - x.mean(0)
    x = x / np.linalg.norm(x, axis=1).max()  # first 32 points, xyz only, unit sphere
    np.testing.assert_allclose(ds[1][0].numpy(), x, atol=1e-5)
    assert len(list(root.glob("modelnet40_train_32pts_*.npz"))) == 1
    with monkeypatch.context() as m:  # the cache is used from now on: no file is parsed again
        m.setattr(np, "loadtxt", lambda *a, **k: pytest.fail("a cached split was parsed again"))
        again = read_modelnet_txt(root, "train", num_points=32, num_classes=40, progress=False, selection="first")
    assert torch.equal(again.points, ds.points)
    (root / "bed" / "bed_0004.txt").unlink()
    with pytest.raises(FileNotFoundError, match="bed_0004"):
        read_modelnet_txt(root, "test", num_points=32, num_classes=40, progress=False)


def test_modelnet_text_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "mn"
    _write_modelnet_txt(root, n_points=10)
    with pytest.raises(ValueError, match="has 10 points, fewer than data"):
        read_modelnet_txt(root, "test", num_points=32, progress=False, cache=False)
    (root / "bed" / "bed_0004.txt").write_text("")
    with pytest.raises(ValueError, match="bed_0004.txt is empty"):
        read_modelnet_txt(root, "test", num_points=8, progress=False, cache=False)
    (root / "bed" / "bed_0004.txt").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="x,y,z"):
        read_modelnet_txt(root, "test", num_points=2, progress=False, cache=False)


def test_modelnet_h5_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    parts = [rng.normal(size=(n, 2048, 3)).astype(np.float32) for n in (3, 2)]
    for i, d in enumerate(parts):
        _write_h5(tmp_path / f"ply_data_train{i}.h5", d, np.array([[i], [39], [0]][: len(d)], np.uint8))
    _write_h5(tmp_path / "ply_data_test0.h5", parts[1], np.array([[5], [6]], np.uint8))
    (tmp_path / "shape_names.txt").write_text("\n".join(f"c{i}" for i in range(40)))
    ds = read_modelnet_h5(tmp_path, "train")
    assert len(ds) == 5 and ds.num_classes == 40
    assert torch.equal(ds.points[3:], torch.from_numpy(parts[1])) and [int(v) for v in ds.labels] == [0, 39, 0, 1, 39]
    assert len(build_pointcloud_dataset({"name": "modelnet40_h5", "root": str(tmp_path)}, "val")) == 2


# ---------------------------------------------------------------- shapes generator and sampling

def test_shapes_deterministic_and_cached(tmp_path: Path) -> None:
    assert len(SHAPE_CLASSES) >= 10
    a, la = generate_shapes(2, "train", seed=3, progress=False, num_points=128)
    b, lb = generate_shapes(2, "train", seed=3, progress=False, num_points=128)
    assert a.shape == (2 * len(SHAPE_CLASSES), 128, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert np.bincount(la).tolist() == [2] * len(SHAPE_CLASSES)
    assert np.linalg.norm(a, axis=-1).max() <= 1.0 + 1e-6
    assert not np.array_equal(a, generate_shapes(2, "train", seed=4, progress=False, num_points=128)[0])
    assert not np.array_equal(a, generate_shapes(2, "test", seed=3, progress=False, num_points=128)[0])
    c, lc = load_or_generate_shapes(tmp_path, 2, "train", seed=3, progress=False, num_points=128)
    assert np.array_equal(a, c) and len(list(tmp_path.glob("shapes_train_*.npz"))) == 1
    d, _ = load_or_generate_shapes(tmp_path, 2, "train", seed=3, progress=False, num_points=128)
    assert np.array_equal(a, d)
    with pytest.raises(ValueError, match="unknown shapes option"):
        generate_shapes(1, num_point=3)


def test_sampling_and_augmentation() -> None:
    torch.manual_seed(0)
    pts = torch.randn(4, 200, 3)
    test = sample_points(pts, 32)
    assert test.shape == (4, 32, 3) and torch.equal(test, sample_points(pts, 32))  # FPS: deterministic
    tr = sample_points(pts, 32, fps_points=40)
    fps40 = sample_points(pts, 40)
    for b in range(4):  # a random 32 of the 40 FPS points
        assert all(any(torch.equal(p, q) for q in fps40[b]) for p in tr[b])
    with pytest.raises(ValueError, match="train_fps_points"):
        sample_points(pts, 32, fps_points=16)
    aug = scale_and_translate(pts, generator=torch.Generator().manual_seed(0))
    ratio = (aug[:, 1:] - aug[:, :1]) / (pts[:, 1:] - pts[:, :1])  # translation cancels: per-axis scales
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-3)
    assert ((ratio > 2 / 3 - 1e-3) & (ratio < 1.5 + 1e-3)).all()


# ---------------------------------------------------------------- task, configs, training

def test_finalize_oa_and_macc() -> None:
    sums = {"correct": torch.tensor(7.0), "count": torch.tensor(10.0), "loss_sum": torch.tensor(5.0),
            "class_correct": torch.tensor([1.0, 6.0, 0.0]), "class_count": torch.tensor([2.0, 8.0, 0.0])}
    out = pointcloud_finalize(sums)
    assert out["OA"] == pytest.approx(70.0)
    assert out["mAcc"] == pytest.approx(100 * (0.5 + 0.75) / 2)  # a class with no samples is skipped
    assert out["loss"] == pytest.approx(0.5)


def test_recipes_load_and_param_groups() -> None:
    root = Path("configs/pointcloud")
    for f in sorted(root.glob("*.yaml")):
        if f.name != "_base_.yaml":
            cfg = load_config(f)
            assert cfg.task == "pointcloud" and cfg.optim.clip_grad == 10.0, f
    cfg = load_config(root / "scanobjectnn_hardest_llama7b.yaml")
    assert (cfg.data.variant, cfg.model.lm.layers, cfg.optim.adapter_lr_mult, cfg.optim.no_decay_lr_mult) == \
        ("PB_T50_RS", [31], 0.5, 0.1)
    assert [load_config(root / f"modelnet40_{k}.yaml").model.num_group for k in ("1k", "4k", "8k")] == [64, 256, 512]
    cfg.model.update(name="point_bert_mini", **TINY)
    cfg.model.lm.update(source="smollm2-135m", layers=[-1], variant="mlp")  # same adapters, nothing to read
    task = PointCloudClassification()
    model = task.build_model(cfg)
    groups = {n: (g["lr_mult"], g["weight_decay"]) for g in param_groups(model, cfg, task.lr_mults(model, cfg))
              for n in g["param_names"]}
    assert groups["lm_layer.proj_in.weight"] == (0.5, 0.05)
    assert groups["cls_token"] == (0.1, 0.0) and groups["norm.weight"] == (0.1, 0.0)
    assert groups["blocks.blocks.0.attn.qkv.weight"] == (1.0, 0.05)
    cfg.optim.adapter_lr_mult = None  # baseline recipes: the engine's default groups
    assert task.lr_mults(model, cfg) is None


def test_training_lowers_loss(tmp_path: Path) -> None:
    # one full batch of 8 clouds, 40 steps: the loop, the sampling and the frozen sandwich must fit it
    over = ["data.train_per_class=2", "data.test_per_class=4", "data.num_classes=4", "data.shapes.num_points=128",
            "data.num_points=64", "data.train_fps_points=64", "data.augment=false", f"data.cache_dir={tmp_path / 'data'}",
            "model.depth=1", "model.num_group=8", "model.group_size=8", "model.trans_dim=48", "model.num_heads=2",
            "model.encoder_dims=32", "model.head_dropout=0.0", "epochs=40", "batch_size=8",
            "optim.lr=2e-3", "optim.warmup_epochs=0", "log_every=1", "progress=false", "eval_every=40",
            f"run_dir={tmp_path / 'run'}"]
    metrics = train(load_config("configs/pointcloud/shapes_smollm2.yaml", over))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses) == 40 and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert set(metrics) >= {"OA", "mAcc", "loss"} and 0 <= metrics["mAcc"] <= 100
    assert_best_checkpoint(tmp_path / "run", "OA", "max")
