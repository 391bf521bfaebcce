"""Config loading: _base_ merge, defaults, overrides, errors, save/reload."""
from __future__ import annotations

import pytest
import yaml

from frozenlm.config import DEFAULTS, Config, ConfigError, load_config, make_config


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def cfg_files(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "root.yaml", {"task": "image", "model": {"depth": 12, "lm": {"source": "a", "layers": [-1]}},
                                     "optim": {"lr": 1e-3}})
    _write(tmp_path / "mid.yaml", {"_base_": "root.yaml", "model": {"depth": 6}, "data": {"root": "x"}})
    _write(tmp_path / "sub" / "leaf.yaml", {"_base_": ["../mid.yaml"], "model": {"lm": {"source": "b"}}, "epochs": 3})
    return tmp_path


def test_base_merge_is_deep_and_relative(cfg_files):
    cfg = load_config(cfg_files / "sub" / "leaf.yaml")
    assert cfg.model.depth == 6                      # mid overrides root
    assert cfg.model.lm.source == "b"                # leaf overrides nested key...
    assert cfg.model.lm.layers == [-1]               # ...without dropping its siblings
    assert cfg.data.root == "x" and cfg.epochs == 3 and cfg.optim.lr == 1e-3
    assert cfg.name == "leaf" and "_base_" not in cfg


def test_defaults_fill_every_engine_key(cfg_files):
    cfg = load_config(cfg_files / "root.yaml")
    for key in DEFAULTS:
        assert key in cfg
    assert cfg.optim.weight_decay == DEFAULTS["optim"]["weight_decay"]  # merged under the file's optim
    assert cfg.optim.lr == 1e-3


def test_overrides_types_and_nesting(cfg_files):
    cfg = load_config(cfg_files / "root.yaml", ["optim.lr=2e-4", "model.lm.layers=[-2,-1]", "ema.eval=true",
                                                "batch_size=8", "model.lm.source=c", "optim.clip_grad=null"])
    assert cfg.optim.lr == pytest.approx(2e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.lm.layers == [-2, -1]
    assert cfg.ema.eval is True and cfg.batch_size == 8 and cfg.model.lm.source == "c"
    assert cfg.optim.clip_grad is None


def test_unknown_override_suggests_close_key(cfg_files):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*optim\.lr"):
        load_config(cfg_files / "root.yaml", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'model.nothere.x'"):
        load_config(cfg_files / "root.yaml", ["model.nothere.x=1"])


def test_plus_adds_keys(cfg_files):
    cfg = load_config(cfg_files / "root.yaml", ["+model.extra.flag=yes", "+newkey=3"])
    assert cfg.model.extra.flag is True and cfg.newkey == 3


def test_malformed_and_missing(cfg_files):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(cfg_files / "root.yaml", ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(cfg_files / "nope.yaml")
    _write(cfg_files / "bad_base.yaml", {"_base_": "missing_base.yaml"})
    with pytest.raises(FileNotFoundError, match="missing_base.yaml"):
        load_config(cfg_files / "bad_base.yaml")


def test_base_cycle_is_reported(tmp_path):
    _write(tmp_path / "a.yaml", {"_base_": "b.yaml"})
    _write(tmp_path / "b.yaml", {"_base_": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_no_code_execution(tmp_path):
    (tmp_path / "evil.yaml").write_text("x: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "evil.yaml")


def test_saved_config_reloads_identically(cfg_files, tmp_path):
    cfg = load_config(cfg_files / "sub" / "leaf.yaml", ["optim.lr=3e-4", "+model.extra=[1, 2]"])
    cfg.save(tmp_path / "out" / "config.yaml")
    again = load_config(tmp_path / "out" / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


def test_config_attribute_access():
    cfg = make_config({"task": "x", "model": {"a": {"b": 1}}})
    assert isinstance(cfg.model.a, Config) and cfg.model.a.b == 1
    cfg.model.a.c = {"d": 2}
    assert cfg.model.a.c.d == 2 and type(cfg.to_dict()["model"]["a"]["c"]) is dict
    with pytest.raises(AttributeError, match="nokey"):
        _ = cfg.nokey


def test_exponent_floats_without_dot(tmp_path):
    # Plain YAML 1.1 reads "5e-4" as a string; an LR silently becoming a string is a classic trap.
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 5e-4\n  min_lr: 1E-6\n")
    cfg = load_config(tmp_path / "c.yaml", ["optim.weight_decay=1e-2"])
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.weight_decay) == (5e-4, 1e-6, 1e-2)
