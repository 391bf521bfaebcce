"""An mmTransformer-style multimodal predictor (Liu et al., CVPR 2021) with an LMLayer on its tokens.

Simplified from the original stacked transformers: polylines (agents and lanes) are encoded by
VectorNet's subgraph, a transformer encoder mixes all tokens (motion extractor, map aggregator
and social constructor in one stack; padded tokens masked), the LMLayer processes the tokens
("tail": after the encoder, before the decoder, as in the paper; "head": before it), and K
learnable proposal queries, each added to the focal agent's token, cross-attend to the tokens in
a transformer decoder. Each proposal gives a trajectory and a score; training is winner-takes-all
regression + score classification (the original's region-based training is not reproduced).
Coordinates are scaled and trajectories decoded as in :mod:`frozenlm.models.vectornet`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..layer import LMLayer
from .registry import register_model
from .vectornet import POLYLINE_FEATURES, _check_future, polyline_encoder, scale_coordinates, to_trajectory


class MMTransformer(nn.Module):
    """Subgraph tokens -> transformer encoder -> (LMLayer) -> K proposal queries -> trajectories + scores."""

    def __init__(self, lm_layer: LMLayer, hidden: int = 64, subgraph_depth: int = 3, enc_layers: int = 2,
                 dec_layers: int = 2, heads: int = 4, future: int = 30, modes: int = 6, position: str = "tail",
                 in_dim: int = POLYLINE_FEATURES, coord_scale: float = 10.0) -> None:
        super().__init__()
        self.encoder = polyline_encoder(lm_layer, position, in_dim, hidden, subgraph_depth)
        dim = self.encoder.out_dim
        # norm_first keeps padded tokens from mattering and trains stably without warmup tricks
        self.context = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True),
            enc_layers, enable_nested_tensor=False)
        self.lm_layer, self.position = lm_layer, position
        self.queries = nn.Parameter(torch.randn(modes, dim) * 0.02)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True),
            dec_layers)
        self.norm = nn.LayerNorm(dim)
        self.traj = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, future * 2))
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.future, self.modes, self.coord_scale = future, modes, coord_scale

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The proposal queries are embeddings: no weight decay."""
        return {"queries"}

    def tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """Tokens after the context encoder and the LMLayer: (B, P, D)."""
        pad = batch["poly_pad"]
        x = self.encoder(scale_coordinates(batch["vectors"], self.coord_scale), batch["vector_mask"])
        if self.position == "head":
            x = self.lm_layer(x, padding_mask=pad)
        x = self.context(x, src_key_padding_mask=pad)
        if self.position == "tail":
            x = self.lm_layer(x, padding_mask=pad)
        return x

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Collated batch -> {"traj": (B, K, T, 2), "logits": (B, K)} in the focal frame."""
        x = self.tokens(batch)
        q = self.queries.unsqueeze(0) + x[:, :1]
        h = self.norm(self.decoder(q, x, memory_key_padding_mask=batch["poly_pad"]))
        b = x.shape[0]
        traj = to_trajectory(self.traj(h), self.future, self.coord_scale)
        return {"traj": traj, "logits": self.score(h).squeeze(-1)}


@register_model("mmtransformer")
def mmtransformer(lm: str | dict[str, Any] | LMLayer | None = None, hidden: int = 64, subgraph_depth: int = 3,
                  enc_layers: int = 2, dec_layers: int = 2, heads: int = 4, future: int = 30, modes: int = 6,
                  position: str = "tail", in_dim: int = POLYLINE_FEATURES) -> MMTransformer:
    """mmTransformer-style predictor (128-wide tokens, K=6 proposals) with an optional LMLayer."""
    _check_future(future, modes)
    return MMTransformer(LMLayer.from_spec(2 * hidden, lm, init="default"), hidden, subgraph_depth, enc_layers,
                         dec_layers, heads, future, modes, position, in_dim)
