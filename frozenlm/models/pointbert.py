"""Point-BERT classifier with an LMLayer after the last block, before the final LayerNorm.

Module names follow Point-BERT's ``PointTransformer`` (cls_token, cls_pos, encoder.first_conv,
reduce_dim, pos_embed, blocks.blocks.i, norm, cls_head_finetune) so its checkpoints load as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..layer import LMLayer
from ..lm.readers.base import CheckpointError
from ..ops.points import fps_knn_group
from .registry import register_model
from .weights import LoadReport, apply_weights, match_weights, read_state_dict

__all__ = ["MiniPointNet", "PointBERT", "build_pointbert", "convert_pointbert_state_dict", "load_pointbert_weights",
           "POINTBERT_SIZES"]

#: Named sizes. point_bert = the paper's backbone (12 x 384, 64 groups of 32 points).
POINTBERT_SIZES: dict[str, dict[str, Any]] = {
    "point_bert": dict(trans_dim=384, depth=12, num_heads=6, encoder_dims=256, num_group=64, group_size=32),
    "point_bert_mini": dict(trans_dim=192, depth=4, num_heads=3, encoder_dims=128, num_group=32, group_size=16,
                            encoder_widths=(32, 64, 128)),
}


class MiniPointNet(nn.Module):
    """Point-BERT's group encoder: shared MLP, max-pool, concat the pooled feature back, MLP, max-pool.

    (B, G, S, 3) centred neighbourhoods -> (B, G, out_dim) tokens. ``widths`` = (first hidden,
    first out, second hidden); Point-BERT uses (128, 256, 512).
    """

    def __init__(self, out_dim: int = 256, widths: Sequence[int] = (128, 256, 512), in_dim: int = 3) -> None:
        super().__init__()
        h1, c1, h2 = widths
        self.encoder_channel = out_dim
        self.first_conv = nn.Sequential(nn.Conv1d(in_dim, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True),
                                        nn.Conv1d(h1, c1, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(2 * c1, h2, 1), nn.BatchNorm1d(h2), nn.ReLU(inplace=True),
                                         nn.Conv1d(h2, out_dim, 1))

    def forward(self, groups: Tensor) -> Tensor:
        """(B, G, S, C) -> (B, G, out_dim)."""
        b, g, s, c = groups.shape
        x = self.first_conv(groups.reshape(b * g, s, c).transpose(1, 2))
        glob = x.max(dim=2, keepdim=True).values
        x = self.second_conv(torch.cat([glob.expand(-1, -1, s), x], dim=1))
        return x.max(dim=2).values.reshape(b, g, self.encoder_channel)


class TransformerEncoder(nn.Module):
    """Point-BERT's encoder: the positional embedding is added before EVERY block."""

    def __init__(self, dim: int, depth: int, num_heads: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=False, drop_path=dpr[i],
                                          norm_layer=nn.LayerNorm) for i in range(depth))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """Tokens (B, N, D) and position embeddings (B, N, D) -> (B, N, D)."""
        for blk in self.blocks:
            x = blk(x + pos)
        return x


