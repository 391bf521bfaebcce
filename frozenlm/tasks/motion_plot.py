"""PNG of predicted vs ground-truth trajectories over the lanes, for a few scenes.

    python -m frozenlm.tasks.motion_plot RUN_OR_CHECKPOINT --out docs/figures/motion/predictions.png
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from ..analysis.report import save_figure
from ..data.motion import MotionDataset, collate_motion


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


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: rebuild a trained model from its checkpoint and plot a few validation scenes."""
    from ..engine.task import get_task
    from ..engine.trained import load_trained
    ap = argparse.ArgumentParser(prog="python -m frozenlm.tasks.motion_plot")
    ap.add_argument("checkpoint", help="run dir or checkpoint dir of a motion run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--indices", default="0,1,2,3,4,5")
    a = ap.parse_args(argv)
    model, cfg = load_trained(a.checkpoint)
    task = get_task(cfg.task)
    ds = task.build_dataset(cfg, a.split)
    variant = cfg.model.get("lm", {}).get("variant", "none")
    out = plot_predictions(model, ds, a.out, [int(i) for i in a.indices.split(",")],
                           title=f"{cfg.model.name} + LM {variant}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
