"""Situated 3D question answering (SQA3D): the SQA3D release or the offline generated rooms.

Metrics as SQA3D names them: ``EM@1`` (top answer is the ground truth, %), ``EM@10`` (ground truth
among the top 10, %) and ``EM@1/<type>`` for What / Is / How / Can / Which / Others. Questions whose
answer is not in the training answer vocabulary stay in the denominator (they can never be right)
and are reported as ``unknown_answers``.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data.synthetic.sqa3d import QUESTION_TYPES
from ..data.sqa3d import SituatedQADataset, load_samples, vocabularies
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs
from .metrics import group_accuracy, group_sums, sample_count

__all__ = ["SituatedQA", "sqa3d_finalize"]

def sqa3d_finalize(sums: dict[str, Tensor]) -> dict[str, float]:
    """EM@1, EM@10, EM@1 per question type (types that occur), mean loss and unknown-answer count."""
    count = sample_count(sums)
    out = {"EM@1": 100.0 * float(sums["em1"]) / count, "EM@10": 100.0 * float(sums["em10"]) / count}
    out.update({f"EM@1/{QUESTION_TYPES[i]}": a for i, a in group_accuracy(sums, prefix="type").items()})
    if "loss_sum" in sums and float(sums["known"]) > 0:
        out["loss"] = float(sums["loss_sum"]) / float(sums["known"])
    out["unknown_answers"] = float(sums["unknown"])
    return out


class SituatedQA(Task):
    """SQA3DNet(+LMLayer): answer cross-entropy plus the optional situation-localisation loss."""

    primary_metric, primary_mode = "EM@1", "max"
    config_keys = (
        *section("model", "name", "dim", "word_dim", "heads", "fusion_depth", "num_tokens", "num_seeds", "radii",
                 "neighbours", "scene_widths", "text_encoder", "dropout", "aux_head", "lm_init"),
        *lm_config_keys("model.lm"),
        *section("data", "name", "num_points", "max_situation_len", "max_question_len", "max_answers",
                 "scene_points", "train_scenes", "val_scenes", "test_scenes", "cache_dir", "rooms_seed",
                 "min_objects", "max_objects", "root", "scene_dir", "situation_frame", "meta_dir", "on_missing",
                 "on_error"),
        "loss.aux_weight",
    )

    def __init__(self) -> None:
        self._splits: dict[tuple[str, str], tuple[list[dict[str, Any]], Any, dict[str, int]]] = {}

    def _split(self, cfg: Any, split: str) -> tuple[list[dict[str, Any]], Any, dict[str, int]]:
        # Read once per task object: the model (vocabulary sizes) and every dataset need the training split.
        key = (json.dumps(dict(cfg.data), sort_keys=True, default=str), split)
        if key not in self._splits:
            self._splits[key] = load_samples(cfg.data, split)
        return self._splits[key]

    def _vocabularies(self, cfg: Any) -> tuple[list[str], list[str]]:
        return vocabularies(self._split(cfg, "train")[0], cfg.data.get("max_answers"))

    def build_model(self, cfg: Any) -> nn.Module:
        words, answers = self._vocabularies(cfg)
        return create_model(cfg.model.name, vocab_size=len(words), num_answers=len(answers), **model_kwargs(cfg))

    def build_dataset(self, cfg: Any, split: str) -> Optional[SituatedQADataset]:
        samples, scene, skipped = self._split(cfg, split)
        if not samples:
            return None
        words, answers = self._vocabularies(cfg)
        ds = SituatedQADataset(samples, scene, words, answers, int(cfg.data.num_points),
                               int(cfg.data.get("max_situation_len", 24)), int(cfg.data.get("max_question_len", 16)),
                               train=split == "train")
        ds.skipped = dict(skipped)
        if ds.unknown_answers and split != "train":
            print(f"[sqa3d] {split}: {ds.unknown_answers} of {len(ds)} questions have answers outside the "
                  f"{len(answers)}-answer training vocabulary; they count as wrong", flush=True)
        return ds

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
        return model(batch["points"], batch["situation"], batch["question"],
                     batch.get("situation_text"), batch.get("question_text"))

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        out = self._forward(model, batch)
        y = batch["answer"]
        logits = out["logits"].float()
        known = y >= 0  # answers cut by data.max_answers cannot be learned
        loss = F.cross_entropy(logits[known], y[known]) if known.any() else logits.sum() * 0
        w = float(cfg.get("loss", {}).get("aux_weight", 0.0) or 0.0)
        if w and "position" in out:
            loss = loss + w * (F.mse_loss(out["position"].float(), batch["position"])
                               + F.mse_loss(out["orientation"].float(), batch["orientation"]))
        return loss

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        logits = self._forward(model, batch)["logits"].float()
        y, qt = batch["answer"], batch["qtype"]
        known = y >= 0
        top = logits.topk(min(10, logits.shape[-1]), -1).indices
        em1 = (top[:, 0] == y) & known
        em10 = (top == y[:, None]).any(-1) & known
        f64 = dict(dtype=torch.float64, device=y.device)
        loss = F.cross_entropy(logits[known], y[known], reduction="sum") if known.any() else torch.zeros((), **f64)
        return {"count": torch.tensor(float(len(y)), **f64), "em1": em1.double().sum(), "em10": em10.double().sum(),
                **group_sums(em1, qt, len(QUESTION_TYPES), prefix="type"),
                "unknown": (~known).double().sum(), "known": known.double().sum(), "loss_sum": loss.double()}

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        return sqa3d_finalize(sums)
