"""Config keys are checked everywhere they can come from (issue 16, items 3 and 11): YAML files and
their _base_ chains, overrides, plain dicts, saved configs; values of the wrong kind are named."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from frozenlm.config import ConfigError, load_config, make_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml"))


def _schema():
    from frozenlm.engine.task import task_schema
    return task_schema


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_unknown_key_in_a_recipe_file_is_refused_with_the_file_and_a_suggestion(tmp_path):
    base = REPO / "configs" / "image" / "fmnist_smollm2.yaml"
    cfg = _write(tmp_path, "typo.yaml", f"_base_: {base}\noptim:\n  lrr: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg, schema_for=_schema())
    msg = str(e.value)
    assert str(cfg) in msg and "optim.lrr" in msg and "did you mean: optim.lr" in msg


def test_unknown_key_in_a_base_file_names_that_file(tmp_path):
    base = _write(tmp_path, "base.yaml", f"_base_: {REPO / 'configs/image/fmnist_smollm2.yaml'}\n"
                                         "data:\n  subset_trian: 10\n")
    top = _write(tmp_path, "top.yaml", "_base_: base.yaml\nepochs: 1\n")
    with pytest.raises(ConfigError, match=r"base\.yaml.*\n  data\.subset_trian  \(did you mean: data\.subset_train"):
        load_config(top, schema_for=_schema())


def test_plain_dict_configs_are_checked_by_train(tmp_path):
    from frozenlm.engine import train
    tiny = ["max_steps=1", "data.subset_train=64", "data.subset_val=32", "batch_size=32", "progress=false",
            f"run_dir={tmp_path / 'run'}"]
    cfg = load_config(REPO / "configs/image/fmnist_smollm2.yaml", tiny)
    cfg.data.mixpu = 0.8  # a dict built in a notebook: no file to blame, the key is still refused
    with pytest.raises(ConfigError, match=r"data\.mixpu  \(did you mean: data\.mixup"):
        train(cfg)
    with pytest.raises(ConfigError, match=r"model\.lm\.varient"):
        train(load_config(REPO / "configs/pointcloud/shapes_baseline.yaml", ["+model.lm.varient=frozen", "max_steps=1", "progress=false",
                                                                             f"run_dir={tmp_path / 'pc'}"]))


def test_task_declared_keys_need_no_plus(tmp_path):
    # The video error message asks for data.train_list; the override used to be refused as unknown.
    cfg = load_config(REPO / "configs/video/shapes_baseline.yaml",
                      ["data.name=list", "data.train_list=/x/train.csv", "data.val_list=/x/val.csv"],
                      schema_for=_schema())
    assert cfg.data.train_list == "/x/train.csv"
    with pytest.raises(ConfigError, match=r"unknown config key 'data\.train_lst'.*data\.train_list"):
        load_config(REPO / "configs/video/shapes_baseline.yaml", ["data.train_lst=/x"], schema_for=_schema())


@pytest.mark.parametrize("override,message", [
    ("optim=5", r"optim must be a mapping"),
    ("optim.lr=abc", r"optim\.lr must be a number"),
    ("epochs=three", r"epochs must be a number"),
    ("progress=maybe", r"progress must be a boolean"),
    ("optim.betas=0.9", r"optim\.betas must be a list"),
    ("optim.lr.x=1", r"optim\.lr is 0\.0005, not a section"),
])
def test_values_of_the_wrong_kind_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({"task": "image"}, [override])


@pytest.mark.parametrize("layers,message", [
    ("abc", r"'abc' is not a layer index"), (1.5, r"1\.5 is not a layer index"),
    (True, r"True is not a layer index"), ([2, 2], r"selects layer 2 twice"), ([-1, 2], r"selects layer 2 twice"),
])
def test_bad_layer_specs_are_refused(llama_ckpts, layers, message):
    from frozenlm import CheckpointError, LMLayer
    with pytest.raises(CheckpointError, match=message):
        LMLayer(8, source=str(llama_ckpts["hf"]), layers=layers)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    cfg = REPO / "configs/image/fmnist_smollm2.yaml"
    for override, needle in (("optim=5", "optim must be a mapping"), ("optim.lrr=1", "optim.lr")):
        r = subprocess.run([sys.executable, "-m", "frozenlm.cli", "train", str(cfg), override],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_holds_only_keys_its_task_reads(path):
    if path.name.startswith("_"):
        pytest.skip("partial base file; checked through the recipes that use it")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every built-in task declares its keys
        load_config(path, schema_for=_schema())


def test_stale_keys_in_a_saved_config_warn_at_eval(tmp_path):
    # A checkpoint written before a key was retired still evaluates; the key is named, not silently dropped.
    import json
    import _engine_fixtures as fx
    from frozenlm.engine import evaluate, train
    from frozenlm.engine.checkpoint import latest_checkpoint
    run = tmp_path / "run"
    train(fx.blob_config(run, "max_steps=4"))
    meta_path = latest_checkpoint(run) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["optim"]["old_knob"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"does not read .*optim\.old_knob"):
        evaluate(run)
