"""Shared check: a run's checkpoints/best is the evaluation with the best declared validation metric."""
from __future__ import annotations

import json
from pathlib import Path


def assert_best_checkpoint(run_dir: Path, metric: str, mode: str) -> None:
    """`best` names `metric` (the task's validation metric, never a training one) and points at the
    step whose evaluation scored best in log.jsonl by `mode` (the earliest of ties)."""
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert best["metric"] == metric, best
    evals = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals, "the run logged no evaluation"
    values = [r[metric] for r in evals]
    target = max(values) if mode == "max" else min(values)
    step = next(r["step"] for r in evals if r[metric] == target)
    assert best["step"] == step and best["value"] == target, (best, values)
    pointer = (run_dir / "checkpoints" / "best").read_text().strip()
    assert pointer == f"step_{step:07d}"
