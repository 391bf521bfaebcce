"""VQA (METER + LMLayer): VQAv2 or offline easy-VQA; metric `overall` = official VQA accuracy (%)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data.vqa import ANSWER_TYPES, build_vqa_dataset
from .metrics import sample_count
from .vl_common import VL_MODEL_KEYS, VLTask, build_vl_model


def vqa_loss(logits: Tensor, target: Tensor) -> Tensor:
    """METER's VQA loss: binary cross-entropy against the soft scores, times the number of answers."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float()) * target.shape[1]


class VQATask(VLTask):
    """Answer classification over a fixed vocabulary with soft targets."""

    primary_metric, primary_mode = "overall", "max"
    config_keys = (
        *VL_MODEL_KEYS, "model.num_answers",
        *section("data", "name", "root", "img_size", "subset_train", "subset_val", "subset_seed", "max_text_len",
                 "vocab_file", "num_answers", "min_answer_count", "on_error"),
        "vqa.image_control",
    )

    def build_model(self, cfg: Any) -> nn.Module:
        n = cfg.model.get("num_answers")
        if not n:
            raise ValueError("model.num_answers must be set for the vqa task (13 for easy-VQA, 3129 for VQAv2)")
        return build_vl_model(cfg, int(n))

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_vqa_dataset(cfg.data, split)
        if len(ds.vocab) != int(cfg.model.num_answers):
            raise ValueError(f"{cfg.data.name} ({split}) has {len(ds.vocab)} answers but model.num_answers is "
                             f"{cfg.model.num_answers}; set model.num_answers={len(ds.vocab)}")
        return ds

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return vqa_loss(out["vqa_logits"], batch["target"])

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])["vqa_logits"]
        loss = F.binary_cross_entropy_with_logits(logits, batch["target"].float(), reduction="none").sum(1)
        acc = batch["score"].gather(1, logits.argmax(1, keepdim=True)).squeeze(1).double()
        out = {"score_sum": acc.sum(), "count": torch.tensor(float(len(acc)), dtype=torch.float64),
               "loss_sum": loss.double().sum()}
        types = batch.get("answer_type")
        name = str(cfg.data.get("name")) if cfg is not None else ""
        for k, t in enumerate(ANSWER_TYPES.get(name, ())):
            sel = types == k if types is not None else torch.zeros_like(acc, dtype=torch.bool)
            out[f"score_sum/{t}"], out[f"count/{t}"] = acc[sel].sum(), sel.double().sum()
        if cfg is not None and (cfg.get("vqa") or {}).get("image_control"):
            # Each question paired with the next question's image: a model that reads the image loses
            # accuracy here, one answering from the question alone does not (docs/vl.md).
            wrong = model(batch["images"].roll(1, 0), batch["input_ids"], batch["attention_mask"])["vqa_logits"]
            other = batch["score"].gather(1, wrong.argmax(1, keepdim=True)).squeeze(1).double()
            out["score_sum_other_image"] = other.sum()  # (a batch of one keeps its own image)
        return out

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        n = sample_count(sums)
        out = {"overall": 100.0 * float(sums["score_sum"]) / n, "loss": float(sums["loss_sum"]) / n}
        for k in sums:
            if k.startswith("count/") and float(sums[k]) > 0:
                t = k.split("/", 1)[1]
                out[t] = 100.0 * float(sums[f"score_sum/{t}"]) / float(sums[k])
        if "score_sum_other_image" in sums:
            out["overall_other_image"] = 100.0 * float(sums["score_sum_other_image"]) / n
        return out
