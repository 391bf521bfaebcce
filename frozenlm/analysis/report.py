"""Figures and tables: per-image overlays, mIoU CSV/Markdown, a bar plot comparing models."""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt
    return plt


def _np_image(image: Tensor | np.ndarray) -> np.ndarray:
    a = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return np.clip(a, 0.0, 1.0)


def save_overlay(path: str | os.PathLike, image: Tensor | np.ndarray,
                 rows: Mapping[str, Mapping[str, Tensor | np.ndarray]],
                 mask: Tensor | np.ndarray | None = None, title: str | None = None) -> Path:
    """One PNG: a row per map kind (e.g. magnitude, frequency, attention), the image first and
    then each stage's heat map (token grid upsampled to the image) over a dimmed copy of the image.

    rows: {kind: {stage: (h, w) map in [0, 1]}}; mask: optional (H, W) ground truth drawn as a contour.
    """
    plt = _plt()
    img = _np_image(image)
    hw = img.shape[:2]
    ncols = 1 + max((len(r) for r in rows.values()), default=0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.8 * ncols, 1.9 * len(rows)), squeeze=False)
    for r, (kind, maps) in enumerate(rows.items()):
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask)
            ax.contour((m == 1).astype(float), levels=[0.5], colors="lime", linewidths=0.6)
        ax.set_ylabel(kind, fontsize=7)
        ax.set_title("image", fontsize=7)
        for c, (stage, amap) in enumerate(maps.items(), start=1):
            a = torch.as_tensor(np.asarray(amap.cpu() if isinstance(amap, Tensor) else amap), dtype=torch.float32)
            up = torch.nn.functional.interpolate(a[None, None], size=hw, mode="nearest")[0, 0].numpy()
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[r, c].set_title(stage, fontsize=7)
        for c in range(ncols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c > len(maps):
                axes[r, c].axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    return save_figure(fig, path)


def _column_key(name: str) -> tuple[int, int]:
    # Magnitude stages in pipeline order, then frequency, then attention; unknown names last.
    from .features import STAGES
    order = ("fused", *STAGES)  # the VL analysis names its encoder-output stage "fused" (the LMLayer's input)
    stage, _, kind = name.partition("/")
    group = {"mag": 0, "freq": 1}.get(kind, 2 if name.startswith("attn") else 3)
    return group, order.index(stage) if stage in order else len(order)


def _columns(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    cols: list[str] = []
    for r in results.values():
        cols += [k for k in r if k not in cols]
    return sorted(cols, key=_column_key)  # stable: unknown names keep their order


def write_table(results: Mapping[str, Mapping[str, float]], out_dir: str | os.PathLike,
                stem: str = "miou") -> tuple[Path, Path]:
    """results {model: {map name: mIoU}} -> out_dir/stem.csv (one row per model and map) and a
    Markdown table (models as rows, maps as columns; '-' where a model lacks a stage)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "map", "miou"])
        for model, r in results.items():
            for k, v in r.items():
                w.writerow([model, k, f"{v:.4f}"])
    cols = _columns(results)
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for model, r in results.items():
        lines.append(f"| {model} | " + " | ".join(f"{100 * r[c]:.1f}" if c in r else "-" for c in cols) + " |")
    md_path.write_text("mIoU (%) of pseudo-masks, best threshold per image\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


SEED_SUFFIX = re.compile(r"_s\d+$")  # `frozenlm ablate` names its runs <variant>_s<seed>


def seed_groups(results: Mapping[str, Mapping[str, float]]) -> dict[str, list[str]]:
    """{variant: [model labels]} for labels that differ only by their `_s<seed>` suffix, where a
    variant has at least two seeds; empty when no label repeats."""
    groups: dict[str, list[str]] = {}
    for label in results:
        groups.setdefault(SEED_SUFFIX.sub("", label), []).append(label)
    return {g: labels for g, labels in groups.items() if len(labels) > 1}


def aggregate_seeds(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{variant: {map: (mean, sample std, n seeds)}} over the seed groups of seed_groups(); a map
    missing from some seeds is averaged over the seeds that have it."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for g, labels in seed_groups(results).items():
        cols = _columns({k: results[k] for k in labels})
        out[g] = {}
        for c in cols:
            v = np.array([results[k][c] for k in labels if c in results[k]], dtype=np.float64)
            out[g][c] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v))
    return out


def write_seed_table(agg: Mapping[str, Mapping[str, tuple[float, float, int]]], out_dir: str | os.PathLike,
                     stem: str = "miou_seeds") -> tuple[Path, Path]:
    """aggregate_seeds() -> out_dir/stem.csv (variant, map, mean, std, n) and a Markdown table of
    'mean ± std' in %."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{stem}.csv", out / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "map", "miou_mean", "miou_std", "seeds"])
        for g, r in agg.items():
            for k, (m, sd, n) in r.items():
                w.writerow([g, k, f"{m:.4f}", f"{sd:.4f}", n])
    cols = _columns(agg)
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for g, r in agg.items():
        n = max(v[2] for v in r.values())
        cells = [f"{100 * r[c][0]:.1f} ± {100 * r[c][1]:.1f}" if c in r else "-" for c in cols]
        lines.append(f"| {g} | {n} | " + " | ".join(cells) + " |")
    md_path.write_text("mIoU (%) of pseudo-masks, mean ± std over seeds\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


def bar_plot(results: Mapping[str, Mapping[str, float]], path: str | os.PathLike,
             title: str = "pseudo-mask mIoU per stage",
             errors: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Grouped bars: one group per map name, one bar per model; errors {model: {map: std}} adds
    error bars (used for means over seeds)."""
    plt = _plt()
    cols = _columns(results)
    models: Sequence[str] = list(results)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.9 * len(cols)), 3.2))
    x = np.arange(len(cols))
    for i, m in enumerate(models):
        vals = [100 * results[m].get(c, np.nan) for c in cols]
        err = [100 * errors[m].get(c, 0.0) for c in cols] if errors and m in errors else None
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m, yerr=err, capsize=2 if err else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_figure(fig: object, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as PNG (creating the folder) and free it."""
    plt = _plt()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
