"""VectorNet (Gao et al., CVPR 2020) with an LMLayer on the polyline tokens, plus a K-mode head.

Polyline subgraph: 3 layers of (per-vector MLP -> max-pool over the polyline -> concat), then a
max-pool gives one token per polyline (agents and lanes alike). Global interaction graph: one
self-attention layer over the polyline tokens, with a key padding mask. The LMLayer (paper:
the frozen LM block with its two linear maps) processes all polyline tokens with the same
padding mask, at `position` "tail" (after the global graph, right before the decoder, as in the
paper) or "head" (before the global graph). The head reads the focal agent's token (index 0)
and predicts K trajectories with scores. Coordinates enter in units of `coord_scale` metres and
trajectories are predicted as cumulative per-step displacements (both make short schedules train).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..layer import LMLayer
from .registry import register_model

POSITIONS = ("head", "tail")
#: Default width of the polyline vectors: that of frozenlm.data.motion (FEATURES), whose features 0-3
#: are the coordinates. A number here because models do not import data; pass `in_dim` for another layout.
POLYLINE_FEATURES = 9


class SubgraphLayer(nn.Module):
    """Per-vector MLP, max-pool over the polyline's real vectors, concat [node, pooled]."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU())

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (..., V, C), mask (..., V) True = real vector -> (..., V, 2*hidden)."""
        h = self.mlp(x)
        pooled = masked_max(h, mask)
        return torch.cat([h, pooled.unsqueeze(-2).expand_as(h)], -1)


def masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over dim -2 of the real vectors only; polylines without any real vector give 0."""
    h = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(-2)
    return torch.where(torch.isfinite(h), h, torch.zeros_like(h))


class PolylineEncoder(nn.Module):
    """VectorNet's polyline subgraph: (B, P, V, F) vectors -> (B, P, 2*hidden) polyline tokens."""

    def __init__(self, in_dim: int = POLYLINE_FEATURES, hidden: int = 64, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SubgraphLayer(in_dim if i == 0 else 2 * hidden, hidden) for i in range(depth))
        self.out_dim = 2 * hidden

    def forward(self, vectors: Tensor, mask: Tensor) -> Tensor:
        """vectors (B, P, V, F), mask (B, P, V) True = real vector."""
        x = vectors
        for layer in self.layers:
            x = layer(x, mask)
        return masked_max(x, mask)


class GlobalGraph(nn.Module):
    """One self-attention layer over polyline tokens (VectorNet's global interaction graph).

    With a residual connection (as common re-implementations add): without it the focal token is
    replaced by an attention average and its own motion is diluted, which trains far slower.
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        """x (B, P, D), pad (B, P) True = padded polyline; padded keys are never attended to."""
        return x + self.attn(x, x, x, key_padding_mask=pad, need_weights=False)[0]


def polyline_encoder(lm_layer: LMLayer, position: str, in_dim: int, hidden: int, depth: int) -> PolylineEncoder:
    """The subgraph encoder, after checking the LMLayer's width and position fit it."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    enc = PolylineEncoder(in_dim, hidden, depth)
    if lm_layer.in_dim != enc.out_dim and lm_layer.variant != "none":
        raise ValueError(f"LMLayer in_dim {lm_layer.in_dim} does not match the token width {enc.out_dim}")
    return enc


def scale_coordinates(vectors: Tensor, scale: float) -> Tensor:
    """Divide the 4 coordinate features by `scale` metres so they are O(1) like the flags."""
    return torch.cat([vectors[..., :4] / scale, vectors[..., 4:]], -1)


def to_trajectory(raw: Tensor, future: int, scale: float) -> Tensor:
    """(..., future*2) per-step displacements in units of `scale` m -> positions (..., future, 2) in m."""
    return raw.unflatten(-1, (future, 2)).cumsum(-2) * scale


class MultiModalHead(nn.Module):
    """MLP from one token to K trajectories (K, T, 2) and K score logits."""

    def __init__(self, dim: int, future: int, modes: int, hidden: int = 128, scale: float = 10.0) -> None:
        super().__init__()
        self.future, self.modes, self.scale = future, modes, scale
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.traj = nn.Linear(hidden, modes * future * 2)
        self.score = nn.Linear(hidden, modes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x (B, D) -> {"traj": (B, K, T, 2), "logits": (B, K)}."""
        h = self.mlp(x)
        traj = to_trajectory(self.traj(h).view(-1, self.modes, self.future * 2), self.future, self.scale)
        return {"traj": traj, "logits": self.score(h)}


class VectorNet(nn.Module):
    """VectorNet: polyline subgraphs -> global graph -> (LMLayer) -> K-mode trajectory head."""

    def __init__(self, lm_layer: LMLayer, hidden: int = 64, subgraph_depth: int = 3, future: int = 30,
                 modes: int = 6, position: str = "tail", in_dim: int = POLYLINE_FEATURES,
                 coord_scale: float = 10.0) -> None:
        super().__init__()
        self.encoder = polyline_encoder(lm_layer, position, in_dim, hidden, subgraph_depth)
        dim = self.encoder.out_dim
        self.global_graph = GlobalGraph(dim)
        self.lm_layer, self.position = lm_layer, position
        self.coord_scale = coord_scale
        self.head = MultiModalHead(dim, future, modes, scale=coord_scale)

    def tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """Polyline tokens after the global graph and the LMLayer: (B, P, D)."""
        pad = batch["poly_pad"]
        x = self.encoder(scale_coordinates(batch["vectors"], self.coord_scale), batch["vector_mask"])
        if self.position == "head":
            x = self.lm_layer(x, padding_mask=pad)
        x = self.global_graph(x, pad)
        if self.position == "tail":
            x = self.lm_layer(x, padding_mask=pad)
        return x

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Collated batch (frozenlm.data.motion.collate_motion) -> {"traj", "logits"} in the focal frame."""
        return self.head(self.tokens(batch)[:, 0])


def _check_future(future: int, modes: int) -> None:
    if future < 1 or modes < 1:
        raise ValueError(f"future and modes must be >= 1, got future={future}, modes={modes}")


@register_model("vectornet")
def vectornet(lm: str | dict[str, Any] | LMLayer | None = None, hidden: int = 64, subgraph_depth: int = 3,
              future: int = 30, modes: int = 6, position: str = "tail", in_dim: int = POLYLINE_FEATURES) -> VectorNet:
    """VectorNet (hidden 64 -> 128-wide polyline tokens) with an optional LMLayer (`lm`, see LMLayer.from_spec)."""
    _check_future(future, modes)
    return VectorNet(LMLayer.from_spec(2 * hidden, lm, init="default"), hidden, subgraph_depth, future, modes, position,
                     in_dim)
