"""PNG of predicted vs ground-truth trajectories over the lanes, for a few scenes of a trained motion run
(``frozenlm plot-motion RUN --out FILE``)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..data.motion import MotionDataset, collate_motion
from ..engine.trained import rebuild_trained
from .report import save_figure


@torch.no_grad()
def plot_predictions(model: nn.Module, dataset: MotionDataset, path: str | Path,
                     indices: Sequence[int] = (0, 1, 2, 3, 4, 5), title: str = "") -> Path:
    """Lanes (grey), agent histories (blue; focal darker), ground truth (green) and the K predicted
    modes (red, opacity = probability), in the focal agent's frame; one panel per scene."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    model.eval()
    indices = [i for i in indices if i < len(dataset)]
    batch = collate_motion([dataset[i] for i in indices])
    out = model(batch)
    probs = out["logits"].float().softmax(-1)
    cols = min(3, len(indices))
    rows = (len(indices) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax, b in zip(axes.flat, range(len(indices))):
        vec, vm, pad = batch["vectors"][b], batch["vector_mask"][b], batch["poly_pad"][b]
        for p in range(vec.shape[0]):
            if pad[p]:
                continue
            v = vec[p][vm[p]]
            xs = torch.cat([v[:, 0], v[-1:, 2]])
            ys = torch.cat([v[:, 1], v[-1:, 3]])
            if v[0, 5] > 0.5:
                ax.plot(xs, ys, color="0.75", lw=1, zorder=1)
            else:
                focal = v[0, 6] > 0.5
                ax.plot(xs, ys, color="#08306b" if focal else "#6baed6", lw=2 if focal else 1.2, zorder=3)
        gt = batch["target"][b]
        ax.plot(gt[:, 0], gt[:, 1], color="#2ca02c", lw=2, zorder=4, label="ground truth")
        for k in range(out["traj"].shape[1]):
            tr = out["traj"][b, k]
            ax.plot(tr[:, 0], tr[:, 1], color="#d62728", lw=1.5, alpha=float(0.25 + 0.75 * probs[b, k]), zorder=5,
                    label="predictions" if k == 0 else None)
        ax.set_aspect("equal")
        ax.set_xlim(-40, 60)
        ax.set_ylim(-50, 50)
        ax.set_title(f"scene {indices[b]}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(indices):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_run(checkpoint: str | Path, out: str | Path, split: str = "val",
             indices: Sequence[int] = (0, 1, 2, 3, 4, 5)) -> Path:
    """Rebuild a trained motion model from its run or checkpoint dir and plot scenes ``indices`` of ``split``."""
    task, model, cfg, _ = rebuild_trained(checkpoint)
    if cfg.task != "motion":
        raise ValueError(f"{checkpoint} is a {cfg.task!r} run; plot-motion needs a motion run")
    model.eval()
    ds = task.build_dataset(cfg, split)
    if ds is None:
        raise ValueError(f"the motion run {checkpoint} has no {split!r} split")
    variant = cfg.model.get("lm", {}).get("variant", "none")
    return plot_predictions(model, ds, out, indices, title=f"{cfg.model.name} + LM {variant}")
