"""Image task on the cluttered Fashion-MNIST analysis dataset (items pasted on clutter, exact masks)."""
from __future__ import annotations

from typing import Any

from ..analysis.datasets import cluttered_classification_dataset
from ..engine.task import register_task
from .image import ImageClassification


@register_task("image_cluttered")
class ClutteredImageClassification(ImageClassification):
    """ViT(+LMLayer) classifying the pasted Fashion-MNIST item of a cluttered image."""

    def build_dataset(self, cfg: Any, split: str) -> Any:
        return cluttered_classification_dataset(dict(cfg.data), split)
