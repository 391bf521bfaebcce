"""`frozenlm eval` accepts any file inside a checkpoint and refuses other files clearly (issue 16, item 9)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import _engine_fixtures as fx
from frozenlm.engine import train
from frozenlm.engine.checkpoint import CheckpointError, latest_checkpoint, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("evalpaths")
    train(fx.blob_config(run_dir, "max_steps=4"))
    return run_dir


def test_any_file_inside_a_checkpoint_resolves_to_its_step_dir(run):
    step = latest_checkpoint(run)
    for name in ("model.safetensors", "meta.json", "train_state.pt"):
        assert resolve_checkpoint(step / name) == step
    assert resolve_checkpoint(run / "checkpoints" / "latest") == step


@pytest.mark.parametrize("bad", ["README.md", "pyproject.toml"])
def test_other_files_are_refused_with_what_to_give(bad):
    with pytest.raises(CheckpointError, match="is not a checkpoint: give a run dir"):
        resolve_checkpoint(REPO / bad)


def test_cli_eval_on_a_weights_file_and_on_a_stray_file(run):
    script = ("import sys; sys.path.insert(0, %r); import _engine_fixtures; from frozenlm.cli import main; main(sys.argv[1:])"
              % str(Path(__file__).parent))
    ok = subprocess.run([sys.executable, "-c", script, "eval", str(latest_checkpoint(run) / "model.safetensors")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "top1=" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-c", script, "eval", str(REPO / "README.md")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "is not a checkpoint" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    pointer = run / "checkpoints" / "bogus"
    pointer.write_bytes(b"\xff\xfe not text")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        resolve_checkpoint(pointer)
