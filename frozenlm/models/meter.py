"""METER-style vision-language model (Dou et al. 2022) with an LMLayer on the fused visual tokens.

image encoder (timm ViT) -> Linear -> +type emb ─┐
                                                 ├─ N co-attention layers (both streams) ─> LMLayer on the
text encoder (HF BERT/RoBERTa) -> Linear -> +type┘   visual stream -> pooled [image CLS, text CLS] -> heads
Heads: VQA classifier (METER's: Linear-LayerNorm-GELU-Linear), image-text matching (ITM, 2-way), and
unimodal contrastive embeddings (ITC) that cheaply pre-select retrieval candidates for ITM re-ranking.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layer import FrozenModule, LMLayer
from .vit import build_vit_backbone
from .registry import register_model
from .text import build_text_encoder

# Small image encoders for the offline defaults (64 px easy-VQA images: 16 patches + CLS).
SMALL_IMAGE_ENCODERS: dict[str, dict[str, Any]] = {
    "vit_mini_patch16_64": dict(img_size=64, patch_size=16, embed_dim=192, depth=4, num_heads=3),
    "vit_tiny_patch16_64": dict(img_size=64, patch_size=16, embed_dim=192, depth=12, num_heads=3),
}


def build_image_encoder(name: str, img_size: int | None = None, pretrained_path: str | Path | None = None) -> nn.Module:
    """A timm VisionTransformer without classifier (SMALL_IMAGE_ENCODERS or any timm ViT name, e.g.
    vit_base_patch32_clip_224); weights only from a local file."""
    return build_vit_backbone(name, img_size or None, pretrained_path, presets=SMALL_IMAGE_ENCODERS, num_classes=0)


class CoAttentionLayer(nn.Module):
    """One stream of a METER fusion layer (BERT-style post-norm): self-attention, cross-attention
    to the other modality, FFN. Padded keys (True in a mask) are never attended to."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor, x_pad: Tensor | None, y_pad: Tensor | None) -> Tensor:
        """x (B, Nx, D) attends to itself and to y (B, Ny, D); *_pad (B, N) bool, True = padding."""
        x = self.norm1(x + self.drop(self.self_attn(x, x, x, key_padding_mask=x_pad, need_weights=False)[0]))
        x = self.norm2(x + self.drop(self.cross_attn(x, y, y, key_padding_mask=y_pad, need_weights=False)[0]))
        return self.norm3(x + self.drop(self.ffn(x)))


class FusionLayer(nn.Module):
    """Both streams updated from the previous layer's outputs (METER's co-attention)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.text = CoAttentionLayer(dim, heads, mlp_ratio, dropout)
        self.image = CoAttentionLayer(dim, heads, mlp_ratio, dropout)

    def forward(self, v: Tensor, t: Tensor, t_pad: Tensor) -> tuple[Tensor, Tensor]:
        """v (B, Nv, D) image tokens (never padded), t (B, Nt, D) text tokens, t_pad (B, Nt)."""
        return self.image(v, t, None, t_pad), self.text(t, v, t_pad, None)


class Pooler(nn.Module):
    """BERT pooler: first token -> Linear -> tanh."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, D)."""
        return torch.tanh(self.dense(x[:, 0]))