class PointBERT(nn.Module):
    """Point-BERT classifier (Yu et al. 2022) with the paper's LMLayer.

    points (B, N, 3) -> FPS + kNN groups -> mini-PointNet tokens -> [CLS] + tokens, position MLP of
    the group centres added before every block -> LMLayer (all tokens, CLS included) -> LayerNorm
    -> head on concat(CLS, max-pool over group tokens).

    fps_start: "first" (Point-BERT), "centroid" (the output no longer depends on point order), or
    "random". The grouping is not differentiable with respect to which points are picked.
    """

    def __init__(self, num_classes: int = 40, trans_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 encoder_dims: int = 256, num_group: int = 64, group_size: int = 32,
                 encoder_widths: Sequence[int] = (128, 256, 512), drop_path_rate: float = 0.1,
                 head_dropout: float = 0.5, lm: str | dict[str, Any] | LMLayer | None = None,
                 fps_start: str = "first") -> None:
        super().__init__()
        self.trans_dim, self.num_group, self.group_size = trans_dim, num_group, group_size
        self.num_classes, self.fps_start = num_classes, fps_start
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.encoder = MiniPointNet(encoder_dims, encoder_widths)
        self.reduce_dim = nn.Linear(encoder_dims, trans_dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads, drop_path_rate)
        self.lm_layer = LMLayer.from_spec(trans_dim, lm, init="default")  # paper: PyTorch default init here
        self.norm = nn.LayerNorm(trans_dim)
        self.cls_head_finetune = nn.Sequential(nn.Linear(2 * trans_dim, 256), nn.ReLU(inplace=True),
                                               nn.Dropout(head_dropout), nn.Linear(256, num_classes))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        for name, child in self.named_children():
            if name != "lm_layer":  # the LMLayer's adapters keep their own init
                child.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Point-BERT's init
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names without weight decay besides 1-D tensors."""
        return {"cls_token", "cls_pos"}

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 3) -> neighbourhoods (B, G, S, 3) and centres (B, G, 3)."""
        if points.ndim != 3 or points.shape[-1] != 3:
            raise ValueError(f"PointBERT expects points of shape (B, N, 3), got {tuple(points.shape)}; "
                             "drop normals/colours first (data.use_normals is not supported by the model)")
        if points.shape[1] < self.group_size or points.shape[1] < self.num_group:
            raise ValueError(f"PointBERT needs at least max(num_group={self.num_group}, group_size="
                             f"{self.group_size}) points per cloud, got {points.shape[1]}")
        return fps_knn_group(points.float(), self.num_group, self.group_size, start=self.fps_start)

    def forward_features(self, points: Tensor) -> Tensor:
        """Tokens (B, 1 + G, D) after the blocks, the LMLayer and the final norm."""
        neighborhood, center = self.group(points)
        tokens = self.reduce_dim(self.encoder(neighborhood))
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.blocks(x, pos)
        x = self.lm_layer(x)
        return self.norm(x)

    def forward(self, points: Tensor) -> Tensor:
        """Point clouds (B, N, 3) -> logits (B, num_classes)."""
        x = self.forward_features(points)
        return self.cls_head_finetune(torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1))


def convert_pointbert_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Point-BERT checkpoint keys (wrappers and 'module.' already removed by read_state_dict) -> this model's.

    The fine-tuned layout has the model's names. In the pre-training layout ('transformer_q.*') the
    query encoder is the backbone; its MoCo/dVAE parts and transformer_q.cls_head are not used, as in
    Point-BERT's own ``load_model_from_ckpt``, and keep their names so the loader lists them as unexpected.
    """
    if any(k.startswith("transformer_q.") for k in sd):
        return {k[len("transformer_q."):] if k.startswith("transformer_q.") and
                not k.startswith("transformer_q.cls_head") else k: v for k, v in sd.items()}
    return {k.removeprefix("base_model."): v for k, v in sd.items()}


def load_pointbert_weights(model: PointBERT, path: str | Path, verbose: bool = True) -> LoadReport:
    """Load a Point-BERT ``.pth`` (weights-only unpickling) or ``.safetensors`` into ``model``.

    The LMLayer and a head of another class count are never taken from the file; missing and
    unexpected keys are reported. A shape mismatch, or a file in which no backbone key matches, is an error.
    """
    sd = convert_pointbert_state_dict(read_state_dict(path))
    clean, report = match_weights(model, sd, path, ("cls_head_finetune.",), "is it the same Point-BERT size?")
    if not any(not k.startswith("cls_head_finetune.") for k in clean):
        raise CheckpointError(f"{path}: no key matches a Point-BERT backbone (after stripping 'module.' and "
                              f"'transformer_q.'); first keys in the file: {list(sd)[:8]}")
    return apply_weights(model, clean, report, "pointbert", path, verbose)


def build_pointbert(size: str = "point_bert", num_classes: int = 40, lm: str | dict[str, Any] | LMLayer | None = None,
                    pretrained_path: str | Path | None = None, **overrides: Any) -> PointBERT:
    """A named Point-BERT size with any argument overridden; backbone weights only from a local file."""
    if size not in POINTBERT_SIZES:
        raise ValueError(f"unknown Point-BERT size {size!r}; known: {sorted(POINTBERT_SIZES)}")
    kw = {**POINTBERT_SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
    model = PointBERT(num_classes=num_classes, lm=lm, **kw)
    if pretrained_path:
        load_pointbert_weights(model, pretrained_path)
    return model


for _n in POINTBERT_SIZES:
    register_model(_n)(lambda _size=_n, **kw: build_pointbert(_size, **kw))
