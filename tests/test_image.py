"""Image task: ViT + LMLayer models, registry, backbone loading, the image task through the engine."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from frozenlm import LMLayer
from frozenlm.config import load_config
from frozenlm.engine.checkpoint import CheckpointError as EngineCheckpointError
from frozenlm.engine import evaluate, train
from frozenlm.layer import count_parameters, frozen_param_names
from frozenlm.lm.block import RMSNorm
from frozenlm.models import create_model
from frozenlm.models.vit import ViTLM
from _best import assert_best_checkpoint

CONFIG = "configs/image/fmnist_smollm2.yaml"


def test_vit_lm_forward_equals_manual_recomputation() -> None:
    torch.manual_seed(0)
    m = create_model("vit_tiny_patch7_28", lm="smollm2-135m", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    v, lm = m.vit, m.lm_layer
    with torch.no_grad():
        t = v._pos_embed(v.patch_embed(x))
        for blk in v.blocks:
            t = blk(t)
        h = lm.proj_in(t)
        for b in lm.blocks.layers:  # the LLaMA block written out by hand: pre-norm, no mask, no RoPE
            a = b.attn_norm(h)
            q = b.attn.q(a).view(3, -1, 9, 64).transpose(1, 2)
            k = b.attn.k(a).view(3, -1, 3, 64).transpose(1, 2).repeat_interleave(3, 1)
            val = b.attn.v(a).view(3, -1, 3, 64).transpose(1, 2).repeat_interleave(3, 1)
            att = ((q @ k.transpose(-1, -2)) / 8.0).softmax(-1) @ val
            h = h + b.attn.o(att.transpose(1, 2).reshape(3, -1, 576))
            f = b.ffn_norm(h)
            h = h + b.ffn.down(torch.nn.functional.silu(b.ffn.gate(f)) * b.ffn.up(f))
        h = RMSNorm(576, eps=lm.blocks.cfg.norm_eps, weight=False)(h).float()
        expected = v.head(v.norm(lm.proj_out(h))[:, 0])
        got = m(x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("position,at", [("tail", 6), ("middle", 3), ("head", 0)])
def test_positions(position: str, at: int) -> None:
    m = create_model("vit_tiny_patch7_28", lm={"variant": "mlp", "source": "smollm2-135m"}, position=position,
                     num_classes=10, in_chans=1)
    assert m.insert_at == at
    seen = []
    m.lm_layer.register_forward_hook(lambda *_: seen.append(len(seen)))
    m.vit.blocks[min(at, 5)].register_forward_hook(lambda *_: seen.append("blk"))
    m(torch.randn(1, 1, 28, 28))
    # The LMLayer runs right before block `at` (or after the last block for tail).
    assert seen == ([0, "blk"] if at < 6 else ["blk", 1])


def test_source_string_with_layers_and_variants_counts() -> None:
    m = create_model("vit_tiny_patch7_28", lm="smollm2-135m:-2:", num_classes=10, in_chans=1)
    assert m.lm_layer.layer_indices == [28, 29]
    c = count_parameters(m)
    base = count_parameters(create_model("vit_tiny_patch7_28", num_classes=10, in_chans=1))
    assert c["trainable"] - base["trainable"] == 2 * 192 * 576
    assert c["frozen"] == 2 * 3540096
    names = frozen_param_names(m)
    assert names and all(n.startswith("lm_layer.blocks.") for n in names)


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(ValueError, match="vit_small_patch16_224"):
        create_model("vit_smal_patch16_224")


def test_timm_224_models_and_freeze_backbone() -> None:
    m = create_model("vit_small_patch16_224", lm=None, num_classes=5, freeze="backbone")
    assert isinstance(m, ViTLM) and m(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"vit.head.weight", "vit.head.bias"}
    m2 = create_model("vit_tiny_patch7_28", lm={"variant": "mlp", "source": "smollm2-135m"}, num_classes=3,
                      in_chans=1, freeze="backbone")
    trainable = {n for n, p in m2.named_parameters() if p.requires_grad}
    assert trainable == {"vit.head.weight", "vit.head.bias", "lm_layer.proj_in.weight", "lm_layer.proj_out.weight"}


def test_backbone_weights_from_local_file(tmp_path: Path) -> None:
    src = create_model("vit_tiny_patch4_32", num_classes=7).vit
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    # A different grid (28 px) resamples pos_embed; a different head size drops the head.
    m = create_model("vit_tiny_patch4_32", num_classes=7, pretrained_path=str(path))
    torch.testing.assert_close(m.vit.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    m2 = create_model("vit_tiny_patch4_32", num_classes=3, img_size=28, pretrained_path=str(path))
    assert m2.vit.pos_embed.shape == (1, 50, 192)
    torch.save({"model": src.state_dict()}, tmp_path / "deit.pth")  # DeiT-style wrapper dict
    m3 = create_model("vit_tiny_patch4_32", num_classes=7, pretrained_path=str(tmp_path / "deit.pth"))
    torch.testing.assert_close(m3.vit.head.weight, src.head.weight)
    with pytest.raises(ValueError, match="not found"):
        create_model("vit_tiny_patch4_32", pretrained_path=str(tmp_path / "missing.pth"))
    small = create_model("vit_small_patch4_32").vit
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match="shape mismatch"):
        create_model("vit_tiny_patch4_32", pretrained_path=str(tmp_path / "s.safetensors"))


def _tiny_cfg(tmp_path: Path, *extra: str):
    return load_config(CONFIG, ["data.subset_train=256", "data.subset_val=128", "batch_size=32", "epochs=1",
                                "num_workers=0", "precision=fp32", "progress=false", "optim.warmup_epochs=0",
                                f"run_dir={tmp_path / 'run'}", *extra])


def test_image_task_trains_checkpoints_and_evaluates(tmp_path: Path) -> None:
    cfg = _tiny_cfg(tmp_path, "optim.lr=2e-3", "epochs=3", "log_every=1")
    metrics = train(cfg)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    evals = [r["loss"] for r in log if r["kind"] == "eval"]
    assert len(losses) >= 20 and sum(losses[-4:]) < sum(losses[:4])
    assert evals[-1] < evals[0]
    assert metrics["top1"] > 15.0  # 10 classes: chance is 10%
    ck = tmp_path / "run" / "checkpoints" / "latest"
    step_dir = (tmp_path / "run" / "checkpoints" / ck.read_text().strip()) if ck.is_file() else ck
    with safe_open(str(step_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("lm_layer.blocks.") for k in keys)  # no frozen tensors stored
    assert {"lm_layer.proj_in.weight", "lm_layer.proj_out.weight", "vit.head.weight"} <= keys
    assert_best_checkpoint(tmp_path / "run", "top1", "max")  # 3 evaluations: best is the best top-1
    again = evaluate(tmp_path / "run")
    assert again["top1"] == pytest.approx(metrics["top1"])
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data.subset_train == 256 and saved.precision == "fp32"
    # A checkpoint made with one frozen layer refuses to load against another.
    with pytest.raises(EngineCheckpointError, match="frozen"):
        evaluate(tmp_path / "run", ["model.lm.layers=[-2]"])


def test_imagenet_ar_masking_in_eval(tmp_path: Path) -> None:
    from PIL import Image
    from frozenlm.data import imagenet_wnids
    from frozenlm.tasks.image import ImageClassification
    wnids = imagenet_wnids()
    picked = [wnids[5], wnids[17], wnids[400]]
    for w in picked:
        (tmp_path / w).mkdir()
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / w / "a.JPEG")
    cfg = load_config("configs/image/imagenet_vit_s.yaml",
                      ["data.name=imagenet_a", f"data.root={tmp_path}", "+data.num_classes_found=3"])
    cfg.data.num_classes = 3  # the fake set has 3 of the 200 folders
    task = ImageClassification()
    task._mixup = None
    ds = task.build_dataset(cfg, "val")
    assert task._class_indices.tolist() == [5, 17, 400]

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 1000)
            logits[:, 999] = 100.0  # an excluded class wins unmasked ...
            logits[:, 17] = 10.0    # ... class 17 (label 1 in the 200-class space) wins masked
            return logits
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    sums = task.eval_batch(Fixed(), (x, y), cfg)
    assert float(sums["correct1"]) == 1.0 and float(sums["count"]) == 3.0


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        train(_tiny_cfg(tmp_path, "data.num_classes=5", "model.num_classes=5"))
    with pytest.raises(ValueError, match="unknown model name"):
        train(_tiny_cfg(tmp_path, "model.name=vit_nope"))
    with pytest.raises(FileNotFoundError, match="apt-get"):
        train(_tiny_cfg(tmp_path, "data.root=/nonexistent/fmnist"))
    with pytest.raises(ValueError, match="variant"):
        LMLayer(8, variant="frozn")


def test_imagenet_c_per_corruption_accuracy(tmp_path: Path) -> None:
    from PIL import Image
    from frozenlm.data import imagenet_wnids
    from frozenlm.tasks.image import ImageClassification
    wnids = imagenet_wnids()
    for corr in ("fog", "snow"):
        for w in (wnids[3], wnids[7]):
            d = tmp_path / corr / "1" / w
            d.mkdir(parents=True)
            Image.new("RGB", (32, 32), (0, 0, 0)).save(d / "a.JPEG")
    cfg = load_config("configs/image/imagenet_vit_s.yaml", ["data.name=imagenet_c", f"data.root={tmp_path}"])
    task = ImageClassification()
    ds = task.build_dataset(cfg, "val")
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it[0] for it in items])
    y = torch.tensor([it[1] for it in items])
    part = torch.tensor([it[2] for it in items])
    assert sorted(set(part.tolist())) == [0, 1] and set(y.tolist()) == {3, 7}

    class AlwaysThree(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 1000)
            out[:, 3] = 1.0
            return out
    m = task.finalize(task.eval_batch(AlwaysThree(), (x, y, part), cfg), cfg)
    assert m["top1"] == pytest.approx(50.0)
    assert m["imagenet_c/fog"] == pytest.approx(50.0) and m["imagenet_c/mean"] == pytest.approx(50.0)
