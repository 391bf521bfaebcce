"""Information-filtering analysis (method.md section 5): per-stage token features, activation and
attention maps, pseudo-mask mIoU, datasets with masks, figures and tables."""
from __future__ import annotations

from .activation import activation_maps, frequency_activation, magnitude_activation, minmax
from .features import STAGES, Capture, capture_features
from .miou import THRESHOLDS, MIoUAccumulator, best_iou, iou, mask_to_tokens

__all__ = ["STAGES", "THRESHOLDS", "Capture", "MIoUAccumulator", "activation_maps", "best_iou",
           "capture_features", "frequency_activation", "iou", "magnitude_activation", "mask_to_tokens",
           "minmax"]
