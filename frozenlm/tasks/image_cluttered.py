"""Image task on the cluttered Fashion-MNIST analysis dataset (items pasted on clutter, exact masks)."""
from __future__ import annotations

from typing import Any

from ..config import section
from ..data.cluttered import cluttered_classification_dataset
from ..data.transforms import MIXUP_KEYS
from .image import VIT_MODEL_KEYS, ImageClassification


class ClutteredImageClassification(ImageClassification):
    """ViT(+LMLayer) classifying the pasted Fashion-MNIST item of a cluttered image."""

    # No augmentation keys: a crop or flip would move the item off its mask. `name` only tells
    # `frozenlm analyze` which normalisation statistics training used.
    config_keys = (
        *VIT_MODEL_KEYS,
        *section("data", "name", "root", "num_classes", "img_size", "in_chans", "subset_train", "subset_val",
                 "cluttered_seed", "clutter", "mean", "std", *MIXUP_KEYS),
    )

    def build_dataset(self, cfg: Any, split: str) -> Any:
        return cluttered_classification_dataset(dict(cfg.data), split)
