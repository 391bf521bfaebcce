"""SQA3D-style situated 3D question answering with the LMLayer after vision-language fusion.

    points (B, N, 6 xyz+rgb) -> SceneEncoder (2 PointNet++ set-abstraction levels) -> scene tokens (B, M, D)
    situation / question words -> LSTM text encoders -> word tokens + sentence vectors
    scene tokens <- cross-attention to the situation, then to the question (situation-aware fusion)
    -> LMLayer (F_L1 -> frozen LM block -> unit RMSNorm -> F_L2) on the fused scene tokens
    -> question-guided attention pooling -> answer classifier
    (+ optional situation-localisation head: position (3) and heading (cos, sin), as SQA3D's auxiliary task)

The paper uses VoteNet for the scene; a set-abstraction encoder in plain PyTorch stands in for it.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..layer import FrozenModule, LMLayer
from ..ops.points import farthest_point_sample, gather_points, group_points, knn
from .registry import register_model
from .text import build_text_encoder, load_tokenizer

__all__ = ["SetAbstraction", "SceneEncoder", "LSTMTextEncoder", "MiniLMTextEncoder", "SituatedFusion", "SQA3DNet",
           "sqa3d"]


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]  # PointNet++ without BatchNorm: batch-independent and cheap on CPU
    return nn.Sequential(*layers)


class SetAbstraction(nn.Module):
    """PointNet++ set abstraction: FPS centres, a radius neighbourhood, shared MLP, max-pool.

    Centres use FPS from the point farthest from the centroid, and neighbourhoods are the k
    nearest points with those beyond ``radius`` replaced by the nearest one (PointNet++'s ball
    query when the ball holds <= k points). Both depend on the point *set*, not its order, so
    the tokens are invariant to permuting the input points (PointNet++'s CUDA ball query, which
    keeps the first k hits in index order, is not).
    """

    def __init__(self, num_centers: int, radius: float, k: int, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.num_centers, self.radius, self.k = num_centers, float(radius), k
        self.mlp = _mlp([3 + in_channels, *widths])

    def forward(self, xyz: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
        """xyz (B, N, 3), feats (B, N, C) -> centres (B, M, 3), features (B, M, widths[-1])."""
        if xyz.shape[1] < self.num_centers:
            raise ValueError(f"SetAbstraction needs at least {self.num_centers} points, got {xyz.shape[1]} "
                             "(raise data.num_points or lower the model's centre counts)")
        centers = gather_points(xyz, farthest_point_sample(xyz, self.num_centers, start="centroid"))
        dist, idx = knn(centers, xyz, min(self.k, xyz.shape[1]))
        idx = torch.where(dist <= self.radius, idx, idx[..., :1])
        grouped = group_points(xyz, centers, idx, feats)
        grouped = torch.cat([grouped[..., :3] / self.radius, grouped[..., 3:]], -1)
        return centers, self.mlp(grouped).amax(2)


class SceneEncoder(nn.Module):
    """Two set-abstraction levels -> ``num_tokens`` object/seed tokens (B, M, dim) with xyz embeddings."""

    def __init__(self, dim: int, num_tokens: int = 32, num_seeds: int = 128, radii: Sequence[float] = (0.3, 0.8),
                 neighbours: Sequence[int] = (32, 16), widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        self.sa1 = SetAbstraction(num_seeds, radii[0], neighbours[0], 3, widths[:2])
        self.sa2 = SetAbstraction(num_tokens, radii[1], neighbours[1], widths[1], [widths[2], dim])
        self.pos = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 6) xyz+rgb -> (tokens (B, M, dim), centres (B, M, 3))."""
        if points.ndim != 3 or points.shape[-1] != 6:
            raise ValueError(f"scene points must be (B, N, 6) xyz+rgb, got shape {tuple(points.shape)}")
        if points.shape[1] == 0:
            raise ValueError("the scene point cloud has no points (shape (B, 0, 6)): check the scene file")
        xyz, rgb = points[..., :3].contiguous(), points[..., 3:]
        c1, f1 = self.sa1(xyz, rgb)
        c2, f2 = self.sa2(c1, f1)
        return f2 + self.pos(c2), c2


