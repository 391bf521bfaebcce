"""VQA (METER + LMLayer): VQAv2 or offline easy-VQA; metric `overall` = official VQA accuracy (%).

On a split without public answers (VQAv2 test-dev / test) the evaluation is a prediction pass through
the same ``eval_batch`` + ``finalize``: ``eval_batch`` returns each question's arg-max answer as a sum
vector over the split (one slot per question, so batches and ranks add up exactly), and ``finalize``
writes the evaluation server's results file."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import section
from ..data.vqa import ANSWER_TYPES, VQADataset, build_vqa_dataset, write_submission
from .metrics import sample_count
from .vl_common import VL_MODEL_KEYS, VLTask, build_vl_model


def vqa_loss(logits: Tensor, target: Tensor) -> Tensor:
    """METER's VQA loss: binary cross-entropy against the soft scores, times the number of answers."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float()) * target.shape[1]


def submission_path(cfg: Any, split: str) -> Path:
    """``vqa.submission_file``, else ``<run_dir>/vqa_<split>_submission.json`` (the run folder of the
    checkpoint's saved config, which must exist here)."""
    explicit = (cfg.get("vqa") or {}).get("submission_file")
    if explicit:
        return Path(explicit).expanduser()
    run_dir = cfg.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no run folder to write the {split} submission into (run_dir={run_dir!r} from the "
                                f"config does not exist here); set vqa.submission_file=PATH")
    return Path(run_dir) / f"vqa_{split}_submission.json"


def _is_main() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class VQATask(VLTask):
    """Answer classification over a fixed vocabulary with soft targets."""

    primary_metric, primary_mode = "overall", "max"
    config_keys = (
        *VL_MODEL_KEYS, "model.num_answers",
        *section("data", "name", "root", "img_size", "subset_train", "subset_val", "subset_seed", "max_text_len",
                 "answer_vocab", "vocab_file", "num_answers", "min_answer_count", "train_splits", "on_error"),
        "vqa.image_control", "vqa.submission_file",
    )

    def __init__(self) -> None:
        self._built_train = False  # a training run: an unannotated split cannot be its validation split
        self._predict: Optional[tuple[str, VQADataset]] = None  # the unannotated split being predicted
        self._vocab_logged = False

    def build_model(self, cfg: Any) -> nn.Module:
        n = cfg.model.get("num_answers")
        if not n:
            raise ValueError("model.num_answers must be set for the vqa task (13 for easy-VQA, 3129 for VQAv2)")
        return build_vl_model(cfg, int(n))

    def build_dataset(self, cfg: Any, split: str) -> Any:
        ds = build_vqa_dataset(cfg.data, split)
        if len(ds.vocab) != int(cfg.model.num_answers):
            raise ValueError(f"{cfg.data.name} ({split}) has {len(ds.vocab)} answers ({ds.vocab_rule}) but "
                             f"model.num_answers is {cfg.model.num_answers}; set model.num_answers={len(ds.vocab)}")
        if not self._vocab_logged and _is_main():
            print(f"[vqa] {cfg.data.name}: {len(ds.vocab):,}-answer vocabulary ({ds.vocab_rule})", flush=True)
            self._vocab_logged = True
        if split == "train":
            self._built_train = True
            if "val" in (cfg.data.get("train_splits") or ()) and cfg.get("eval_split") == "val" and _is_main():
                print("[vqa] data.train_splits includes val (as METER trains): the val score is on training "
                      "questions, not a held-out number; score the model on test-dev", flush=True)
        elif not ds.labelled:
            if self._built_train:
                raise ValueError(f"{cfg.data.name} {split} has no public answers, so it cannot be the validation split "
                                 f"of a training run; train with eval_split=val, then write the submission with "
                                 f"`frozenlm eval RUN eval_split={split}`")
            if (cfg.get("ema") or {}).get("eval"):
                raise ValueError(f"ema.eval=true with the unannotated {split} split would write two submissions to one "
                                 f"file; write one per model: ema.eval=false (the raw weights)")
            self._predict = (split, ds)
        return ds

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> Tensor:
        out = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return vqa_loss(out["vqa_logits"], batch["target"])

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, Tensor]:
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])["vqa_logits"]
        if "score" not in batch:  # no answers: record each question's prediction for the submission
            return self._prediction_sums(logits, batch["index"])
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

    def _prediction_sums(self, logits: Tensor, index: Tensor) -> dict[str, Tensor]:
        if self._predict is None:
            raise RuntimeError("a batch without answers, but no unannotated split was built by this task object")
        n = len(self._predict[1])
        idx = index.long().to(logits.device)
        pred = torch.zeros(n, dtype=torch.long, device=logits.device)
        seen = torch.zeros(n, dtype=torch.long, device=logits.device)
        pred[idx] = logits.argmax(1) + 1  # 0 = no prediction in this batch
        seen[idx] = 1
        return {"predicted_answer": pred, "predicted_count": seen}

    def _write_submission(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        assert self._predict is not None
        split, ds = self._predict
        seen, pred = sums["predicted_count"].long(), sums["predicted_answer"].long()
        missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
        if twice:
            raise RuntimeError(f"{twice} {split} questions were predicted more than once (an evaluation sampler that "
                               f"repeats samples); the submission needs each question exactly once")
        if missing:
            first = [ds.records[i]["question_id"] for i in torch.nonzero(seen == 0).flatten()[:5].tolist()]
            raise ValueError(f"{missing:,} of {len(ds):,} {split} questions got no answer (first question ids: {first}; "
                             f"images skipped under data.on_error=skip?); the evaluation server needs every question: "
                             f"fix or restore those images and run again")
        path = submission_path(cfg, split)
        if _is_main():
            n = write_submission(path, [r["question_id"] for r in ds.records], (pred - 1).tolist(), ds.vocab)
            print(f"[vqa] wrote {n:,} {split} answers to {path}", flush=True)
        return {"questions": len(ds)}  # a count: printed as questions=N

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        if "predicted_count" in sums:
            return self._write_submission(sums, cfg)
        n = sample_count(sums)
        out = {"overall": 100.0 * float(sums["score_sum"]) / n, "loss": float(sums["loss_sum"]) / n}
        for k in sums:
            if k.startswith("count/") and float(sums[k]) > 0:
                t = k.split("/", 1)[1]
                out[t] = 100.0 * float(sums[f"score_sum/{t}"]) / float(sums[k])
        if "score_sum_other_image" in sums:
            out["overall_other_image"] = 100.0 * float(sums["score_sum_other_image"]) / n
        return out
