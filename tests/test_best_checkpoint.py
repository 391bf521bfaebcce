"""checkpoints/best comes from the task's declared validation metric and direction (issue 16, item 2)."""
from __future__ import annotations

import json

import pytest

import _engine_fixtures as fx
from _best import assert_best_checkpoint
from frozenlm.config import make_config
from frozenlm.engine import train
from frozenlm.engine.task import get_task

TASKS = ("image", "image_cluttered", "motion", "pointcloud", "retrieval", "sqa3d", "video", "vqa")

# The paper's metric for each task and whether higher is better (method.md section 3).
PAPER_METRIC = {"image": ("top1", "max"), "image_cluttered": ("top1", "max"), "video": ("top1", "max"),
                "pointcloud": ("OA", "max"), "motion": ("minFDE_6", "min"), "sqa3d": ("EM@1", "max"),
                "retrieval": ("rsum", "max"), "vqa": ("overall", "max")}


def test_best_is_the_best_validation_step_not_a_training_metric(tmp_path):
    # Accuracy climbs over the 3 evaluations; the old rule ranked train_loss with `max` and kept step 4.
    run = tmp_path / "run"
    train(fx.blob_config(run, "optim.lr=3e-4", "optim.warmup_epochs=0"))
    evals = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    top1 = [r["top1"] for r in evals if r["kind"] == "eval"]
    assert top1[-1] > top1[0], top1  # the scenario needs a later evaluation to be better
    assert_best_checkpoint(run, "top1", "max")


def test_best_mode_min_and_explicit_metrics(tmp_path):
    # minimising the validation loss picks the step with the lowest eval loss
    run = tmp_path / "min"
    train(fx.blob_config(run, "best_metric=loss", "best_mode=min"))
    best = json.loads((run / "metrics.json").read_text())["best"]
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r["kind"] == "eval"}
    assert best["metric"] == "loss" and best["step"] == min(losses, key=losses.get)


def test_a_metric_without_a_direction_is_refused():
    from frozenlm.engine.train import best_rule
    with pytest.raises(ValueError, match="best_mode"):
        best_rule(make_config({"task": "test_blobs", "best_metric": "loss"}), get_task("test_blobs"))
    with pytest.raises(KeyError, match="validation metrics"):
        train(fx.blob_config("/tmp/unused-best", "best_metric=train_loss", "best_mode=min", "max_steps=4"))


@pytest.mark.parametrize("task", TASKS)
def test_every_task_declares_the_papers_metric(task):
    from frozenlm.engine.task import BUILTIN_TASKS
    from frozenlm.engine.train import best_rule
    assert set(BUILTIN_TASKS) == set(TASKS)
    cfg = make_config({"task": task})
    assert best_rule(cfg, get_task(task)) == PAPER_METRIC[task]
