"""Information-filtering analysis for the METER-style VQA model: activation maps of the fused visual
tokens at each sandwich stage, and their pseudo-mask mIoU against easy-VQA's shape masks.

Stages (visual patch tokens only, CLS dropped): fused (co-attention output = the LMLayer's input),
F_L1, attn_half, block, F_L2 (as in frozenlm.analysis.features). easy-VQA images are one shape on a
plain background, so the ground-truth mask is "pixel differs from the corner colour" (exact).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .activation import frequency_activation, magnitude_activation, to_grid
from .features import capture_sandwich_stages
from .miou import MIoUAccumulator, mask_to_tokens
from .report import save_overlay, write_table

KINDS = {"mag": magnitude_activation, "freq": frequency_activation}


@torch.no_grad()
def capture_vl_stages(model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """({stage: (B, N, C) visual tokens}, model outputs) for one METER forward pass."""
    return capture_sandwich_stages(model.lm_layer, lambda: model(images, input_ids, attention_mask), "fused")


def shape_masks(images: Tensor, mean: float = 0.5, std: float = 0.5, tol: float = 30 / 255) -> Tensor:
    """(B, 3, H, W) normalised easy-VQA images -> (B, H, W) long masks, 1 = shape, 0 = background."""
    x = images * std + mean
    bg = x[:, :, :1, :1]
    return ((x - bg).abs().sum(1) > tol).long()


def analyze_vl(model: nn.Module, cfg: Any, opts: dict[str, Any], out_dir: Path, label: str) -> dict[str, float]:
    """mIoU per stage and activation kind on `opts['n']` easy-VQA val questions; writes overlays."""
    from ..engine.task import get_task
    if cfg.data.name != "easy_vqa":
        raise ValueError(f"VL analysis needs shape masks, which only easy_vqa has (checkpoint data: {cfg.data.name})")
    task = get_task(cfg.task)
    ds = task.build_dataset(cfg, "val")
    n = min(int(opts["n"]), len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(opts["seed"])))[:n].tolist()
    collate = task.collate_fn(cfg, "val")
    vit = model.image_encoder
    grid, prefix = tuple(vit.patch_embed.grid_size), vit.num_prefix_tokens
    acc, done, bs = MIoUAccumulator(), 0, int(opts["batch"])
    for s in range(0, n, bs):
        b = collate([ds[i] for i in idx[s:s + bs]])
        stages, out = capture_vl_stages(model, b["images"], b["input_ids"], b["attention_mask"])
        gt, valid = mask_to_tokens(shape_masks(b["images"]), grid)
        maps = {k: {st: to_grid(fn(t[:, prefix:]), grid) for st, t in stages.items()} for k, fn in KINDS.items()}
        for kind, per in maps.items():
            for st, a in per.items():
                acc.add(f"{st}/{kind}", a, gt, valid)
        for i in range(len(b["images"])):
            if done >= int(opts["figures"]):
                break
            q = ds.records[idx[s + i]]["question"]
            pred = ds.vocab[int(out["vqa_logits"][i].argmax())]
            save_overlay(out_dir / label / f"overlay_{done:03d}.png", b["images"][i] * 0.5 + 0.5,
                         {k: {st: a[i] for st, a in v.items()} for k, v in maps.items()},
                         shape_masks(b["images"][i:i + 1])[0], title=f"{label}: {q} -> {pred}")
            done += 1
    result = acc.result()
    write_table({label: result}, out_dir / label)
    return result
