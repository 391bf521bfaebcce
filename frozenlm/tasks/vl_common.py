"""Pieces the vision-language tasks (vqa, retrieval) share: model building, tokenising collate, and
METER's per-module learning rates."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import section
from ..data.errors import DropSkipped
from ..layer import lm_config_keys
from ..models import create_model
from .base import Task, model_kwargs

# Module groups of frozenlm.models.meter.METER -> parameter-name prefixes.
MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    "image_encoder": ("image_encoder.",),
    "text_encoder": ("text_encoder.",),
    "fusion": ("fusion.", "image_proj.", "text_proj.", "type_embed."),
    "heads": ("vqa_head.", "itm_head.", "pool_image.", "pool_text.", "itc_image.", "itc_text.", "logit_scale"),
    "lm_layer": ("lm_layer.",),
}


#: model keys of the METER-style model shared by the vqa and retrieval tasks.
VL_MODEL_KEYS = (
    *section("model", "name", "lr_mult", "freeze_text", "hidden", "fusion_layers", "heads", "embed_dim", "dropout"),
    *section("model.image", "name", "img_size", "pretrained_path"),
    *section("model.text", "source", "num_layers", "freeze_embeddings"),
    *lm_config_keys("model.lm"),
)


def build_vl_model(cfg: Any, num_answers: int) -> nn.Module:
    """METER from cfg.model (image / text / lm / hidden / fusion_layers / heads ...)."""
    kw = model_kwargs(cfg, drop=("lr_mult", "num_answers"))
    return create_model(cfg.model.get("name", "meter"), num_answers=num_answers, **kw)


def meter_lr_mults(cfg: Any) -> dict[str, float]:
    """METER's module LR multipliers from ``model.lr_mult`` (e.g. lm_layer: 10 = adapters at 10x the image
    encoder's LR, as the paper does), as parameter-name prefixes; ``optim.lr_mult`` multiplies on top."""
    mults = dict(cfg.model.get("lr_mult") or {})
    unknown = set(mults) - set(MODULE_GROUPS)
    if unknown:
        raise ValueError(f"model.lr_mult has unknown groups {sorted(unknown)}; known: {sorted(MODULE_GROUPS)}")
    return {prefix: float(mults[g]) for g, prefixes in MODULE_GROUPS.items() if g in mults for prefix in prefixes}


class VLTask(Task):
    """What the METER tasks share: the tokenising collate (unreadable images dropped) and module LRs."""

    def collate_fn(self, cfg: Any, split: str) -> DropSkipped:
        return DropSkipped(text_collate(cfg))

    def lr_mults(self, model: nn.Module, cfg: Any) -> dict[str, float]:
        return meter_lr_mults(cfg)


class TextCollate:
    """Stacks images and tokenises the batch's texts with the text encoder's own tokenizer (padding to
    the longest text, at most ``max_len`` tokens). Picklable: the tokenizer loads lazily per process."""

    def __init__(self, text_source: str, max_len: int) -> None:
        self.text_source, self.max_len = text_source, int(max_len)
        self._tok: Any = None

    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer read from the text encoder's folder (offline)."""
        if self._tok is None:
            from transformers import AutoTokenizer
            from ..models.text import resolve_text_dir
            d = resolve_text_dir(self.text_source)
            try:
                self._tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
            except (OSError, ValueError) as e:
                raise FileNotFoundError(f"no tokenizer files in {d} (need tokenizer.json or vocab.txt/"
                                        f"vocab.json + tokenizer_config.json): {e}") from None
        return self._tok

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """{input_ids, attention_mask} (B, L) for a list of strings."""
        enc = self.tokenizer()(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def __getstate__(self) -> dict[str, Any]:
        return {"text_source": self.text_source, "max_len": self.max_len, "_tok": None}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"images": torch.stack([it["image"] for it in items])}
        if "question" in items[0]:
            out.update(self.tokenize([it["question"] for it in items]))
        for k in items[0]:
            if k in ("image", "question"):
                continue
            vals = [it[k] for it in items]
            out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
        return out


def text_collate(cfg: Any) -> TextCollate:
    """The collate function for cfg (text encoder source and data.max_text_len)."""
    return TextCollate(str((cfg.model.get("text") or {}).get("source", "minilm-l6")),
                       int(cfg.data.get("max_text_len") or 40))
