"""VideoMAE-style video ViT + LMLayer: forward by hand, sinusoid table, checkpointing, LR decay, loading."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from frozenlm.config import load_config
from frozenlm.layer import count_parameters
from frozenlm.lm.readers.base import CheckpointError
from frozenlm.models import create_model
from frozenlm.models.video_vit import VideoViTLM, load_videomae_weights, sinusoid_table
from frozenlm.engine.optim import param_groups
from frozenlm.tasks.video import layer_decay_mults

from _video_fixtures import lm_layer

MINI = "video_vit_mini_t4p8_32"


def _mini(**kw) -> VideoViTLM:
    torch.manual_seed(0)
    return create_model(MINI, num_classes=12, **kw)


def test_sinusoid_table_by_hand() -> None:
    t = sinusoid_table(5, 8)
    assert t.shape == (1, 5, 8)
    assert t[0, 1, 0] == pytest.approx(math.sin(1.0)) and t[0, 1, 1] == pytest.approx(math.cos(1.0))
    assert t[0, 3, 2] == pytest.approx(math.sin(3 / 10000 ** (2 / 8)), rel=1e-6)
    assert t[0, 3, 5] == pytest.approx(math.cos(3 / 10000 ** (4 / 8)), rel=1e-6)


def test_forward_equals_manual_recomputation() -> None:
    m = _mini(lm=lm_layer("mlp")).eval()
    for blk in m.blocks:  # non-zero q/v biases so the test sees where they go
        torch.nn.init.normal_(blk.attn.q_bias)
        torch.nn.init.normal_(blk.attn.v_bias)
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        t = m.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (2, 32, 128), time-major tubelets
        assert t.shape == (2, 32, 128)
        t = t + sinusoid_table(32, 128)
        for blk in m.blocks:
            a = blk.norm1(t)
            w = blk.attn.qkv.weight
            q = a @ w[:128].T + blk.attn.q_bias
            k = a @ w[128:256].T  # VideoMAE: no k bias
            v = a @ w[256:].T + blk.attn.v_bias
            q, k, v = (z.view(2, 32, 4, 32).transpose(1, 2) for z in (q, k, v))
            att = ((q @ k.transpose(-1, -2)) / math.sqrt(32)).softmax(-1) @ v
            t = t + blk.attn.proj(att.transpose(1, 2).reshape(2, 32, 128))
            t = t + blk.mlp(blk.norm2(t))
        lm = m.lm_layer
        t = lm.proj_out(lm.mlp_norm(F.gelu(lm.proj_in(t))))  # the LMLayer replaces the tokens
        expected = m.head(m.fc_norm(t.mean(1)))
        got = m(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_head_init_scale_and_shape_errors() -> None:
    m = _mini(init_scale=0.001)
    assert m.head.weight.std() < 0.02 * 0.001 * 1.5
    big = _mini(init_scale=1.0)
    assert 0.015 < big.head.weight.std() < 0.025
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 32, 32\).*data.num_frames"):
        m(torch.randn(1, 3, 16, 32, 32))
    assert create_model("videomae_small_patch16_224", num_classes=174).patch_embed.num_patches == 1568


def test_frozen_lm_gradients_and_checkpointing_equivalence() -> None:
    m = _mini(lm=lm_layer("frozen"), drop_path_rate=0.0)
    c = count_parameters(m)
    assert c["frozen"] == 3540096  # one SmolLM2 block
    x, y = torch.randn(2, 3, 8, 32, 32), torch.tensor([1, 7])

    def grads(ckpt: bool) -> dict[str, torch.Tensor]:
        m.zero_grad(set_to_none=True)
        m.set_grad_checkpointing(ckpt)
        F.cross_entropy(m(x), y).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain, ck = grads(False), grads(True)
    assert set(plain) == set(ck)
    assert not any(n.startswith("lm_layer.blocks.") for n in plain)  # frozen: no gradients
    assert plain["blocks.0.attn.qkv.weight"].abs().sum() > 0  # ... but they flow through it
    for n in plain:
        torch.testing.assert_close(ck[n], plain[n], atol=1e-6, rtol=1e-5)


def test_layer_wise_lr_decay_groups() -> None:
    m = _mini(lm=lm_layer("mlp"))
    cfg = load_config("configs/video/shapes_smollm2.yaml")
    groups = param_groups(m, cfg, layer_decay_mults(m, 0.5))
    mult = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    depth = 4
    assert mult["patch_embed.proj.weight"] == 0.5 ** (depth + 1)
    assert mult["blocks.0.attn.qkv.weight"] == 0.5 ** depth
    assert mult["blocks.3.mlp.fc1.weight"] == 0.5
    assert mult["head.weight"] == mult["lm_layer.proj_in.weight"] == mult["fc_norm.weight"] == 1.0
    assert wd["blocks.0.attn.q_bias"] == 0.0 and wd["blocks.0.attn.qkv.weight"] == cfg.optim.weight_decay
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in m.parameters() if p.requires_grad)


def _videomae_pretrain_sd(src: VideoViTLM) -> dict[str, torch.Tensor]:
    # The key layout of VideoMAE's self-supervised checkpoints: encoder.*, a decoder, and no head.
    sd = {f"encoder.{k}": v.clone() for k, v in src.state_dict().items()
          if not k.startswith(("head.", "fc_norm.", "lm_layer."))}
    sd["encoder.norm.weight"], sd["encoder.norm.bias"] = torch.ones(128), torch.zeros(128)
    sd["decoder.blocks.0.attn.qkv.weight"] = torch.zeros(192, 64)
    sd["encoder_to_decoder.weight"] = torch.zeros(64, 128)
    sd["mask_token"] = torch.zeros(1, 1, 64)
    return sd


def test_load_videomae_key_layouts(tmp_path: Path) -> None:
    src = _mini()
    torch.save({"model": _videomae_pretrain_sd(src)}, tmp_path / "pretrain.pth")
    m = create_model(MINI, num_classes=12, lm=lm_layer("mlp"))
    rep = load_videomae_weights(m, tmp_path / "pretrain.pth", verbose=False)
    torch.testing.assert_close(m.blocks[2].attn.v_bias, src.blocks[2].attn.v_bias)
    torch.testing.assert_close(m.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert rep.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert set(rep.unexpected) == {"encoder.norm.weight", "encoder.norm.bias", "decoder.blocks.0.attn.qkv.weight",
                                   "encoder_to_decoder.weight", "mask_token"}
    # A fine-tuned checkpoint (no prefix) with another class count: the head is dropped, the rest loads.
    ft = {k: v for k, v in src.state_dict().items() if not k.startswith("lm_layer.")}
    ft["head.weight"], ft["head.bias"] = torch.randn(174, 128), torch.zeros(174)
    ft["pos_embed"] = torch.zeros(1, 32, 128)
    torch.save({"module": ft}, tmp_path / "ft.pth")
    via_factory = create_model(MINI, num_classes=12, pretrained_path=str(tmp_path / "ft.pth"))
    torch.testing.assert_close(via_factory.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    rep = load_videomae_weights(m, tmp_path / "ft.pth", verbose=False)
    assert any("head.weight" in d for d in rep.dropped) and any("pos_embed" in d for d in rep.dropped)
    torch.testing.assert_close(m.fc_norm.weight, src.fc_norm.weight)
    # A file that lacks backbone keys, or has other shapes, is refused with the keys named.
    torch.save({k: v for k, v in ft.items() if not k.startswith("blocks.3.")}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing backbone keys: \['blocks.3"):
        load_videomae_weights(m, tmp_path / "partial.pth", verbose=False)
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight has shape"):
        load_videomae_weights(create_model("video_vit_mini_t2p8_32", num_classes=12), tmp_path / "ft.pth")
