"""Per-frame information-filtering maps for video models (VideoMAE-style ViT + LMLayer).

A clip's tokens are tubelets laid out (T', H', W') (Conv3d output flattened in that order), so each
stage's magnitude / frequency activation (method.md section 5, computed over all tokens of the clip)
reshapes to one h x w map per temporal slot. The figure shows, for each slot, the middle frame of
its tubelet and, below it, the map of every stage. Generated clips carry no object masks, so no
mIoU is computed; the figures are the output.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .activation import frequency_activation, magnitude_activation
from .features import capture_sandwich_stages
from .report import _plt, save_figure

KINDS = {"mag": magnitude_activation, "freq": frequency_activation}


def video_stage_maps(model: nn.Module, clips: Tensor) -> tuple[dict[str, dict[str, Tensor]], Tensor]:
    """({kind: {stage: (B, T', h, w) maps in [0, 1]}}, logits) for clips (B, C, T, H, W)."""
    stages, logits = capture_sandwich_stages(model.lm_layer, lambda: model(clips))
    t, h, w = model.patch_embed.grid
    maps = {k: {st: fn(z).reshape(-1, t, h, w) for st, z in stages.items()} for k, fn in KINDS.items()}
    return maps, logits


def save_video_maps(path: Path, frames: Tensor, maps: dict[str, dict[str, Tensor]], title: str) -> None:
    """One PNG: row 0 = a frame per temporal slot, then one row per (kind, stage) map."""
    plt = _plt()
    rows = [(k, st, m) for k, per in maps.items() for st, m in per.items()]
    n_t = next(iter(rows))[2].shape[0]
    fig, axes = plt.subplots(1 + len(rows), n_t, figsize=(1.6 * n_t, 1.6 * (1 + len(rows))), squeeze=False)
    tub = frames.shape[1] // n_t
    for j in range(n_t):
        img = frames[:, j * tub + tub // 2].permute(1, 2, 0).clamp(0, 1).numpy()
        axes[0][j].imshow(img)
        axes[0][j].set_title(f"t{j}", fontsize=7)
        for i, (k, st, m) in enumerate(rows, 1):
            axes[i][j].imshow(m[j].numpy(), vmin=0, vmax=1, cmap="inferno")
            if j == 0:
                axes[i][j].set_ylabel(f"{st}\\n{k}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    save_figure(fig, path, dpi=90)


@torch.no_grad()
def analyze_video(model: nn.Module, cfg: Any, opts: dict[str, Any], out_dir: Path, label: str) -> dict[str, float]:
    """Per-frame maps of `opts['figures']` validation clips; returns {} (no masks, no mIoU)."""
    from ..engine.task import get_task
    ds = get_task(cfg.task).build_dataset(cfg, "val")
    mean, std = ds.mean.view(3, 1, 1, 1), ds.std.view(3, 1, 1, 1)
    n = min(int(opts["figures"]), len(ds))
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(int(opts["seed"])))[:n].tolist()
    for done, i in enumerate(idx):
        item = ds[i]
        if item is None:  # an undecodable file skipped by the dataset
            continue
        clip, y = item
        clip = clip[0] if clip.dim() == 5 else clip  # multi-view eval: the first view
        maps, logits = video_stage_maps(model, clip[None])
        pred = int(logits[0].argmax())
        frames = (clip * std + mean).cpu()
        names = getattr(ds, "classes", None)
        name = (lambda c: names[c] if names else str(c))
        save_video_maps(out_dir / label / f"frames_{done:03d}.png", frames,
                        {k: {st: m[0].cpu() for st, m in per.items()} for k, per in maps.items()},
                        f"{label}: label={name(int(y))} pred={name(pred)}")
    print(f"{label}: wrote {n} per-frame map figures to {out_dir / label}")
    return {}