class METER(nn.Module):
    """METER-style two-stream fusion model with an LMLayer on the fused visual tokens.

    forward returns a dict: vqa_logits (B, num_answers) when num_answers > 0, itm_logits (B, 2),
    and the fused tokens. encode_image / encode_text / fuse are exposed so that retrieval can run the
    unimodal encoders once per item and the fusion only on candidate pairs.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, lm_layer: LMLayer, hidden: int = 768,
                 fusion_layers: int = 6, heads: int = 12, num_answers: int = 0, embed_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"model.hidden {hidden} must be divisible by model.heads {heads}")
        if lm_layer.in_dim != hidden and lm_layer.variant != "none":
            raise ValueError(f"LMLayer in_dim {lm_layer.in_dim} != fusion hidden size {hidden}")
        self.image_encoder, self.text_encoder, self.lm_layer = image_encoder, text_encoder, lm_layer
        self.image_proj = nn.Linear(image_encoder.embed_dim, hidden)
        hf = text_encoder.module if isinstance(text_encoder, FrozenModule) else text_encoder
        self.text_proj = nn.Linear(hf.config.hidden_size, hidden)
        self.type_embed = nn.Embedding(2, hidden)  # 0 = text, 1 = image
        self.fusion = nn.ModuleList(FusionLayer(hidden, heads, 4.0, dropout) for _ in range(fusion_layers))
        self.pool_image, self.pool_text = Pooler(hidden), Pooler(hidden)
        self.num_answers = num_answers
        if num_answers:
            self.vqa_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(),
                                          nn.Linear(2 * hidden, num_answers))
        self.itm_head = nn.Linear(2 * hidden, 2)
        self.itc_image = nn.Linear(hidden, embed_dim)
        self.itc_text = nn.Linear(hidden, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        for m in [self.image_proj, self.text_proj, self.type_embed, *self.fusion.modules(), self.pool_image,
                  self.pool_text, self.itm_head, self.itc_image, self.itc_text,
                  *(self.vqa_head.modules() if num_answers else [])]:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)  # BERT init for everything trained from scratch
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """timm's no-decay names of the image encoder, plus the ITC temperature."""
        return {f"image_encoder.{n}" for n in self.image_encoder.no_weight_decay()} | {"logit_scale"}

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> projected image tokens (B, 1 + patches, hidden), CLS first."""
        v = self.image_proj(self.image_encoder.forward_features(images))
        return v + self.type_embed.weight[1]

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Token ids (B, L) and mask (B, L, 1 = real token) -> projected text tokens (B, L, hidden)."""
        if (attention_mask.sum(1) == 0).any():
            raise ValueError("a text has no tokens (attention_mask all zero): empty question or caption")
        h = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.text_proj(h) + self.type_embed.weight[0]

    def fuse(self, v: Tensor, t: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Co-attention layers, then the LMLayer on the visual stream; returns (pooled [img, txt], v, t)."""
        t_pad = attention_mask == 0
        for layer in self.fusion:
            v, t = layer(v, t, t_pad)
        v = self.lm_layer(v)  # the frozen LM block sees the fused visual tokens (method.md: 2D VQA)
        return torch.cat([self.pool_image(v), self.pool_text(t)], dim=-1), v, t

    def embed(self, v: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Unit ITC embeddings of the unimodal CLS tokens: the cheap similarity for candidate pre-selection."""
        return F.normalize(self.itc_image(v[:, 0]), dim=-1), F.normalize(self.itc_text(t[:, 0]), dim=-1)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        """Images (B, 3, H, W) and tokenised texts (B, L) -> {vqa_logits, itm_logits, image_tokens, text_tokens}."""
        v, t = self.encode_image(images), self.encode_text(input_ids, attention_mask)
        pooled, v, t = self.fuse(v, t, attention_mask)
        out = {"itm_logits": self.itm_head(pooled).float(), "image_tokens": v, "text_tokens": t}
        if self.num_answers:
            out["vqa_logits"] = self.vqa_head(pooled).float()
        return out


@register_model("meter")
def build_meter(image: dict[str, Any] | None = None, text: dict[str, Any] | None = None,
                lm: str | dict[str, Any] | LMLayer | None = None, hidden: int = 768, fusion_layers: int = 6,
                heads: int = 12, num_answers: int = 0, embed_dim: int = 256, dropout: float = 0.1,
                freeze_text: bool = False) -> METER:
    """METER from config sections: image {name, img_size, pretrained_path}, text {source, num_layers,
    freeze_embeddings}, lm (LMLayer arguments or None)."""
    image = dict(image or {"name": "vit_base_patch32_clip_224"})
    text = dict(text or {"source": "minilm-l6"})
    img = build_image_encoder(image.get("name", "vit_base_patch32_clip_224"), image.get("img_size"),
                              image.get("pretrained_path"))
    source = text.get("source", "minilm-l6")
    txt = build_text_encoder(source, text.get("num_layers"))
    if freeze_text:  # kept out of checkpoints and verified by digest, as a frozen LM block
        txt = FrozenModule(txt, source)
    elif text.get("freeze_embeddings"):
        # The 30k-row word embedding dominates the optimizer step on CPU and barely moves in fine-tuning.
        txt.embeddings.requires_grad_(False)
    return METER(img, txt, LMLayer.from_spec(hidden, lm), hidden, fusion_layers, heads, num_answers, embed_dim, dropout)
