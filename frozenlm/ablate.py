"""`frozenlm ablate`: run a grid of variants/layers/positions/sources x seeds, then tabulate and plot."""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

AXES = {  # command-line flag -> config key it sets
    "variants": "model.lm.variant",
    "layers": "model.lm.layers",
    "positions": "model.position",
    "sources": "model.lm.source",
}


def grid(axes: dict[str, list[str]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every combination of the given axis values, times seeds; each with its overrides and a name."""
    names = [a for a in AXES if axes.get(a)]
    runs = []
    for combo in itertools.product(*(axes[a] for a in names)):
        label = "_".join(_slug(v) for v in combo) or "run"
        for seed in seeds:
            over = [f"{AXES[a]}={v}" for a, v in zip(names, combo)] + [f"seed={seed}"]
            runs.append({"group": dict(zip(names, combo)), "seed": seed, "name": f"{label}_s{seed}",
                         "overrides": over})
    return runs


def _slug(v: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(v)).strip("-")[-40:]


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Mean and sample std of `metric` per group (over seeds)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r["group"].items()), []).append(float(r[metric]))
    out = []
    for key, vals in groups.items():
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append({**dict(key), "n": len(vals), "mean": statistics.fmean(vals), "std": sd})
    return out


def write_outputs(out_dir: Path, rows: list[dict[str, Any]], metric: str, title: str,
                  also: Sequence[str] = ()) -> dict[str, Path]:
    """results.csv (one row per run), summary.md (mean ± std per group of `metric`, then of each metric
    in `also` over the runs that report it) and summary.png (bar chart of `metric`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    axes = list(rows[0]["group"]) if rows else []
    csv_path = out_dir / "results.csv"
    metric_keys = sorted({k for r in rows for k in r if k not in ("group", "seed", "name")})
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(axes + ["seed"] + metric_keys)
        for r in rows:
            w.writerow([r["group"][a] for a in axes] + [r["seed"]] + [r.get(k, "") for k in metric_keys])
    summ = summarize(rows, metric)
    extra = {m: {tuple(x[a] for a in axes): x for x in summarize([r for r in rows if m in r], m)} for m in also}
    md = out_dir / "summary.md"
    lines = [f"| {' | '.join(axes)} | seeds | {metric} (mean ± std) |" + "".join(f" {m} |" for m in also),
             "|" + "---|" * (len(axes) + 2 + len(also))]
    for s in summ:
        cells = [extra[m].get(tuple(s[a] for a in axes)) for m in also]
        lines.append(f"| {' | '.join(str(s[a]) for a in axes)} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} |" +
                     "".join(f" {c['mean']:.2f} ± {c['std']:.2f} |" if c else " - |" for c in cells))
    md.write_text("\n".join(lines) + "\n")
    png = out_dir / "summary.png"
    _plot(summ, axes, metric, title, png)
    return {"csv": csv_path, "md": md, "png": png}


def _plot(summ: list[dict[str, Any]], axes: list[str], metric: str, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = ["/".join(str(s[a]) for a in axes) for s in summ]
    means, stds = [s["mean"] for s in summ], [s["std"] for s in summ]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(summ) + 1), 3.6))
    ax.bar(range(len(summ)), means, yerr=stds, capsize=4, color="#4c72b0")
    lo = min(m - s for m, s in zip(means, stds)) if means else 0
    hi = max(m + s for m, s in zip(means, stds)) if means else 1
    pad = max(0.5, (hi - lo) * 0.3)
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xticks(range(len(summ)), labels, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    for i, (m, s) in enumerate(zip(means, stds)):
        ax.text(i, m + s + pad * 0.1, f"{m:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_train_curve(run_dir: Path, key: str = "loss") -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in the "train" records of a run's log.jsonl (the last record per step
    wins, so a resumed run that re-logged a step is counted once)."""
    by_step: dict[int, float] = {}
    path = Path(run_dir) / "log.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("kind") == "train" and key in rec:
                by_step[int(rec["step"])] = float(rec[key])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_curves(out_dir: Path, rows: list[dict[str, Any]], key: str = "loss", smooth: int = 5) -> Path | None:
    """curves.png: training `key` against step, one colour per group (thin: each seed; thick: the mean
    over seeds at the steps they share), after a running mean over `smooth` logged points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    groups: dict[str, list[tuple[list[int], list[float]]]] = {}
    for r in rows:
        steps, vals = read_train_curve(out_dir / r["name"], key)
        if steps:
            groups.setdefault("/".join(str(v) for v in r["group"].values()), []).append((steps, vals))
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    k = max(1, int(smooth))

    def running_mean(x: Sequence[float]) -> np.ndarray:
        return np.convolve(x, np.ones(k) / k, mode="valid") if len(x) >= k else np.asarray(x)

    for i, (label, curves) in enumerate(groups.items()):
        color = f"C{i % 10}"
        for steps, vals in curves:
            v = running_mean(vals)
            ax.plot(steps[len(steps) - len(v):], v, color=color, alpha=0.3, lw=0.8)
        common = sorted(set.intersection(*(set(s) for s, _ in curves)))
        if common:
            mean = np.mean([[dict(zip(s, v))[c] for c in common] for s, v in curves], axis=0)
            m = running_mean(mean)
            ax.plot(common[len(common) - len(m):], m, color=color, lw=2, label=f"{label} (n={len(curves)})")
    ax.set_xlabel("step")
    ax.set_ylabel(f"train {key}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_ablation(config: str, axes: dict[str, list[str]], seeds: Sequence[int], overrides: Sequence[str],
                 out_dir: Path, metric: str = "top1", jobs: int = 1) -> list[dict[str, Any]]:
    """Train every grid point (skipping finished ones, so an interrupted ablation resumes).

    jobs > 1 trains that many grid points at once, each in its own `frozenlm train` process with
    OMP_NUM_THREADS = cores // jobs (unless already set) and its output in <run>/train.log.
    """
    from .config import load_config
    from .engine.task import task_schema
    runs = grid(axes, seeds)
    todo = []
    for i, run in enumerate(runs):
        run_dir = out_dir / run["name"]
        if not (run_dir / "metrics.json").exists():
            over = [*overrides, *run["overrides"], f"run_dir={run_dir}"]
            cfg = load_config(config, over, schema_for=task_schema)  # a bad key fails here, before any run starts
            todo.append((i, run, run_dir, over, cfg))
    if jobs <= 1:
        from .engine.train import train
        for i, run, _, _, cfg in todo:
            print(f"[ablate] {i + 1}/{len(runs)} {run['name']}: {' '.join(run['overrides'])}", flush=True)
            train(cfg)
    else:
        _run_parallel(config, todo, len(runs), jobs)
    rows = []
    for run in runs:
        run_dir = out_dir / run["name"]
        final = json.loads((run_dir / "metrics.json").read_text())["final"]
        if metric not in final:
            raise KeyError(f"metric {metric!r} not in {run_dir}/metrics.json (has {sorted(final)})")
        rows.append({"group": run["group"], "seed": run["seed"], "name": run["name"], **final})
    return rows


def _run_parallel(config: str, todo: list[tuple], n_runs: int, jobs: int) -> None:
    """Run `frozenlm train` subprocesses, at most `jobs` at a time; raise if any of them fails."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    pending, active, failed = list(todo), [], []
    while pending or active:
        while pending and len(active) < jobs:
            i, run, run_dir, over, _ = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = (run_dir / "train.log").open("a")
            print(f"[ablate] {i + 1}/{n_runs} {run['name']} started (log: {run_dir / 'train.log'})", flush=True)
            cmd = [sys.executable, "-m", "frozenlm.cli", "train", config, *over, "progress=false"]
            active.append((run, run_dir, log, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        time.sleep(0.5)
        for item in list(active):
            run, run_dir, log, proc = item
            if proc.poll() is not None:
                active.remove(item)
                log.close()
                ok = proc.returncode == 0 and (run_dir / "metrics.json").exists()
                print(f"[ablate] {run['name']} {'done' if ok else f'FAILED (exit {proc.returncode})'}", flush=True)
                if not ok:
                    failed.append(f"{run['name']} (see {run_dir / 'train.log'})")
    if failed:
        raise RuntimeError("ablation runs failed: " + ", ".join(failed))


def ablate(config: str, axes: dict[str, list[str]], seeds: int = 1, overrides: Sequence[str] = (),
           out: str | Path | None = None, metric: str = "top1", also: Sequence[str] = (), jobs: int = 1) -> dict:
    """Train the grid (``axes``: flag name -> values, see AXES) x ``seeds`` and write summary.{csv,md,png}
    and curves.png under ``out`` (default runs/ablate/<config name>); returns the written paths."""
    if not axes:
        raise ValueError("give at least one of --variants, --layers, --positions, --sources")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    out_dir = Path(out or f"runs/ablate/{Path(config).stem}")
    rows = run_ablation(config, axes, range(seeds), overrides, out_dir, metric, jobs)
    paths = write_outputs(out_dir, rows, metric, f"{Path(config).stem}: {metric}", list(also))
    curves = plot_curves(out_dir, rows)
    print(paths["md"].read_text())
    print(f"wrote {paths['csv']}, {paths['md']}, {paths['png']}" + (f", {curves}" if curves else ""))
    return {**paths, "curves": curves}


__all__ = ["AXES", "ablate", "grid", "plot_curves", "read_train_curve", "run_ablation", "summarize", "write_outputs"]
