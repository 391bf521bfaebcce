"""The "video" task through the engine: training lowers the loss, multi-view scoring, config errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frozenlm.config import load_config
from frozenlm.engine.train import train
from frozenlm.tasks.video import VideoClassification

from _video_fixtures import lm_layer
from _best import assert_best_checkpoint

CONFIG = "configs/video/shapes_smollm2.yaml"


def _cfg(tmp_path: Path, *extra: str):
    return load_config(CONFIG, [f"data.root={tmp_path / 'data'}", "data.n_train=96", "data.n_val=24",
                                "batch_size=16", "progress=false", "optim.warmup_epochs=0", "log_every=1",
                                f"run_dir={tmp_path / 'run'}", *extra])


def test_training_lowers_the_loss_and_reports_per_class_accuracy(tmp_path: Path, monkeypatch) -> None:
    # The shared SmolLM2 block (read once per session) stands in for model.lm's source.
    import frozenlm.tasks.video as tv
    real = tv.create_model
    monkeypatch.setattr(tv, "create_model", lambda name, lm=None, **kw: real(name, lm=lm_layer("frozen"), **kw))
    metrics = train(_cfg(tmp_path, "epochs=4", "optim.lr=2e-3"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses) == 24 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert set(metrics) >= {"top1", "top5", "mean_class_acc", "class_acc/00_moving_left_to_right"}
    assert metrics["top5"] >= metrics["top1"] > 100 / 12  # better than chance after 24 steps
    assert_best_checkpoint(tmp_path / "run", "top1", "max")
    per_class = [v for k, v in metrics.items() if k.startswith("class_acc/")]
    assert len(per_class) == 12
    assert metrics["mean_class_acc"] == pytest.approx(sum(per_class) / 12)  # balanced val set
    # `frozenlm analyze` on the trained checkpoint: per-frame maps of every sandwich stage
    from frozenlm.cli import main_analyze
    from frozenlm.analysis.video import video_stage_maps
    out = tmp_path / "analysis"
    assert main_analyze([str(tmp_path / "run"), f"out={out}", "figures=2", "seed=0"]) == {"run": {}}
    assert sorted(p.name for p in (out / "run").glob("frames_*.png")) == ["frames_000.png", "frames_001.png"]
    from frozenlm.analysis.analyze import load_model
    model, cfg, _ = load_model(str(tmp_path / "run"))
    clip = torch.randn(2, 3, *cfg_frames(cfg))
    maps, logits = video_stage_maps(model.eval(), clip)
    t, h, w = model.patch_embed.grid
    assert set(maps["mag"]) == {"F_E", "F_L1", "attn_half", "block", "F_L2"}
    assert all(m.shape == (2, t, h, w) and 0 <= m.min() and m.max() <= 1 for per in maps.values() for m in per.values())
    with torch.no_grad():
        torch.testing.assert_close(logits, model(clip))  # the hooks only read


def cfg_frames(cfg) -> tuple[int, int, int]:
    """(T, H, W) of the model's input clip."""
    return int(cfg.data.num_frames), int(cfg.data.img_size), int(cfg.data.img_size)


def test_multiview_scores_average_probabilities() -> None:
    class ByView(torch.nn.Module):
        # logits depend on the view: view 0 votes class 0 weakly, view 1 votes class 2 strongly
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, 0, 0, 0, 0]
            return torch.stack([2 * (v == 0).float(), torch.zeros_like(v), 6 * (v == 1).float()], 1)

    x = torch.zeros(2, 2, 3, 1, 1, 1)
    x[:, 1] = 1.0  # view index is stored in the pixels
    task = VideoClassification()
    sums = task.eval_batch(ByView(), (x, torch.tensor([2, 0])), None)
    p0 = torch.tensor([2.0, 0, 0]).softmax(0)
    p1 = torch.tensor([0.0, 0, 6]).softmax(0)
    mean = (p0 + p1) / 2
    assert mean.argmax() == 2
    assert float(sums["correct1"]) == 1.0 and sums["class_correct"].tolist() == [0.0, 0.0, 1.0]
    loss = -(mean[2].log() + mean[0].log())
    assert float(sums["loss_sum"]) == pytest.approx(float(loss), rel=1e-5)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.num_classes=10 but data.num_classes=12"):
        train(_cfg(tmp_path, "model.num_classes=10", "model.lm.variant=none"))
    with pytest.raises(ValueError, match="data.labels_json must be set"):
        train(_cfg(tmp_path, "data.name=ssv2", "model.lm.variant=none"))
    with pytest.raises(ValueError, match="data.name must be one of"):
        train(_cfg(tmp_path, "data.name=ucf", "model.lm.variant=none"))
    for recipe in ("ssv2_vit_s", "ssv2_vit_s_llama7b", "ssv2_vit_s_llama7b_layer15", "ssv2_vit_b",
                   "ssv2_vit_b_llama7b", "kinetics400_vit_s", "shapes_ablation", "shapes_baseline"):
        cfg = load_config(f"configs/video/{recipe}.yaml")
        assert cfg.task == "video" and cfg.data.hflip == (0.5 if "kinetics" in recipe else 0.0)
    assert load_config("configs/video/ssv2_vit_s_llama7b_layer15.yaml").model.lm.layers == [15]
