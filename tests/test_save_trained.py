"""`frozenlm.save_trained` / `frozenlm.load_trained` (issue 19, part 3): only what was trained is written.

The directory follows huggingface_hub's `save_pretrained` names (model.safetensors, config.json) plus
frozenlm's meta.json (frozen sources by digest, splice placements). Frozen LM blocks come back from
their source and are verified; a different block, another placement or other weights are refused.
The frozen block is all-MiniLM-L6-v2 (catalog `minilm-l6`).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import frozenlm
from frozenlm.config import load_config
from frozenlm.engine import train
from frozenlm.engine.task import get_task, task_schema
from frozenlm.errors import CheckpointError
from frozenlm.layer import frozen_param_names

REPO = Path(__file__).resolve().parents[1]
SRC = "minilm-l6"
TINY = ["model.name=vit_mini_patch7_28", f"model.lm.source={SRC}"]


def _spliced(layers: list[int] | None = None, at: str = "stages.1") -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model("convnext_atto", pretrained=False, num_classes=4)
    return frozenlm.splice(m, at=at, source=SRC, **({"layers": layers} if layers else {}))


def _perturb(model: torch.nn.Module) -> None:
    """Make every saved tensor differ from a fresh build's (so a load that skips one is caught)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)


def test_spliced_timm_round_trip(tmp_path: Path) -> None:
    m = _spliced()
    _perturb(m)
    x = torch.randn(2, 3, 64, 64)
    ref = m.eval()(x)
    out = frozenlm.save_trained(m, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "model.safetensors"]
    keys = set(load_file(str(out / "model.safetensors")))
    frozen = frozen_param_names(m)
    assert frozen and not keys & frozen and not any(k.startswith("lm_layer.blocks.") for k in keys)
    assert keys == set(m.state_dict()) - frozen
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splices"] == {"lm_layer": {"at": "stages.1", "layout": "auto", "select": None, "dim": 80}}
    assert meta["frozen_sources"]["lm_layer"]["digest"] == m.lm_layer.frozen_digest()
    loaded, cfg = frozenlm.load_trained(out, model=_spliced())
    assert cfg is None
    assert torch.equal(loaded(x), ref)
    with pytest.raises(CheckpointError, match="cannot rebuild"):  # no config with a task: a model= is needed
        frozenlm.load_trained(out)


def test_different_frozen_block_or_placement_is_refused(tmp_path: Path) -> None:
    out = frozenlm.save_trained(_spliced(), tmp_path / "saved")
    with pytest.raises(CheckpointError, match=r"frozen weights mismatch(.|\n)*lm_layer: digest differs"):
        frozenlm.load_trained(out, model=_spliced(layers=[0]))  # MiniLM's first layer, not its last
    with pytest.raises(CheckpointError, match=r"spliced LM layers differ(.|\n)*stages\.2"):
        frozenlm.load_trained(out, model=_spliced(at="stages.2"))  # same keys and shapes, another place
    with pytest.raises(CheckpointError, match=r"frozen weights mismatch(.|\n)*in the checkpoint but not in the model"):
        frozenlm.load_trained(out, model=frozenlm.splice(
            timm.create_model("convnext_atto", num_classes=4, pretrained=False), at="stages.1", source=SRC,
            variant="mlp"))  # no frozen block at all
    with pytest.raises(CheckpointError, match=r"shape mismatch(.|\n)*head\.fc\.weight"):
        frozenlm.load_trained(out, model=frozenlm.splice(
            timm.create_model("convnext_atto", num_classes=5, pretrained=False), at="stages.1", source=SRC))


def test_preset_round_trip_rebuilds_from_its_config(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/image/fmnist_smollm2.yaml", TINY, schema_for=task_schema)
    model = get_task("image").build_model(cfg)
    _perturb(model)
    x = torch.randn(2, 1, 28, 28)
    ref = model.eval()(x)
    out = frozenlm.save_trained(model, tmp_path / "preset", config=cfg)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["model"]["name"] == "vit_mini_patch7_28"
    loaded, loaded_cfg = frozenlm.load_trained(out)
    assert loaded_cfg.model.lm.source == SRC and not loaded.training
    assert torch.equal(loaded(x), ref)
    # a model built another way from the same config loads too; saving again replaces the directory
    again, _ = frozenlm.load_trained(out, model=get_task("image").build_model(cfg))
    assert torch.equal(again(x), ref)
    frozenlm.save_trained(again, out, config=cfg)
    with pytest.raises(CheckpointError, match="overrides only apply"):
        frozenlm.load_trained(out, ["seed=1"], model=again)


def test_refuses_to_overwrite_other_directories_and_bad_configs(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    m = _spliced()
    with pytest.raises(CheckpointError, match="not a save_trained directory"):
        frozenlm.save_trained(m, other)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="does not read: data.nmae"):
        frozenlm.save_trained(m, tmp_path / "x", config={"task": "image", "seed": 1, "data": {"nmae": "x"}})
    with pytest.raises(CheckpointError, match="JSON"):
        frozenlm.save_trained(m, tmp_path / "y", config={"a": object()})
    # a config without a task is stored and handed back as it was
    out = frozenlm.save_trained(m, tmp_path / "z", config={"backbone": "convnext_atto", "at": "stages.1"})
    _, cfg = frozenlm.load_trained(out, model=_spliced())
    assert dict(cfg) == {"backbone": "convnext_atto", "at": "stages.1"}


def test_engine_run_of_a_frozen_timm_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`timm:` + model.lm.at + model.freeze_backbone through the unchanged engine: the checkpoint keeps the
    frozen backbone's weights (equal to the seeded build), the head has trained, and load_trained rebuilds it."""
    over = ["model.name=timm:resnet18", "model.lm.at=layer3", f"model.lm.source={SRC}", "model.freeze_backbone=true",
            "data.subset_train=16", "batch_size=16", "epochs=2", "eval_every=null", "num_workers=0",
            "precision=fp32", "progress=false", f"run_dir={tmp_path / 'run'}", "optim.warmup_epochs=0"]
    cfg = load_config(REPO / "configs/image/fmnist_smollm2.yaml", over, schema_for=task_schema)
    train(cfg)
    model, _ = frozenlm.load_trained(tmp_path / "run")
    torch.manual_seed(cfg.seed)
    fresh = get_task("image").build_model(cfg)
    assert torch.equal(model.conv1.weight, fresh.conv1.weight)
    assert torch.equal(model.layer2[0].bn1.running_mean, fresh.layer2[0].bn1.running_mean)
    assert not torch.equal(model.fc.weight, fresh.fc.weight)
    from frozenlm.engine import latest_checkpoint
    keys = set(load_file(str(latest_checkpoint(tmp_path / "run") / "model.safetensors")))
    assert "conv1.weight" in keys and not any(k.startswith("lm_layer.blocks.") for k in keys)


def test_readme_snippet_runs(tmp_path: Path) -> None:
    """The README's "Use it in your own model" code block, run as written (in a scratch folder)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use it in your own model", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                              "HOME": str(Path.home())})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "my_convnext" / "model.safetensors").is_file()
