"""`frozenlm.splice` (issue 19, part 2): an LMLayer after any named submodule of any nn.Module.

Every family is checked against an independent forward written out by hand from the model's own
pieces (timm's forward_features order, torchvision's and transformers' forward), so a wrong token
layout, a wrong insert point or a missing hook fails. The frozen block is all-MiniLM-L6-v2's last layer
(catalog `minilm-l6`, 384 wide; read in ~0.1 s).
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import frozenlm
from frozenlm.config import load_config, make_config
from frozenlm.engine.checkpoint import model_state_to_save
from frozenlm.engine.optim import build_optimizer, param_groups
from frozenlm.engine.task import get_task, task_schema
from frozenlm.layer import LMLayer, frozen_param_names
from frozenlm.models import create_model
from frozenlm.splice import SpliceError, freeze_backbone, splices

SRC = "minilm-l6"


def _lm(m: nn.Module) -> LMLayer:
    return m.lm_layer


def _check_backward(model: nn.Module, x: torch.Tensor, before: str) -> None:
    """Gradients reach F_L1/F_L2 and, through the frozen block, the backbone before the splice; none for
    the frozen block."""
    model.zero_grad(set_to_none=True)
    model(x).float().square().mean().backward()
    lm = _lm(model)
    assert lm.proj_in.weight.grad is not None and lm.proj_in.weight.grad.abs().sum() > 0
    assert lm.proj_out.weight.grad is not None and lm.proj_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lm.blocks.parameters())
    g = model.get_parameter(before).grad
    assert g is not None and g.abs().sum() > 0, f"no gradient reached {before} through the frozen block"


def _tokens_bchw(lm: LMLayer, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return lm(x.permute(0, 2, 3, 1).reshape(b, h * w, c)).reshape(b, h, w, c).permute(0, 3, 1, 2)


def test_timm_vit_tokens() -> None:
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, num_classes=5).eval()
    p = copy.deepcopy(m)  # the same weights without the hook, for the reference
    frozenlm.splice(m, at="blocks.0", source=SRC)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        t = p.norm_pre(p.patch_drop(p._pos_embed(p.patch_embed(x))))
        ref = p.forward_head(p.norm(p.blocks[1](_lm(m)(p.blocks[0](t)))))
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    assert splices(m)["lm_layer"].dim == 192 and splices(m)["lm_layer"].dim_from == "blocks.0.mlp.fc2.out_features"
    _check_backward(m.train(), x, "blocks.0.attn.qkv.weight")


def test_timm_swin_channels_last() -> None:
    """timm's Swin stages hand (B, H, W, C) to each other (timm/models/swin_transformer.py)."""
    torch.manual_seed(0)
    m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, depths=(1, 1),
                          num_heads=(2, 4), embed_dim=32, num_classes=5).eval()
    p = copy.deepcopy(m)
    frozenlm.splice(m, at="layers.0", source=SRC)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        h = p.layers[0](p.patch_embed(x))
        b, hh, ww, c = h.shape
        h = _lm(m)(h.reshape(b, hh * ww, c)).reshape(b, hh, ww, c)
        ref = p.forward_head(p.norm(p.layers[1](h)))
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
    _check_backward(m.train(), x, "layers.0.blocks.0.attn.qkv.weight")


@pytest.mark.parametrize("name,at,before", [("convnext_atto", "stages.1", "stages.0.blocks.0.conv_dw.weight"),
                                             ("resnet18", "layer3", "conv1.weight")])
def test_timm_convnets_channels_first(name: str, at: str, before: str) -> None:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=5).eval()
    plain = copy.deepcopy(m)
    frozenlm.splice(m, at=at, source=SRC)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        seen = []
        handle = plain.get_submodule(at).register_forward_hook(
            lambda mod, a, o: seen.append(o.shape[1]) or _tokens_bchw(_lm(m), o))
        ref = plain(x)  # the same weights, the LM layer applied by hand to the (B, C, H, W) output
        handle.remove()
        assert not torch.allclose(plain(x), ref), "the LM layer changed nothing"
        torch.testing.assert_close(m(x), ref)
        assert splices(m)["lm_layer"].dim == seen[0]  # the width read from the module is the output's
    _check_backward(m.train(), x, before)