class LSTMTextEncoder(nn.Module):
    """Word embedding + bidirectional LSTM (SQA3D's text encoder). Index 0 is padding."""

    def __init__(self, vocab_size: int, dim: int, word_dim: int = 300) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.lstm = nn.LSTM(word_dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, ids: Tensor, texts: Optional[Sequence[str]] = None) -> tuple[Tensor, Tensor, Tensor]:
        """ids (B, L) -> (word tokens (B, L, dim), sentence (B, dim), padding mask (B, L), True = pad)."""
        lengths = (ids != 0).sum(1).clamp(min=1)
        packed = pack_padded_sequence(self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        pad = torch.arange(ids.shape[1], device=ids.device)[None] >= lengths[:, None]
        return out, torch.cat([h[0], h[1]], -1), pad


class MiniLMTextEncoder(nn.Module):
    """A frozen MiniLM (:class:`~frozenlm.layer.FrozenModule`, shareable) + a trainable projection to ``dim``.

    ``bert`` defaults to the catalog's ``minilm-l6`` (the shipped all-MiniLM-L6-v2); pass one
    FrozenModule to the situation and the question encoders so it is loaded once.
    """

    def __init__(self, dim: int, bert: FrozenModule | None = None, max_length: int = 32) -> None:
        super().__init__()
        self.bert = bert if bert is not None else FrozenModule(build_text_encoder("minilm-l6"), "minilm-l6")
        self.tokenizer = load_tokenizer(self.bert.source)
        self.proj = nn.Linear(self.bert.module.config.hidden_size, dim)
        self.max_length = max_length

    def forward(self, ids: Tensor, texts: Optional[Sequence[str]] = None) -> tuple[Tensor, Tensor, Tensor]:
        """Same outputs as :class:`LSTMTextEncoder`, from the raw ``texts``."""
        if texts is None:
            raise ValueError("the MiniLM text encoder needs the raw texts (batch keys situation_text/question_text)")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(ids.device)
        tok = self.proj(self.bert(**enc).last_hidden_state)
        mask = enc["attention_mask"].bool()
        sent = (tok * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return tok, sent, ~mask


class _CrossBlock(nn.Module):
    """x <- x + CrossAttn(norm(x), ctx); x <- x + SelfAttn(norm(x)); x <- x + FFN(norm(x))."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, ctx: Tensor, ctx_pad: Tensor) -> Tensor:
        h = self.n1(x)
        x = x + self.cross(h, ctx, ctx, key_padding_mask=ctx_pad, need_weights=False)[0]
        h = self.n2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.ffn(self.n3(x))


class SituatedFusion(nn.Module):
    """Scene tokens attend to the situation words, then to the question words (``depth`` rounds)."""

    def __init__(self, dim: int, heads: int, depth: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.situation = nn.ModuleList(_CrossBlock(dim, heads, dropout) for _ in range(depth))
        self.question = nn.ModuleList(_CrossBlock(dim, heads, dropout) for _ in range(depth))

    def forward(self, scene: Tensor, sit: Tensor, sit_pad: Tensor, q: Tensor, q_pad: Tensor) -> Tensor:
        for s_blk, q_blk in zip(self.situation, self.question):
            scene = q_blk(s_blk(scene, sit, sit_pad), q, q_pad)
        return scene


class _GuidedPool(nn.Module):
    """Attention pooling of tokens guided by a sentence vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.tok, self.guide, self.score = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, tokens: Tensor, guide: Tensor) -> Tensor:
        w = self.score(torch.tanh(self.tok(tokens) + self.guide(guide)[:, None])).softmax(1)
        return (w * tokens).sum(1)


class SQA3DNet(nn.Module):
    """Scene encoder + text encoders + situated fusion + LMLayer + answer (and localisation) heads."""

    def __init__(self, vocab_size: int, num_answers: int, dim: int = 768, word_dim: int = 300, heads: int = 8,
                 fusion_depth: int = 1, num_tokens: int = 32, num_seeds: int = 128,
                 radii: Sequence[float] = (0.3, 0.8), neighbours: Sequence[int] = (32, 16),
                 scene_widths: Sequence[int] = (32, 64, 128), text_encoder: str = "lstm", dropout: float = 0.1,
                 aux_head: bool = True, lm: Any = None, lm_init: str = "default") -> None:
        super().__init__()
        if vocab_size < 3 or num_answers < 1:
            raise ValueError(f"SQA3DNet needs vocab_size >= 3 and num_answers >= 1, got {vocab_size}, {num_answers}")
        self.num_answers = num_answers
        self.scene = SceneEncoder(dim, num_tokens, num_seeds, radii, neighbours, scene_widths)
        if text_encoder == "lstm":
            self.sit_enc, self.q_enc = LSTMTextEncoder(vocab_size, dim, word_dim), LSTMTextEncoder(vocab_size, dim, word_dim)
        elif text_encoder == "minilm":
            self.sit_enc = MiniLMTextEncoder(dim)
            self.q_enc = MiniLMTextEncoder(dim, self.sit_enc.bert)
        else:
            raise ValueError(f"model.text_encoder must be 'lstm' or 'minilm', got {text_encoder!r}")
        self.fusion = SituatedFusion(dim, heads, fusion_depth, dropout)
        self.lm_layer: LMLayer = LMLayer.from_spec(dim, lm, init=lm_init)
        self.norm = nn.LayerNorm(dim)
        self.pool = _GuidedPool(dim)
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, num_answers))
        self.aux_head = aux_head
        if aux_head:
            self.sit_pool = _GuidedPool(dim)
            self.loc = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 5))

    def forward(self, points: Tensor, situation: Tensor, question: Tensor,
                situation_text: Optional[Sequence[str]] = None,
                question_text: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
        """-> {"logits" (B, A)} plus {"position" (B, 3), "orientation" (B, 2)} with the auxiliary head."""
        scene, _ = self.scene(points)
        sit, sit_vec, sit_pad = self.sit_enc(situation, situation_text)
        q, q_vec, q_pad = self.q_enc(question, question_text)
        fused = self.fusion(scene, sit, sit_pad, q, q_pad)
        fused = self.norm(self.lm_layer(fused))  # the paper's insert point: after vision-language fusion
        out = {"logits": self.head(torch.cat([self.pool(fused, q_vec), q_vec], -1))}
        if self.aux_head:
            loc = self.loc(torch.cat([self.sit_pool(fused, sit_vec), sit_vec], -1))
            out["position"], out["orientation"] = loc[:, :3], nn.functional.normalize(loc[:, 3:], dim=-1)
        return out


@register_model("sqa3d")
def sqa3d(**kwargs: Any) -> SQA3DNet:
    """SQA3D-style network; ``vocab_size`` and ``num_answers`` come from the training split."""
    return SQA3DNet(**kwargs)
