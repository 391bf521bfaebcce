"""Every task through the engine on its offline data (issue 17): the loss goes down, and 2 steps
then a resume from the checkpoint give the same weights as an uninterrupted run.

Each case is the task's offline-default recipe (a frozen SmolLM2-135M block) shrunk to one batch of
a few samples, trained for 6 steps: the loss must fall from the first three steps to the last three
(same samples every step), and a run stopped after step 2 and resumed (resume=auto) must end with
bit-identical weights: optimizer state, RNG streams and the re-read, digest-checked frozen block all
come back. (Resuming in the middle of an epoch is covered on the engine's own test task,
tests/test_engine.py.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frozenlm.config import load_config
from frozenlm.engine import latest_checkpoint, train
from frozenlm.engine.checkpoint import load_train_state, read_meta
from frozenlm.engine.task import task_schema

STEPS = 6
COMMON = ["num_workers=0", "precision=fp32", "progress=false", "log_every=1", "eval_every=null",
          "save_every_steps=null", "optim.warmup_epochs=0", f"epochs={STEPS}"]
VL = ["model.fusion_layers=1", "model.text.num_layers=1", "model.hidden=64", "model.heads=2", "model.embed_dim=32"]
# task -> (offline recipe, overrides: one training batch = the whole training split); {tmp}: the test's data folder
TASKS: dict[str, tuple[str, list[str]]] = {
    "image": ("configs/image/fmnist_smollm2.yaml", ["data.subset_train=16", "batch_size=16"]),
    "image_cluttered": ("configs/image/cluttered_smollm2.yaml",
                        ["data.subset_train=16", "batch_size=16", "optim.lr=2e-3"]),
    "pointcloud": ("configs/pointcloud/shapes_smollm2.yaml",
                   ["data.train_per_class=2", "data.test_per_class=1", "data.num_classes=4", "data.shapes.num_points=128",
                    "data.num_points=64", "data.train_fps_points=64", "data.cache_dir={tmp}", "model.depth=1",
                    "model.num_group=8", "model.group_size=8", "model.trans_dim=48", "model.num_heads=2",
                    "model.encoder_dims=32", "model.head_dropout=0.0", "batch_size=8", "optim.lr=2e-3"]),
    "video": ("configs/video/shapes_smollm2.yaml",
              ["data.root={tmp}", "data.n_train=12", "data.n_val=12", "batch_size=12", "optim.lr=2e-3"]),
    "motion": ("configs/motion/synth_vectornet_smollm2.yaml",
               ["data.root={tmp}", "data.num_train=4", "data.num_val=2", "data.max_lanes=8", "batch_size=4"]),
    "vqa": ("configs/vqa/easyvqa_smollm2.yaml", [*VL, "data.subset_train=8", "data.subset_val=8", "batch_size=8"]),
    # retrieval's ITC starts at chance (a from-scratch ViT gives near-identical CLS embeddings), so in 6 steps
    # its loss falls through the ITM head only
    "retrieval": ("configs/retrieval/easyvqa_captions_smollm2.yaml",
                  [*VL, "data.subset_train=8", "data.subset_val=8", "batch_size=8"]),
    "sqa3d": ("configs/sqa3d/rooms_smollm2.yaml",
              ["data.cache_dir={tmp}", "data.train_scenes=2", "data.val_scenes=1", "data.test_scenes=1",
               "data.scene_points=256", "data.num_points=128", "data.max_situation_len=12", "data.max_question_len=10",
               "model.dim=32", "model.word_dim=16", "model.heads=2", "model.num_tokens=8", "model.num_seeds=32",
               "model.scene_widths=[8,16,32]", "model.dropout=0.0", "batch_size=14"]),
}


def _run(task: str, tmp: Path, run: str, *extra: str) -> Path:
    recipe, tiny = TASKS[task]
    over = [o.replace("{tmp}", str(tmp / "data")) for o in tiny]
    cfg = load_config(recipe, [*over, *COMMON, f"run_dir={tmp / run}", *extra], schema_for=task_schema)
    assert cfg.task == task and cfg.model.lm.variant == "frozen"
    train(cfg)
    return tmp / run


def _losses(run: Path) -> list[float]:
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if r["kind"] == "train"]


def test_every_task_has_a_case() -> None:
    from frozenlm.engine.task import BUILTIN_TASKS
    assert sorted(TASKS) == sorted(BUILTIN_TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_task_trains_and_resumes_exactly(task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROZENLM_DATA", str(tmp_path / "data"))  # nothing generated outside the test folder
    full = _run(task, tmp_path, "full")
    losses = _losses(full)
    assert len(losses) == STEPS, f"{task}: expected one step per epoch (one batch), logged {losses}"
    half = STEPS // 2
    assert sum(losses[half:]) < sum(losses[:half]), f"{task}: the loss did not go down: {losses}"
    assert read_meta(latest_checkpoint(full))["frozen_sources"], f"{task}: no frozen LM block recorded"

    split = _run(task, tmp_path, "split", "max_steps=2")
    assert load_train_state(latest_checkpoint(split))["step"] == 2
    _run(task, tmp_path, "split", "resume=auto")
    assert load_train_state(latest_checkpoint(split))["step"] == STEPS
    a, b = (load_file(str(latest_checkpoint(r) / "model.safetensors")) for r in (full, split))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{task}: resumed weights differ from an uninterrupted run in {differ[:5]}"
    assert _losses(split)[2:] == losses[2:]  # the resumed steps computed the same losses, bit for bit
