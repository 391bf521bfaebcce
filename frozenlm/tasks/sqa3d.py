"""Situated 3D question answering (SQA3D): the SQA3D release or the offline generated rooms.

Metrics as SQA3D names them: ``EM@1`` (top answer is the ground truth, %), ``EM@10`` (ground truth
among the top 10, %) and ``EM@1/<type>`` for What / Is / How / Can / Which / Others. Questions whose
answer is not in the training answer vocabulary stay in the denominator (they can never be right)
and are reported as ``unknown_answers``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.errors import on_error_policy
from ..data.synthetic.sqa3d import QUESTION_TYPES, load_or_generate_rooms
from ..data.sqa3d import (SituatedQADataset, build_answer_vocab, build_word_vocab, drop_bad_scenes,
                          load_scene_points, read_sqa3d_split, rooms_to_samples)
from ..engine.task import Task, register_task
from ..models import create_model
from ..config import section
from ..layer import lm_config_keys

__all__ = ["SituatedQA", "sqa3d_finalize", "load_samples", "vocabularies"]

_SPLITS = {"rooms3d": {"train": "train_scenes", "val": "val_scenes", "test": "test_scenes"}}


def _key(data_cfg: Any) -> str:
    return json.dumps(dict(data_cfg), sort_keys=True, default=str)


@functools.lru_cache(maxsize=8)
def _load(key: str, split: str) -> tuple[list[dict[str, Any]], Any, dict[str, int]]:
    d = json.loads(key)
    name = d.get("name")
    if name == "rooms3d":
        n = d.get(_SPLITS["rooms3d"].get(split, ""))
        if not n:
            return [], None, {}
        pts, scenes = load_or_generate_rooms(d.get("cache_dir"), int(n), split, int(d.get("rooms_seed", 0)),
                                             int(d.get("scene_points", 1024)), int(d.get("min_objects", 3)),
                                             int(d.get("max_objects", 8)))
        return rooms_to_samples(scenes), pts, {}
    if name == "sqa3d":
        if not d.get("root") or not d.get("scene_dir"):
            raise ValueError("data.name=sqa3d needs data.root (SQA3D json folder) and data.scene_dir "
                             "(one <scene_id>.npy/.npz/.pth xyz+rgb file per ScanNet scene)")
        samples = read_sqa3d_split(d["root"], split)
        samples, files, skipped = drop_bad_scenes(samples, Path(d["scene_dir"]).expanduser(),
                                                  d.get("on_missing", "error"), on_error_policy(d))
        cache: dict[Any, np.ndarray] = {}
        max_pts = int(d.get("scene_points", 40000))

        def scene(sid: Any) -> np.ndarray:
            if sid not in cache:  # keep a fixed subset per scene in memory; questions share scenes
                arr = load_scene_points(files[sid])
                if len(arr) > max_pts:
                    arr = arr[np.random.default_rng(0).choice(len(arr), max_pts, replace=False)]
                cache[sid] = arr
            return cache[sid]
        return samples, scene, skipped
    raise ValueError(f"unknown data.name {name!r} for task sqa3d; use rooms3d (offline) or sqa3d")


def load_samples(data_cfg: Any, split: str) -> tuple[list[dict[str, Any]], Any, dict[str, int]]:
    """(samples, scene source, skipped counts) of a split; cached per process."""
    return _load(_key(data_cfg), split)


def vocabularies(data_cfg: Any) -> tuple[list[str], list[str]]:
    """(words, answers) from the training split (situations + questions; answers)."""
    samples, _, _ = load_samples(data_cfg, "train")
    if not samples:
        raise ValueError("the training split is empty: the word and answer vocabularies come from it")
    words = build_word_vocab([s["situation"] for s in samples] + [s["question"] for s in samples])
    return words, build_answer_vocab([s["answer"] for s in samples], data_cfg.get("max_answers"))


def sqa3d_finalize(sums: dict[str, Tensor]) -> dict[str, float]:
    """EM@1, EM@10, EM@1 per question type (types that occur), mean loss and unknown-answer count."""
    count = float(sums["count"])
    if count == 0:
        raise ValueError("no evaluation samples were seen (empty dataset?)")
    out = {"EM@1": 100.0 * float(sums["em1"]) / count, "EM@10": 100.0 * float(sums["em10"]) / count}
    for i, t in enumerate(QUESTION_TYPES):
        n = float(sums["type_count"][i])
        if n > 0:
            out[f"EM@1/{t}"] = 100.0 * float(sums["type_em1"][i]) / n
    if "loss_sum" in sums and float(sums["known"]) > 0:
        out["loss"] = float(sums["loss_sum"]) / float(sums["known"])
    out["unknown_answers"] = float(sums["unknown"])
    return out


@register_task("sqa3d")
class SituatedQA(Task):
    """SQA3DNet(+LMLayer): answer cross-entropy plus the optional situation-localisation loss."""

    primary_metric, primary_mode = "EM@1", "max"
    config_keys = (
        *section("model", "name", "dim", "word_dim", "heads", "fusion_depth", "num_tokens", "num_seeds", "radii",
                 "neighbours", "scene_widths", "text_encoder", "dropout", "aux_head", "lm_init"),
        *lm_config_keys("model.lm"),
        *section("data", "name", "num_points", "max_situation_len", "max_question_len", "max_answers",
                 "scene_points", "train_scenes", "val_scenes", "test_scenes", "cache_dir", "rooms_seed",
                 "min_objects", "max_objects", "root", "scene_dir", "on_missing", "on_error"),
        "loss.aux_weight",
    )

    def build_model(self, cfg: Any) -> nn.Module:
        words, answers = vocabularies(cfg.data)
        kw = dict(cfg.model)
        name = kw.pop("name")
        return create_model(name, vocab_size=len(words), num_answers=len(answers), **kw)

    def build_dataset(self, cfg: Any, split: str) -> Optional[SituatedQADataset]:
        samples, scene, skipped = load_samples(cfg.data, split)
        if not samples:
            return None
        if cfg.data.name == "rooms3d":
            pts = scene
            scene = pts.__getitem__
        words, answers = vocabularies(cfg.data)
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
        n = len(QUESTION_TYPES)
        f64 = dict(dtype=torch.float64, device=y.device)
        loss = F.cross_entropy(logits[known], y[known], reduction="sum") if known.any() else torch.zeros((), **f64)
        return {"count": torch.tensor(float(len(y)), **f64), "em1": em1.double().sum(), "em10": em10.double().sum(),
                "type_em1": torch.zeros(n, **f64).index_add_(0, qt, em1.double()),
                "type_count": torch.bincount(qt, minlength=n).double(),
                "unknown": (~known).double().sum(), "known": known.double().sum(), "loss_sum": loss.double()}

    def finalize(self, sums: dict[str, Tensor], cfg: Any) -> dict[str, float]:
        return sqa3d_finalize(sums)
