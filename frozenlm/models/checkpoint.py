"""Load pretrained backbone weights (timm / DeiT files the user already has) safely."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..lm.readers.base import CheckpointError, safe_torch_load


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """safetensors or weights-only torch file; unwraps {'model': ...}/{'state_dict': ...}, strips 'module.'."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"backbone weights not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{p} is not a valid safetensors file ({e})") from None
    else:
        sd = safe_torch_load(p)
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p} does not contain a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


def load_backbone_weights(vit: nn.Module, path: str | Path) -> None:
    """Load a timm/DeiT ViT checkpoint, or the image tower of an OpenAI-CLIP / open_clip checkpoint
    (keys `visual.*`, converted to timm's names by timm's own filter); resample pos_embed to the model's
    grid; drop a mismatched head, and any head when the model has none (num_classes=0)."""
    from timm.layers import resample_abs_pos_embed
    sd = read_state_dict(path)
    own = vit.state_dict()
    if "visual.class_embedding" in sd:  # OpenAI CLIP / open_clip layout; the text tower's keys are skipped
        from timm.models.vision_transformer import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, vit)
        if "head.weight" not in own:  # CLIP's image projection became head.*; a headless tower ignores it
            sd.pop("head.weight", None)
            sd.pop("head.bias", None)
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(vit.patch_embed.grid_size),
                                                 num_prefix_tokens=prefix)
    for k in ("head.weight", "head.bias"):
        if k in sd and k in own and sd[k].shape != own[k].shape:
            del sd[k]  # a different class count: the head is trained from scratch
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items()
           if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: shape mismatch with the model: " + "; ".join(bad[:5]))
    missing, unexpected = vit.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.startswith("head.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: does not match the backbone. missing keys: {missing[:10]}; "
                              f"unexpected keys: {unexpected[:10]} (is it a ViT of the same size?)")
