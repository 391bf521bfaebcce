"""`frozenlm analyze CHECKPOINT [CHECKPOINT ...] [data=cluttered|imagenet_s] [root=DIR] [out=DIR] [n=N]`.

Rebuilds each model from its checkpoint's saved config, runs the pseudo-mask evaluation of
method.md section 5 on the same images for every model, and writes under `out`:
  <model>/overlay_XXX.png   image + per-stage magnitude / frequency maps + CLS attention
  <model>/miou.csv, .md     that model's table
  miou.csv, miou.md         all models;  miou_bar.png  when several checkpoints are given
  miou_seeds.{csv,md}, miou_seeds_bar.png   mean ± std over seeds, when run names differ only
                            by `_s<seed>` (the runs of `frozenlm ablate`)
Other keys: seed=0 (dataset seed), figures=4 (overlays per model), batch=16, device=cpu,
clutter=standard|matched (matched: clutter as bright as the item; default: the checkpoint's
data.clutter when it was trained on task image_cluttered, else standard). Every table also has two
references on the same tokens: ref_brightness (mean pixel value per patch) and ref_random.
METER-style VQA checkpoints (task vqa on easy_vqa) are analysed on easy-VQA val questions instead:
maps of the fused visual tokens per stage, mIoU against the exact shape masks (frozenlm.analysis.vl).
Video checkpoints (task video) get per-frame maps of every stage for `figures` val clips
(<model>/frames_XXX.png; frozenlm.analysis.video).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .activation import activation_maps, attention_map
from .datasets import build_analysis_dataset
from .features import capture_features
from .miou import MIoUAccumulator, mask_to_tokens
from .report import aggregate_seeds, bar_plot, save_overlay, write_seed_table, write_table

KIND_SHORT = {"magnitude": "mag", "frequency": "freq"}
DEFAULTS: dict[str, Any] = {"data": "cluttered", "root": None, "out": "analysis", "n": 64, "seed": 0,
                            "figures": 4, "batch": 16, "device": "cpu", "clutter": None}


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[nn.Module, Any, Path]:
    """(model in eval mode with the checkpoint's weights, its config, the resolved step dir)."""
    from ..engine import checkpoint as ckpt
    from ..engine.trained import load_trained

    path = ckpt.resolve_checkpoint(checkpoint)
    model, cfg = load_trained(path, (), device)
    return model, cfg, path


def _mean_std(cfg: Any, in_chans: int) -> tuple[Tensor, Tensor]:
    # Same defaults as frozenlm.data.transforms: Fashion-MNIST stats for it, ImageNet's otherwise.
    from ..data.transforms import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    data = cfg.get("data") or {}
    if data.get("mean") and data.get("std"):
        mean, std = tuple(data["mean"]), tuple(data["std"])
    elif data.get("name") == "fashion_mnist":
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if in_chans == 3 else ((0.449,), (0.226,))
    if len(mean) != in_chans:
        mean, std = (mean[0],) * in_chans, (std[0],) * in_chans
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


def _label(path: Path, taken: set[str]) -> str:
    # step dir -> checkpoints -> run dir: the run's folder name identifies the model.
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    name, i = run.name or path.name, 2
    base = name
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@torch.no_grad()
def analyze_model(model: nn.Module, cfg: Any, opts: dict[str, Any], out_dir: Path, label: str
                  ) -> dict[str, float]:
    """mIoU per stage (magnitude and frequency) and for the CLS attention; writes overlays."""
    if not isinstance(getattr(model, "vit", None), nn.Module) or not hasattr(model, "lm_layer"):
        raise ValueError(f"{label}: frozenlm analyze reads the stages of the ViT presets (model.name vit_* / "
                         f"deit_*, a patch grid of tokens); this run's model is {cfg.model.name!r} "
                         f"({type(model).__name__}), which it cannot map to image patches")
    vit = model.vit
    img_size = int(vit.patch_embed.img_size[0])
    in_chans = int(vit.patch_embed.proj.in_channels)
    ds = build_analysis_dataset(opts["data"], img_size, in_chans, int(opts["n"]), int(opts["seed"]), opts["root"],
                                clutter=clutter_for(opts, cfg))
    rand = torch.Generator().manual_seed(int(opts["seed"]))
    mean, std = _mean_std(cfg, in_chans)
    acc = MIoUAccumulator()
    loader = torch.utils.data.DataLoader(ds, batch_size=int(opts["batch"]), shuffle=False, num_workers=0)
    n_fig, done = int(opts["figures"]), 0
    device = opts["device"]
    for images, labels, masks in loader:
        cap = capture_features(model, ((images - mean) / std).to(device))
        gt, valid = mask_to_tokens(masks, cap.grid)
        maps = {k: activation_maps(cap, k) for k in KIND_SHORT}
        attn = attention_map(cap)
        for kind, per_stage in maps.items():
            for stage, a in per_stage.items():
                acc.add(f"{stage}/{KIND_SHORT[kind]}", a.cpu(), gt, valid)
        if attn is not None:
            acc.add(f"attn_{cap.attention_source}", attn.cpu(), gt, valid)
        # Trivial references on the same tokens: what a feature must beat to mean anything.
        acc.add("ref_brightness", brightness_map(images, cap.grid), gt, valid)
        acc.add("ref_random", torch.rand(gt.shape, generator=rand), gt, valid)
        for i in range(images.shape[0]):
            if done >= n_fig:
                break
            rows: dict[str, dict[str, Tensor]] = {k: {s: a[i] for s, a in v.items()} for k, v in maps.items()}
            if attn is not None:
                rows[f"attention ({cap.attention_source})"] = {"CLS->patch": attn[i]}
            pred = int(cap.output[i].argmax())
            save_overlay(out_dir / label / f"overlay_{done:03d}.png", images[i], rows, masks[i],
                         title=f"{label}  label={int(labels[i])}  pred={pred}")
            done += 1
    result = acc.result()
    skipped = max(acc.skipped.values(), default=0)
    if skipped:
        print(f"{label}: {skipped} of {len(ds)} images have no foreground token at the {cap.grid} grid "
              f"and are left out of the mIoU")
    write_table({label: result}, out_dir / label)
    return result


def clutter_for(opts: dict[str, Any], cfg: Any) -> str:
    """The clutter to analyse on: `clutter=` if given, else the one the checkpoint was trained on
    (task image_cluttered, data.clutter), else standard."""
    if opts.get("clutter"):
        return str(opts["clutter"])
    trained_on = (cfg.get("data") or {}).get("clutter") if cfg.get("task") == "image_cluttered" else None
    return str(trained_on or "standard")


def brightness_map(images: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean pixel value of each token's patch, min-max scaled per image: (B, h, w) in [0, 1]."""
    m = torch.nn.functional.adaptive_avg_pool2d(images.float().mean(1, keepdim=True), grid)[:, 0]
    lo = m.amin((1, 2), keepdim=True)
    hi = m.amax((1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def parse_options(items: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split `frozenlm analyze` arguments into checkpoints and `key=value` options (checked against DEFAULTS)."""
    ckpts = [a for a in items if "=" not in a]
    opts = dict(DEFAULTS)
    for a in items:
        if "=" in a:
            k, v = a.split("=", 1)
            if k not in DEFAULTS:
                raise ValueError(f"unknown option {k!r}; known: {', '.join(DEFAULTS)}")
            opts[k] = v
    if not ckpts:
        raise ValueError("give at least one checkpoint (step dir or run dir)")
    return ckpts, opts


def analyze(ckpts: Sequence[str | Path], opts: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Analyse each checkpoint with ``opts`` (see the module docstring); {model label: {map: mIoU}}."""
    opts = {**DEFAULTS, **opts}
    out_dir = Path(opts["out"])
    results: dict[str, dict[str, float]] = {}
    taken: set[str] = set()
    for c in ckpts:
        model, cfg, path = load_model(c, opts["device"])
        label = _label(path, taken)
        if hasattr(model, "fusion"):  # METER-style VL model: fused visual tokens, easy-VQA shape masks
            from .vl import analyze_vl
            results[label] = analyze_vl(model, cfg, opts, out_dir, label)
        elif cfg.task == "video":  # per-frame maps of the tubelet tokens (no masks: figures only)
            from .video import analyze_video
            results[label] = analyze_video(model, cfg, opts, out_dir, label)
        else:
            results[label] = analyze_model(model, cfg, opts, out_dir, label)
        print(f"{label}: " + " ".join(f"{k}={100 * v:.1f}" for k, v in results[label].items()))
    write_table(results, out_dir)
    if len(results) > 1 and any(results.values()):
        bar_plot(results, out_dir / "miou_bar.png")
    print(f"wrote {out_dir}/miou.csv, {out_dir}/miou.md" + (" and miou_bar.png" if len(results) > 1 else ""))
    agg = aggregate_seeds(results)
    if agg:  # runs of `frozenlm ablate` (<variant>_s<seed>): also mean ± std over seeds
        write_seed_table(agg, out_dir)
        bar_plot({g: {k: v[0] for k, v in r.items()} for g, r in agg.items()}, out_dir / "miou_seeds_bar.png",
                 title="pseudo-mask mIoU per stage, mean ± std over seeds",
                 errors={g: {k: v[1] for k, v in r.items()} for g, r in agg.items()})
        print(f"wrote {out_dir}/miou_seeds.md and miou_seeds_bar.png (" +
              ", ".join(f"{g}: {max(v[2] for v in r.values())} seeds" for g, r in agg.items()) + ")")
    return results