def test_torchvision_resnet_and_vit() -> None:
    """torchvision's ResNet (NCHW) and VisionTransformer (batch-first (B, N, D) encoder layers,
    torchvision/models/vision_transformer.py)."""
    from torchvision.models import resnet18
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    p = resnet18(num_classes=4).eval()
    r = frozenlm.splice(copy.deepcopy(p), at="layer2", source=SRC)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = p.layer2(p.layer1(p.maxpool(p.relu(p.bn1(p.conv1(x))))))
        h = p.avgpool(p.layer4(p.layer3(_tokens_bchw(_lm(r), h))))
        torch.testing.assert_close(r(x), p.fc(h.flatten(1)))
    assert splices(r)["lm_layer"].dim == 128
    _check_backward(r.train(), x, "layer1.0.conv1.weight")

    v = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                          num_classes=3).eval()
    nn.init.normal_(v.heads.head.weight, std=0.02)  # torchvision starts the head at zero: no gradient behind it
    p = copy.deepcopy(v)
    frozenlm.splice(v, at="encoder.layers.encoder_layer_0", source=SRC)
    with torch.no_grad():
        t = p._process_input(x[:, :, :32, :32])
        t = torch.cat([p.class_token.expand(2, -1, -1), t], 1) + p.encoder.pos_embedding
        e = p.encoder
        t = e.ln(e.layers.encoder_layer_1(_lm(v)(e.layers.encoder_layer_0(e.dropout(t)))))
        torch.testing.assert_close(v(x[:, :, :32, :32]), p.heads(t[:, 0]), rtol=0, atol=0)
    _check_backward(v.train(), x[:, :, :32, :32], "conv_proj.weight")


def test_transformers_vit_tensor_and_model_output() -> None:
    """transformers' ViT built from a config (no download): a layer (a tensor out) and the whole ViTModel
    (a BaseModelOutputWithPooling with one field set), transformers/models/vit/modeling_vit.py."""
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, num_labels=3)
    base = ViTForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    a = frozenlm.splice(copy.deepcopy(base), at="vit.layers.1", source=SRC)
    b = frozenlm.splice(copy.deepcopy(base), at="vit", source=SRC)
    b.lm_layer.load_state_dict(a.lm_layer.state_dict())
    with torch.no_grad():
        # after the last layer vs after the final layernorm: the references differ by where the LM layer sits
        h = base.vit.embeddings(x)
        for layer in base.vit.layers:
            h = layer(h)
        ref_a = base.classifier(base.vit.layernorm(_lm(a)(h))[:, 0])
        ref_b = base.classifier(_lm(b)(base.vit.layernorm(h))[:, 0])
        torch.testing.assert_close(a(x).logits, ref_a, rtol=0, atol=1e-6)
        torch.testing.assert_close(b(x).logits, ref_b, rtol=0, atol=1e-6)
    _check_backward(_Logits(a).train(), x, "model.vit.embeddings.patch_embeddings.projection.weight")


