"""`frozenlm sweep`: the paper's LM-side ablations (which layer, how many blocks, which LM) on top of
`frozenlm ablate`: one run per choice x seed, a mean ± std table, and the metric plotted against the
choice with the baseline and random-block controls as horizontal bands."""
from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any, Sequence

from .ablate import run_ablation, summarize

KINDS = ("layers", "blocks", "sources")
CONTROL_LABELS = {"none": "baseline (no LM block)", "random": "random block, trained", "mlp": "MLP, same trainable count"}


def layer_choices(spec: str, n_layers: int) -> list[int]:
    """``all`` -> every layer; ``START:STOP[:STEP]`` -> that Python range (negatives count from the end);
    ``3,7,11`` -> those layers. Each index is checked against ``n_layers``."""
    s = spec.strip()
    if s == "all":
        return list(range(n_layers))
    if ":" in s:
        parts = s.split(":")
        if len(parts) > 3:
            raise ValueError(f"--layers {spec!r}: use START:STOP[:STEP], e.g. 0:30:3")
        try:
            nums = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise ValueError(f"--layers {spec!r}: START, STOP and STEP must be integers, e.g. 0:30:3") from None
        # a slice would clamp an out-of-range bound silently (0:40 on 30 layers); refuse it instead
        if any(v is not None and not -n_layers <= v <= n_layers for v in nums[:2]) or (len(nums) == 3 and nums[2] == 0):
            raise ValueError(f"--layers {spec!r}: START and STOP must lie in -{n_layers}..{n_layers} and STEP "
                             f"must not be 0 for a model with {n_layers} layers")
        out = list(range(n_layers))[slice(*nums)]
    else:
        try:
            out = [int(t) for t in s.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--layers {spec!r}: give all, START:STOP[:STEP] or a comma list such as 3,7,11") from None
        bad = [i for i in out if not -n_layers <= i < n_layers]
        if bad:
            raise ValueError(f"--layers {spec!r}: {bad} out of range for a model with {n_layers} layers")
        out = [i % n_layers for i in out]
    if not out:
        raise ValueError(f"--layers {spec!r} selects no layer of a model with {n_layers} layers")
    if len(set(out)) != len(out):
        raise ValueError(f"--layers {spec!r} names a layer twice")
    return out


def block_choices(counts: Sequence[int], n_layers: int, placement: str = "last") -> dict[int, list[int]]:
    """Layers used for each block count: the last k (``last``, contiguous, the paper's extension) or k
    spread evenly from the first to the last layer (``spread``, non-contiguous)."""
    out = {}
    for k in counts:
        if not 1 <= k <= n_layers:
            raise ValueError(f"--blocks {k}: must be between 1 and the model's {n_layers} layers")
        if placement == "last":
            out[k] = list(range(n_layers - k, n_layers))
        elif placement == "spread":
            out[k] = [round(i * (n_layers - 1) / (k - 1)) for i in range(k)] if k > 1 else [n_layers - 1]
        else:
            raise ValueError(f"--placement {placement!r}: use last or spread")
    return out


def plan(config: str, overrides: Sequence[str] = (), layers: str | None = None, blocks: str | None = None,
         placement: str = "last", sources: str | None = None) -> tuple[str, list[Any], dict[Any, list[int]] | None]:
    """``(kind, choices, layer_sets)`` for exactly one of ``layers`` (a spec for `layer_choices`),
    ``blocks`` (comma-separated counts) or ``sources`` (comma-separated LM sources); layer specs are
    resolved against the config's ``model.lm.source``."""
    given = [k for k, v in (("layers", layers), ("blocks", blocks), ("sources", sources)) if v]
    if len(given) != 1:
        raise ValueError("give exactly one of --layers, --blocks, --sources" + (f" (got {', '.join(given)})" if given else ""))
    if sources:
        return "sources", [s.strip() for s in sources.split(",") if s.strip()], None
    from .config import load_config
    from .engine.task import task_schema
    from .lm import source_config
    cfg = load_config(config, list(overrides), schema_for=task_schema)
    n_layers = source_config(cfg.model.lm.source).n_layers
    if layers:
        return "layers", layer_choices(layers, n_layers), None
    try:
        counts = [int(c) for c in str(blocks).split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--blocks {blocks!r}: give block counts such as 1,2,4") from None
    return "blocks", counts, block_choices(counts, n_layers, placement)


def _layers_value(layers: list[int]) -> str:
    return "[" + ",".join(str(i) for i in layers) + "]"


def sweep(config: str, kind: str, choices: Sequence[Any], seeds: int = 2, overrides: Sequence[str] = (),
          controls: Sequence[str] = ("none", "random"), metric: str | None = None, out: str | Path | None = None,
          jobs: int = 1, layer_sets: dict[Any, list[int]] | None = None) -> dict[str, Any]:
    """Train ``config`` once per choice x seed, plus each control variant x seed, and write
    sweep_<kind>.{csv,md,png} under ``out`` (default runs/sweep/<config name>).

    kind ``layers``: choices are layer indices (one frozen block each). ``blocks``: choices are block
    counts, with ``layer_sets[count]`` the layers used. ``sources``: choices are LM sources, each at the
    config's ``model.lm.layers``. Runs are ``frozenlm ablate`` grid points, so an interrupted sweep
    resumes and an ablation over the same points is reused.
    """
    from .config import load_config
    from .engine.task import get_task, task_schema
    if kind not in KINDS:
        raise ValueError(f"sweep kind {kind!r}: use one of {KINDS}")
    cfg = load_config(config, list(overrides), schema_for=task_schema)
    metric = metric or get_task(cfg.task).primary_metric
    out_dir = Path(out or f"runs/sweep/{Path(config).stem}")
    seed_list = range(seeds)
    if kind == "sources":
        axes = {"variants": ["frozen"], "sources": [str(c) for c in choices]}
        value = {str(c): c for c in choices}
    else:
        sets = layer_sets or {c: [int(c)] for c in choices}
        value = {_layers_value(sets[c]): c for c in choices}
        axes = {"variants": ["frozen"], "layers": list(value)}
    rows = run_ablation(config, axes, seed_list, overrides, out_dir, metric, jobs)
    if controls:
        rows += run_ablation(config, {"variants": list(controls)}, seed_list, overrides, out_dir, metric, jobs)
    points, bands = [], []
    for s in summarize(rows, metric):
        if s.get("variants") == "frozen":
            key = s["sources"] if kind == "sources" else s["layers"]
            points.append({"choice": value[key], "layers": s.get("layers", ""), **_stats(s)})
        else:
            bands.append({"control": s["variants"], **_stats(s)})
    order = {c: i for i, c in enumerate(choices)}
    points.sort(key=lambda p: order[p["choice"]])
    what = {"layers": f"which layer of {cfg.model.lm.source}", "blocks": f"how many blocks of {cfg.model.lm.source}",
            "sources": "which LM"}[kind]
    paths = _write(out_dir, kind, metric, points, bands, rows, f"{Path(config).stem}: {what}")
    print(paths["md"].read_text())
    return {**paths, "points": points, "bands": bands}


def _stats(s: dict[str, Any]) -> dict[str, Any]:
    return {"n": s["n"], "mean": s["mean"], "std": s["std"]}


def _write(out_dir: Path, kind: str, metric: str, points: list[dict], bands: list[dict], rows: list[dict],
           title: str) -> dict[str, Path]:
    # Named by kind, so a layer sweep and a block sweep can share one folder (and its control runs).
    csv_path, md_path, png_path = (out_dir / f"sweep_{kind}.{ext}" for ext in ("csv", "md", "png"))
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "seed", "variant", kind, metric])
        for r in rows:
            g = r["group"]
            w.writerow([r["name"], r["seed"], g["variants"], g.get(kind if kind == "sources" else "layers", ""), r[metric]])
    head = {"layers": "layer", "blocks": "blocks (layers)", "sources": "LM source"}[kind]
    lines = [f"| {head} | seeds | {metric} (mean ± std) |", "|---|---|---|"]
    for p in points:
        label = f"{p['choice']} {p['layers']}" if kind == "blocks" else str(p["choice"])
        lines.append(f"| {label} | {p['n']} | {p['mean']:.2f} ± {p['std']:.2f} |")
    for b in bands:
        lines.append(f"| {CONTROL_LABELS.get(b['control'], b['control'])} | {b['n']} | {b['mean']:.2f} ± {b['std']:.2f} |")
    md_path.write_text("\n".join(lines) + "\n")
    _plot(png_path, kind, metric, points, bands, title)
    return {"csv": csv_path, "md": md_path, "png": png_path}


def _plot(path: Path, kind: str, metric: str, points: list[dict], bands: list[dict], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = list(range(len(points))) if kind == "sources" else [p["choice"] for p in points]
    ax.errorbar(xs, [p["mean"] for p in points], yerr=[p["std"] for p in points], marker="o", capsize=3,
                color="C0", label="frozen LM block")
    for i, b in enumerate(bands):
        color = f"C{i + 1}"
        ax.axhline(b["mean"], color=color, lw=1.2, label=CONTROL_LABELS.get(b["control"], b["control"]))
        ax.axhspan(b["mean"] - b["std"], b["mean"] + b["std"], color=color, alpha=0.15)
    ax.set_xticks(xs, [str(p["choice"]) for p in points])  # one tick per choice (layer, block count or LM)
    ax.set_xlabel({"layers": "layer index", "blocks": "number of frozen blocks", "sources": "LM"}[kind])
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["KINDS", "block_choices", "layer_choices", "plan", "sweep"]
