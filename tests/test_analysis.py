"""Information-filtering analysis (issue 5): activations, mIoU, hooks, datasets, report, CLI."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.analysis import (STAGES, MIoUAccumulator, activation_maps, best_iou, capture_features,
                               frequency_activation, iou, magnitude_activation, mask_to_tokens, minmax)
from frozenlm.analysis.activation import attention_map, to_grid
from frozenlm.analysis.datasets import ImageNetS
from frozenlm.data.cluttered import ClutteredFashionMNIST
from frozenlm.analysis.features import _timm_attention_probs
from frozenlm.analysis.miou import IGNORE, miou
from frozenlm.analysis.report import bar_plot, save_overlay, write_table
from frozenlm.models import create_model

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- activations

def test_magnitude_hand_computed() -> None:
    # Tokens 0,0,0,(4,0): mean (1,0); centred norms 1,1,1,3 -> min-max 0,0,0,1.
    z = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    assert torch.allclose(magnitude_activation(z), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    # Non-trivial values: tokens (0,0), (1,0), (3,0): mean 4/3; distances 4/3, 1/3, 5/3.
    z = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]])
    d = torch.tensor([4 / 3, 1 / 3, 5 / 3])
    assert torch.allclose(magnitude_activation(z)[0], (d - d.min()) / (d.max() - d.min()), atol=1e-6)


def test_larger_token_gets_one_and_range() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 16, 32, generator=g)
    z[:, 5] *= 20  # a token made much larger in norm
    a = magnitude_activation(z)
    assert a.shape == (3, 16)
    assert torch.allclose(a[:, 5], torch.ones(3))
    assert a.min() >= 0 and a.max() <= 1
    f = frequency_activation(z)
    assert f.shape == (3, 16) and f.min() >= 0 and f.max() <= 1
    assert torch.allclose(f.amax(-1), torch.ones(3)) and torch.allclose(f.amin(-1), torch.zeros(3))


def test_constant_map_no_division_by_zero() -> None:
    z = torch.ones(2, 9, 8) * 3.0
    z[1] = torch.randn(8) * 0.1  # every token equal (float round-off must not become a map)
    for fn in (magnitude_activation, frequency_activation):
        a = fn(z)
        assert torch.isfinite(a).all() and (a == 0).all()
    assert (minmax(torch.full((1, 4), 7.0)) == 0).all()


def test_frequency_uses_phase_not_magnitude() -> None:
    g = torch.Generator().manual_seed(1)
    v = torch.randn(16, generator=g)
    z = v.repeat(8, 1)
    z[3] = 64 * v  # same phase (exact power-of-two scaling), much larger norm: invisible to the frequency activation
    assert (frequency_activation(z) == 0).all()
    assert magnitude_activation(z)[3] == 1
    z[6] = -v  # negation shifts every phase by pi
    f = frequency_activation(z)
    assert f[6] == 1 and f.argmax() == 6
    # Hand-computed phase: channel-wise FFT angle minus the mean over tokens, L2, min-max.
    ph = torch.angle(torch.fft.fft(z.double(), dim=-1))
    d = (ph - ph.mean(0)).norm(dim=-1)
    assert torch.allclose(f, ((d - d.min()) / (d.max() - d.min())).float(), atol=1e-6)


def test_to_grid_row_major() -> None:
    a = torch.arange(6.0).view(1, 6)
    assert to_grid(a, (2, 3)).tolist() == [[[0, 1, 2], [3, 4, 5]]]
    with pytest.raises(ValueError):
        to_grid(a, (2, 2))


# ----------------------------------------------------------------------------- mIoU

def test_iou_hand_computed() -> None:
    gt = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    pred = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool)
    assert iou(pred, gt) == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
    assert iou(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)) == 1.0
    valid = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # FP token ignored
    assert iou(pred, gt, valid) == pytest.approx(1 / 2)


def test_best_threshold_selection() -> None:
    act = torch.tensor([[0.95, 0.55], [0.35, 0.05]])
    gt = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    v, t = best_iou(act, gt)
    # t=0.1,0.2,0.3 -> 3 tokens: IoU 2/3; t in 0.4..0.5 -> exactly gt: 1.0 (first such t: 0.4)
    assert v == 1.0 and t == pytest.approx(0.4)
    gt2 = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool)
    v2, t2 = best_iou(act, gt2)
    assert v2 == 1.0 and t2 == pytest.approx(0.6)
    acc = MIoUAccumulator()
    acc.add("s", torch.stack([act, act]), torch.stack([gt, gt2]))
    acc.add("w", torch.stack([1 - act, 1 - act]), torch.stack([gt, gt2]))
    r = acc.result()
    assert r["s"] == pytest.approx(1.0)
    # Inverted map 1-act = [[.05,.45],[.65,.95]]. vs gt (top row): t<=0.4 -> {.45,.65,.95}: TP 1,
    # FP 2, FN 1 -> 1/4; higher t -> TP 0. vs gt2 ((0,0), activation .05 never > t): 0. Mean 1/8.
    assert r["w"] == pytest.approx((0.25 + 0.0) / 2)
    assert acc.mean_threshold()["s"] == pytest.approx(0.5)
    assert miou(torch.stack([act]), torch.stack([gt])) == 1.0
    # An image without foreground tokens is skipped (its IoU would be 0 for every map).
    acc.add("s", act[None], torch.zeros(1, 2, 2, dtype=torch.bool))
    assert acc.result()["s"] == pytest.approx(1.0) and acc.skipped["s"] == 1
    assert miou(act[None], torch.zeros(1, 2, 2, dtype=torch.bool)) == 0.0


def test_mask_to_tokens_pooling_and_ignore() -> None:
    m = torch.zeros(4, 4, dtype=torch.uint8)
    m[:2, :2] = 1           # top-left token fully foreground
    m[0, 2] = 1             # top-right token: 1 of 4 pixels -> background
    m[2:, 2:] = IGNORE      # bottom-right token ignored
    fg, valid = mask_to_tokens(m, (2, 2))
    assert fg.tolist() == [[[True, False], [False, False]]]
    assert valid.tolist() == [[[True, True], [True, False]]]


# ----------------------------------------------------------------------------- hooks

@pytest.fixture(scope="module")
def lm_model():
    torch.manual_seed(0)
    return create_model("vit_mini_patch7_28", lm="smollm2-135m", num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return create_model("vit_mini_patch7_28", lm=None, num_classes=10, in_chans=1).eval()


def test_hooks_all_stages_shapes_and_output(lm_model) -> None:
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = lm_model(x)
    cap = capture_features(lm_model, x)
    assert list(cap.stages) == list(STAGES)
    d_lm = lm_model.lm_layer.blocks.dim
    widths = {"F_E": 128, "F_L1": d_lm, "attn_half": d_lm, "block": d_lm, "F_L2": 128}
    for k, t in cap.stages.items():
        assert t.shape == (2, 17, widths[k]), k
    assert torch.equal(cap.output, ref)  # hooks leave the output unchanged
    lm = lm_model.lm_layer
    with torch.no_grad():
        assert torch.allclose(cap.stages["F_L2"], lm(cap.stages["F_E"]), atol=1e-5)
        assert torch.allclose(cap.stages["F_L1"], lm.proj_in(cap.stages["F_E"]), atol=1e-5)
        blk = lm.blocks.layers[-1]
        h = cap.stages["F_L1"] + blk.attn(blk.attn_norm(cap.stages["F_L1"]))
        assert torch.allclose(cap.stages["attn_half"], h, atol=1e-4)
        assert torch.allclose(lm.proj_out(lm.norm(cap.stages["block"])), cap.stages["F_L2"], atol=1e-4)
        probs = blk.attn.attention_probs(blk.attn_norm(cap.stages["F_L1"]))
    assert cap.attention_source == "lm" and cap.grid == (4, 4)
    heads = blk.attn.n_heads
    assert cap.cls_attention.shape == (2, heads, 17)
    assert torch.allclose(cap.cls_attention, probs[:, :, 0], atol=1e-6)
    assert torch.allclose(cap.cls_attention.sum(-1), torch.ones(2, heads), atol=1e-5)  # rows are distributions
    assert cap.attention_heads.shape == (2, heads, 16)
    assert torch.allclose(cap.attention, cap.attention_heads.sum(1))
    maps = activation_maps(cap, "magnitude")
    assert set(maps) == set(STAGES) and all(m.shape == (2, 4, 4) for m in maps.values())
    assert attention_map(cap).shape == (2, 4, 4)


def test_baseline_returns_existing_stages_and_vit_attention(base_model) -> None:
    x = torch.randn(2, 1, 28, 28)
    cap = capture_features(base_model, x)
    assert list(cap.stages) == ["F_E"]
    with torch.no_grad():
        assert torch.equal(cap.output, base_model(x))
        # F_E of a baseline = the last ViT block's output (the input of the final norm).
        assert torch.allclose(base_model.vit.norm(cap.stages["F_E"]), base_model.forward_features(x), atol=1e-5)
        # The timm weights reproduce the attention module's output: probs @ v, then proj.
        attn = base_model.vit.blocks[-1].attn
        xin = torch.randn(2, 17, 128)
        p = _timm_attention_probs(attn, xin)
        qkv = attn.qkv(xin).reshape(2, 17, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        manual = attn.proj((p @ qkv[2]).transpose(1, 2).reshape(2, 17, 128))
        assert torch.allclose(manual, attn(xin), atol=1e-5)
    assert cap.attention_source == "vit"
    assert cap.cls_attention.shape == (2, 4, 17)
    assert torch.allclose(cap.cls_attention.sum(-1), torch.ones(2, 4), atol=1e-5)
    assert torch.allclose(cap.attention, cap.attention_heads.sum(1))


# ----------------------------------------------------------------------------- datasets

def _source(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    imgs[:, 6:22, 8:20] = rng.integers(120, 256, (n, 16, 12))
    return imgs, np.arange(n) % 10


@pytest.mark.parametrize("clutter", ["standard", "matched"])
def test_cluttered_deterministic_and_mask_matches_item(clutter: str) -> None:
    a = ClutteredFashionMNIST(n=6, seed=3, img_size=40, in_chans=3, source=_source(), clutter=clutter)
    b = ClutteredFashionMNIST(n=6, seed=3, img_size=40, in_chans=3, source=_source(), clutter=clutter)
    c = ClutteredFashionMNIST(n=6, seed=4, img_size=40, in_chans=3, source=_source(), clutter=clutter)
    for i in range(6):
        xa, ya, ma = a[i]
        xb, yb, mb = b[i]
        assert torch.equal(xa, xb) and ya == yb and torch.equal(ma, mb)
        assert xa.shape == (3, 40, 40) and ma.shape == (40, 40) and ma.dtype == torch.uint8
        assert 0 <= xa.min() and xa.max() <= 1
        img, label, mask, info = a.sample(i)
        y, x, s, item = info["y"], info["x"], info["size"], info["item"]
        expected = np.zeros_like(mask)
        expected[y:y + s, x:x + s] = info["item_mask"]
        assert (mask == expected).all() and mask.sum() > 0
        assert np.allclose(img[mask == 1], item[info["item_mask"]])  # mask pixels hold the item
        if clutter == "standard":
            assert (info["item_mask"] == (item > a.item_threshold)).all()
        assert label == int(_source()[1][info["index"]])
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(6))


def test_matched_clutter_removes_most_of_the_brightness_shortcut() -> None:
    from frozenlm.analysis.analyze import brightness_map
    res = {}
    for clutter in ("standard", "matched"):
        ds = ClutteredFashionMNIST(n=60, seed=0, img_size=32, clutter=clutter)
        xs = torch.stack([ds[i][0] for i in range(60)])
        gt, valid = mask_to_tokens(torch.stack([ds[i][2] for i in range(60)]), (4, 4))
        acc = MIoUAccumulator()
        acc.add("b", brightness_map(xs, (4, 4)), gt, valid)
        res[clutter] = acc.result()["b"]
    assert res["standard"] > 0.8 and res["matched"] < res["standard"] - 0.2, res
    with pytest.raises(ValueError, match="clutter must be one of"):
        ClutteredFashionMNIST(n=1, source=_source(), clutter="heavy")


def test_brightness_reference_map() -> None:
    from frozenlm.analysis.analyze import brightness_map
    img = torch.zeros(2, 3, 8, 8)
    img[0, :, :4, 4:] = 1.0  # top-right token of a 2x2 grid
    b = brightness_map(img, (2, 2))
    assert b.shape == (2, 2, 2) and b[0, 0, 1] == 1.0 and b[0].sum() == 1.0
    assert torch.equal(b[1], torch.zeros(2, 2))  # constant image: no division by zero


def test_cluttered_real_fashion_mnist_matches_model_input() -> None:
    ds = ClutteredFashionMNIST(n=2, seed=0, img_size=28, in_chans=1)
    x, y, m = ds[1]
    assert x.shape == (1, 28, 28) and 0 <= y < 10 and 0 < int(m.sum()) < 28 * 28


def test_imagenet_s_layout(tmp_path: Path) -> None:
    from PIL import Image
    (tmp_path / "validation" / "n01").mkdir(parents=True)
    (tmp_path / "validation-segmentation" / "n01").mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "validation" / "n01" / "a.JPEG")
    ids = np.zeros((20, 30), np.int64)
    ids[:10, :15] = 7
    ids[10:, 15:] = 1000
    rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)  # id = R + 256 G
    Image.fromarray(rgb).save(tmp_path / "validation-segmentation" / "n01" / "a.png")
    ds = ImageNetS(tmp_path, img_size=8)
    x, label, m = ds[0]
    assert x.shape == (3, 8, 8) and label == 0
    assert m[:4, :4].eq(1).all() and m[4:, 4:].eq(IGNORE).all() and m[:4, 4:].eq(0).all()


# ----------------------------------------------------------------------------- report and CLI

def test_report_files(tmp_path: Path) -> None:
    img = torch.rand(1, 28, 28)
    rows = {"magnitude": {"F_E": torch.rand(4, 4), "F_L2": torch.rand(4, 4)}, "attention": {"CLS": torch.rand(4, 4)}}
    p = save_overlay(tmp_path / "o" / "x.png", img, rows, mask=(img > 0.5).to(torch.uint8)[0], title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = {"base": {"F_E/mag": 0.25}, "lm": {"F_E/mag": 0.3, "F_L2/mag": 0.5}}
    c, m = write_table(res, tmp_path)
    rows_csv = list(csv.reader(c.open()))
    assert rows_csv[0] == ["model", "map", "miou"] and ["lm", "F_L2/mag", "0.5000"] in rows_csv
    md = m.read_text()
    assert "| model | F_E/mag | F_L2/mag |" in md and "| base | 25.0 | - |" in md and "| lm | 30.0 | 50.0 |" in md
    assert bar_plot(res, tmp_path / "bar.png").stat().st_size > 1000


def test_analysis_clutter_follows_the_checkpoint() -> None:
    from frozenlm.analysis.analyze import clutter_for
    from frozenlm.config import load_config
    matched = load_config("configs/image/cluttered_smollm2.yaml")
    assert matched.task == "image_cluttered" and clutter_for({"clutter": None}, matched) == "matched"
    assert clutter_for({"clutter": "standard"}, matched) == "standard"  # an explicit choice wins
    assert clutter_for({"clutter": None}, load_config("configs/image/fmnist_smollm2.yaml")) == "standard"


def test_seed_aggregation(tmp_path: Path) -> None:
    from frozenlm.analysis.report import aggregate_seeds, seed_groups, write_seed_table
    res = {"none_s0": {"F_E/mag": 0.2}, "none_s1": {"F_E/mag": 0.4}, "frozen_s0": {"F_E/mag": 0.5, "F_L2/mag": 0.6},
           "frozen_s1": {"F_E/mag": 0.7, "F_L2/mag": 0.6}, "frozen_s2": {"F_E/mag": 0.6}, "other": {"F_E/mag": 0.9}}
    assert seed_groups(res) == {"none": ["none_s0", "none_s1"], "frozen": ["frozen_s0", "frozen_s1", "frozen_s2"]}
    agg = aggregate_seeds(res)
    m, sd, n = agg["none"]["F_E/mag"]
    assert (m, n) == (pytest.approx(0.3), 2) and sd == pytest.approx(0.1414213, abs=1e-6)  # sample std
    assert agg["frozen"]["F_E/mag"][0] == pytest.approx(0.6) and agg["frozen"]["F_L2/mag"] == (pytest.approx(0.6), 0.0, 2)
    assert aggregate_seeds({"a_s0": {"x": 1.0}, "b_s0": {"x": 1.0}}) == {}  # one seed per variant: nothing to pool
    c, md = write_seed_table(agg, tmp_path)
    assert ["none", "F_E/mag", "0.3000", "0.1414", "2"] in list(csv.reader(c.open()))
    assert "| frozen | 3 | 60.0 ± 10.0 | 60.0 ± 0.0 |" in md.read_text()


def test_analyze_cli_on_trained_checkpoints(tmp_path: Path) -> None:
    from frozenlm.cli import main_analyze
    from frozenlm.config import load_config
    from frozenlm.engine.train import train

    runs = []
    for name, variant in (("base", "none"), ("lm", "frozen")):
        # Trained on the cluttered data through the image_cluttered task (frozenlm/tasks/image_cluttered.py).
        cfg = load_config("configs/image/cluttered_smollm2.yaml", [
                                    f"model.lm.variant={variant}", "data.clutter=standard", "data.img_size=28",
                                    "model.name=vit_mini_patch7_28", "max_steps=2",
                                    "data.subset_train=64", "data.subset_val=32", "batch_size=16", "num_workers=0",
                                    "progress=false", "precision=fp32", f"run_dir={tmp_path / name}"])
        train(cfg)
        runs.append(str(tmp_path / name))
    out = tmp_path / "out"
    res = main_analyze([*runs, "data=cluttered", f"out={out}", "n=6", "figures=2", "batch=4", "seed=1"])
    assert set(res) == {"base", "lm"}
    refs = {"ref_brightness", "ref_random"}
    assert set(res["base"]) == {"F_E/mag", "F_E/freq", "attn_vit"} | refs
    assert {f"{s}/{k}" for s in STAGES for k in ("mag", "freq")} | {"attn_lm"} | refs == set(res["lm"])
    assert res["base"]["ref_brightness"] == res["lm"]["ref_brightness"]  # same images, same tokens
    assert all(0 <= v <= 1 and not math.isnan(v) for r in res.values() for v in r.values())
    for f in ("miou.csv", "miou.md", "miou_bar.png", "base/overlay_000.png", "lm/overlay_001.png", "lm/miou.md"):
        assert (out / f).is_file(), f
    assert not (out / "lm" / "overlay_002.png").exists()


def test_image_cluttered_task_dataset() -> None:
    from frozenlm.data.cluttered import cluttered_classification_dataset
    from frozenlm.engine.task import get_task

    assert get_task("image_cluttered") is not None
    ds = cluttered_classification_dataset({"img_size": 28, "in_chans": 1, "subset_val": 3}, "val")
    x, y = ds[0]
    raw, y2, _ = ds.ds[0]
    assert len(ds) == 3 and x.shape == (1, 28, 28) and y == y2 and ds.num_classes == 10
    assert torch.allclose(x * ds.std + ds.mean, raw, atol=1e-6)


def test_analyze_refuses_a_model_without_a_patch_grid_clearly(tmp_path) -> None:
    """A `timm:` backbone (here a ResNet with a spliced block) has no ViT stages: one clear error naming
    the model, not an AttributeError from inside torch."""
    import timm

    import frozenlm
    from frozenlm.analysis.analyze import DEFAULTS, analyze_model
    from frozenlm.config import Config
    model = frozenlm.splice(timm.create_model("resnet18", num_classes=10), at="layer3", source="minilm-l6")
    cfg = Config({"model": {"name": "timm:resnet18"}, "task": "image"})
    with pytest.raises(ValueError, match="this run's model is 'timm:resnet18' \\(ResNet\\)"):
        analyze_model(model, cfg, dict(DEFAULTS), tmp_path, "run")