class _Logits(nn.Module):
    """A ModelOutput model as a tensor-out one (for the backward check)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.lm_layer = model.lm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def test_frozen_parameters_get_no_gradient_and_no_optimizer_state() -> None:
    m = frozenlm.splice(timm.create_model("resnet18", pretrained=False, num_classes=3), at="layer3", source=SRC)
    cfg = make_config({})
    frozen = {n for n, p in m.named_parameters() if n.startswith("lm_layer.blocks.")}
    assert frozen and frozen <= frozen_param_names(m)
    assert all(n.startswith("lm_layer.blocks.") for n in frozen_param_names(m))
    in_groups = {n for g in param_groups(m, cfg) for n in g["param_names"]}
    assert in_groups == {n for n, p in m.named_parameters() if n not in frozen}
    opt = build_optimizer(m, cfg)
    m(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    by_id = {id(p): n for n, p in m.named_parameters()}
    stated = {by_id[id(p)] for p in opt.state}
    assert stated == in_groups and not stated & frozen
    assert all(m.get_parameter(n).grad is None for n in frozen)


def test_spliced_timm_vit_equals_the_preset() -> None:
    """The paper's placement (after the last block, before the final norm) through splice gives exactly
    the logits of frozenlm's ViT preset with the same weights; so does the middle position."""
    kw = dict(img_size=32, depth=4, num_classes=3, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    for pos, at in (("tail", "blocks.3"), ("middle", "blocks.1")):
        torch.manual_seed(0)
        preset = create_model("vit_tiny_patch16_224", lm=SRC, position=pos, **kw).eval()
        via_config = create_model("timm:vit_tiny_patch16_224", lm={"source": SRC, "at": None}, position=pos, **kw)
        by_hand = frozenlm.splice(timm.create_model("vit_tiny_patch16_224", **kw), at=at, source=SRC)
        assert splices(via_config)["lm_layer"].at == at
        for m in (via_config, by_hand):
            m.load_state_dict({k.removeprefix("vit."): v for k, v in preset.state_dict().items()}, strict=True)
            m.eval()
            with torch.no_grad():
                assert torch.equal(m(x), preset(x)), pos
            assert frozenlm.frozen_sources(m) == frozenlm.frozen_sources(preset)


def test_bad_at_lists_close_matches() -> None:
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    with pytest.raises(SpliceError, match=r"at='blocks.l'.*Close matches: \['blocks\.1'"):
        frozenlm.splice(m, at="blocks.l", source=SRC)
    with pytest.raises(SpliceError, match="names no submodule"):
        create_model("timm:resnet18", lm={"source": SRC, "at": "layer9"})
    assert not hasattr(m, "lm_layer")


class _Out(nn.Module):
    """A module whose output is a fixed-shape tensor, tuple or dict (for layout rules)."""

    def __init__(self, kind: str, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, self.shape = kind, shape
        self.lin = nn.Linear(4, shape[-1] if kind != "bchw" else shape[1])

    def forward(self, x: torch.Tensor) -> object:
        t = torch.randn(self.shape) + x.sum() * 0
        if self.kind == "tuple":
            return t, t.mean()
        if self.kind == "dict":
            return {"hidden": t, "aux": t.mean()}
        return t


class _ConvLast(nn.Module):
    """A 1x1 conv whose output is permuted to (B, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).permute(0, 2, 3, 1)


class _Wrap(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> object:
        return self.inner(x)


def test_layouts_tuples_and_clear_errors() -> None:
    x = torch.zeros(1)
    amb = frozenlm.splice(_Wrap(_Out("bchw", (2, 8, 4, 8))), at="inner", source=SRC, dim=8)
    with pytest.raises(SpliceError, match="ambiguous"):
        amb(x)
    ok = frozenlm.splice(_Wrap(_Out("bchw", (2, 8, 4, 8))), at="inner", source=SRC, dim=8, layout="NCHW")
    assert ok(x).shape == (2, 8, 4, 8)
    tup = frozenlm.splice(_Wrap(_Out("tuple", (2, 5, 16))), at="inner", source=SRC)
    with pytest.raises(SpliceError, match="select=<index>"):
        tup(x)
    sel = frozenlm.splice(_Wrap(_Out("tuple", (2, 5, 16))), at="inner", source=SRC, select=0)
    out = sel(x)
    assert isinstance(out, tuple) and out[0].shape == (2, 5, 16)
    d = frozenlm.splice(_Wrap(_Out("dict", (2, 5, 16))), at="inner", source=SRC, select="hidden")
    assert set(d(x)) == {"hidden", "aux"}
    with pytest.raises(SpliceError, match="select=<field>"):
        frozenlm.splice(_Wrap(_Out("dict", (2, 5, 16))), at="inner", source=SRC)(x)
    with pytest.raises(SpliceError, match="pass dim="):
        frozenlm.splice(_Wrap(nn.ReLU()), at="inner", source=SRC)
    # a width read from a channels-first layer with a (B, H, W, C)-looking output is refused, not guessed
    img = torch.randn(1, 3, 4, 5)
    with pytest.raises(SpliceError, match="channels-first"):
        frozenlm.splice(_Wrap(_ConvLast()), at="inner", source=SRC)(img)
    assert frozenlm.splice(_Wrap(_ConvLast()), at="inner", source=SRC, layout="NHWC")(img).shape == (1, 4, 5, 8)
    # a custom layout pair: tokens on the last axis of a (B, D, N) output
    cl = frozenlm.splice(_Wrap(_Out("x", (2, 16, 5))), at="inner", source=SRC, dim=16,
                         layout=(lambda o: o.transpose(1, 2), lambda t, o: t.transpose(1, 2)))
    assert cl(x).shape == (2, 16, 5)
    with pytest.raises(SpliceError, match="bare Sequential"):
        frozenlm.splice(nn.Sequential(nn.Linear(4, 4)), at="0", source=SRC)


def test_freeze_backbone_trains_only_the_maps_and_the_head() -> None:
    """model.freeze_backbone through the image task's config: the sandwich's two maps and timm's classifier
    train; the backbone is frozen, stays in eval mode (BatchNorm statistics unchanged by a training step)
    and is still saved by the engine's checkpoints."""
    cfg = load_config("configs/image/fmnist_smollm2.yaml",
                      ["model.name=timm:resnet18", "model.lm.at=layer3", f"model.lm.source={SRC}",
                       "model.freeze_backbone=true"], schema_for=task_schema)
    m = get_task("image").build_model(cfg)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "lm_layer.proj_in.weight", "lm_layer.proj_out.weight", "fc.weight", "fc.bias"}
    stats = m.layer1[0].bn1.running_mean.clone()
    m.train()
    m(torch.randn(4, 1, 28, 28)).sum().backward()
    assert not m.layer1[0].bn1.training and not m.bn1.training and m.fc.training
    assert torch.equal(m.layer1[0].bn1.running_mean, stats)
    saved = model_state_to_save(m)
    assert "conv1.weight" in saved and "layer1.0.bn1.running_mean" in saved
    assert not any(k.startswith("lm_layer.blocks.") for k in saved)
    opt = build_optimizer(m, cfg)
    assert {n for g in opt.param_groups for n in g["param_names"]} == {
        "lm_layer.proj_in.weight", "lm_layer.proj_out.weight", "fc.weight", "fc.bias"}
    # freeze_backbone on a model without timm's get_classifier() needs head=
    from torchvision.models import resnet18
    with pytest.raises(SpliceError, match="pass head="):
        freeze_backbone(resnet18())
    tv = freeze_backbone(resnet18(num_classes=2), head="fc")
    assert {n for n, p in tv.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}


def test_timm_prefix_config_errors() -> None:
    with pytest.raises(ValueError, match="not a timm model name"):
        create_model("timm:resnet181", lm=None)
    with pytest.raises(ValueError, match="both name an insert point"):
        create_model("timm:resnet18", lm={"source": SRC, "at": "layer3"}, position="middle")
    with pytest.raises(ValueError, match="model.lm.at"):
        create_model("timm:resnet18", lm={"source": SRC}, position="head")
    with pytest.raises(ValueError, match="for `timm:<name>` models"):
        create_model("vit_mini_patch7_28", lm={"source": SRC, "at": "blocks.1"})
    base = create_model("timm:resnet18", lm=None, num_classes=2)
    assert splices(base)["lm_layer"].at == "layer4" and base.lm_layer.variant == "none"


def test_deepcopy_and_replaced_modules_keep_the_splice() -> None:
    """A deep copy (as EMA or a user might make) runs its own LMLayer; a module swapped in at the splice
    path after splicing (the engine's SyncBatchNorm conversion does this to BatchNorms) gets the hook back,
    and a frozen backbone stays pinned in eval mode through the swap."""
    from frozenlm.engine.syncbn import GlobalBatchNorm, convert_sync_batchnorm
    torch.manual_seed(0)
    m = frozenlm.splice(timm.create_model("resnet18", pretrained=False, num_classes=3), at="layer3.1.bn2",
                        source=SRC, dim=256).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        c = copy.deepcopy(m)
        c.lm_layer.proj_out.weight.mul_(2)
        assert not torch.allclose(c(x), ref) and torch.equal(m(x), ref)
        convert_sync_batchnorm(m)
        assert isinstance(m.layer3[1].bn2, GlobalBatchNorm)
        torch.testing.assert_close(m(x), ref, rtol=0, atol=0)
        plain = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("lm_layer.")})
        assert not torch.allclose(plain(x), ref)  # the LM layer is what differs
    f = freeze_backbone(frozenlm.splice(timm.create_model("resnet18", pretrained=False), at="layer3", source=SRC))
    convert_sync_batchnorm(f)
    f.train()
    f(torch.randn(2, 3, 32, 32))
    assert isinstance(f.bn1, GlobalBatchNorm) and not f.bn1.training and f.fc.training
