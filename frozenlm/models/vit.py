"""timm VisionTransformer with an LMLayer spliced in (paper: after the last block, before the final norm)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layer import LMLayer
from ..splice import freeze_backbone as freeze_backbone_, split_at
from .weights import load_backbone_weights
from .registry import register_fallback, register_model

POSITIONS = ("head", "middle", "tail")

# Small ViTs for 28-64 px inputs (Fashion-MNIST, easy-VQA, the analysis dataset); the 224 px
# ones come straight from timm.
SMALL_VITS: dict[str, dict[str, Any]] = {
    "vit_mini_patch14_28": dict(img_size=28, patch_size=14, embed_dim=128, depth=4, num_heads=4),
    "vit_mini_patch7_28": dict(img_size=28, patch_size=7, embed_dim=128, depth=4, num_heads=4),
    "vit_tiny_patch7_28": dict(img_size=28, patch_size=7, embed_dim=192, depth=6, num_heads=3),
    "vit_tiny_patch4_28": dict(img_size=28, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_mini_patch4_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4),
    "vit_tiny_patch4_32": dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch4_32": dict(img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6),
    "vit_tiny_patch8_64": dict(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3),
}


class ViTLM(nn.Module):
    """A timm VisionTransformer whose token sequence passes through an LMLayer.

    position: "tail" = after the last block, before the final norm (the paper's default);
    "middle" = after block depth//2 - 1; "head" = before the first block. Every token, CLS
    included, goes through the LMLayer and replaces its input (no residual unless the LMLayer
    asks for one); the classifier reads the CLS token as in timm.
    """

    def __init__(self, vit: nn.Module, lm_layer: LMLayer, position: str = "tail") -> None:
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        self.vit, self.lm_layer, self.position = vit, lm_layer, position
        depth = len(vit.blocks)
        self.insert_at = {"head": 0, "middle": depth // 2, "tail": depth}[position]
        self.num_classes = vit.num_classes

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's no-decay names, prefixed (pos_embed, cls_token, ...)."""
        return {f"vit.{n}" for n in self.vit.no_weight_decay()}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ViT blocks in backward to save activation memory."""
        self.vit.set_grad_checkpointing(enable)

    def tokens(self, x: Tensor) -> Tensor:
        """Patch embedding + CLS + position embedding: F_E's input tokens (B, N, D)."""
        v = self.vit
        return v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after all blocks, the LMLayer and the final norm."""
        x = self.tokens(x)
        blocks = self.vit.blocks
        ckpt = getattr(self.vit, "grad_checkpointing", False) and self.training
        for i, blk in enumerate(blocks):
            if i == self.insert_at:
                x = self.lm_layer(x)
            x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        if self.insert_at == len(blocks):
            x = self.lm_layer(x)
        return self.vit.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> logits (B, num_classes)."""
        return self.vit.forward_head(self.forward_features(x))


def build_vit_backbone(name: str, img_size: int | None = None, pretrained_path: str | Path | None = None,
                       presets: dict[str, dict[str, Any]] | None = None, **kw: Any) -> nn.Module:
    """A timm VisionTransformer from a preset (`presets`, default SMALL_VITS) or any timm ViT name,
    with `kw` (num_classes, in_chans, ...) applied; weights only from a local file."""
    import timm
    from timm.models.vision_transformer import VisionTransformer
    presets = SMALL_VITS if presets is None else presets
    if img_size is not None:
        kw["img_size"] = img_size
    if name in presets:
        vit = VisionTransformer(**{**presets[name], **kw})
    else:
        vit = timm.create_model(name, pretrained=False, **kw)
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"{name!r} is a timm model but not a VisionTransformer; frozenlm's ViT wrapper needs one")
    if pretrained_path:
        load_backbone_weights(vit, pretrained_path)
    return vit


def build_vit(name: str, lm: str | dict[str, Any] | LMLayer | None = None, position: str = "tail",
              num_classes: int = 1000, img_size: int | None = None, in_chans: int = 3,
              drop_path_rate: float = 0.0, pretrained_path: str | Path | None = None,
              freeze_backbone: bool = False, freeze: str | None = None, grad_checkpointing: bool = False,
              **vit_kwargs: Any) -> ViTLM:
    """ViT (timm name or a SMALL_VITS name) + LMLayer; backbone weights only from a local file.

    freeze_backbone: train only the LMLayer (its linear maps, for a frozen block) and the head (``head``,
    ``fc_norm``); the rest of the ViT is frozen and kept in eval mode (:func:`frozenlm.splice.freeze_backbone`).
    freeze: the older spelling, None or "backbone".
    grad_checkpointing: recompute the ViT blocks in backward (the LM block has its own `lm.grad_checkpointing`).
    """
    lm, at = split_at(lm)
    if at is not None:
        raise ValueError(f"model.lm.at={at!r} is for `timm:<name>` models; the ViT presets place the LM layer "
                         "with model.position (head | middle | tail)")
    if freeze not in (None, "none", "backbone"):
        raise ValueError(f"freeze must be null or 'backbone', got {freeze!r}")
    vit = build_vit_backbone(name, img_size, pretrained_path, num_classes=num_classes, in_chans=in_chans,
                             drop_path_rate=drop_path_rate, **vit_kwargs)
    model = ViTLM(vit, LMLayer.from_spec(vit.embed_dim, lm), position)
    model.set_grad_checkpointing(grad_checkpointing)
    if freeze_backbone or freeze == "backbone":
        freeze_backbone_(model, head=("vit.head", "vit.fc_norm"))
    return model


def _is_timm_vit(name: str) -> bool:
    import timm
    return name.startswith(("vit_", "deit_")) and name in timm.list_models()


for _n in SMALL_VITS:
    register_model(_n)(lambda _name=_n, **kw: build_vit(_name, **kw))
register_fallback(_is_timm_vit, build_vit)
