"""`frozenlm sweep`: layer / block-count / LM choices, the runs it trains, its table and plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from frozenlm.cli import main_sweep, parse
from frozenlm.sweep import block_choices, layer_choices, plan, sweep

TINY = ["data.subset_train=96", "data.subset_val=48", "batch_size=32", "epochs=1", "progress=false", "eval_every=0"]


@pytest.mark.parametrize("spec,expected", [
    ("all", list(range(30))),
    ("0:30:3", [0, 3, 6, 9, 12, 15, 18, 21, 24, 27]),
    ("-3:", [27, 28, 29]),
    ("::10", [0, 10, 20]),
    ("3,7,-1", [3, 7, 29]),
])
def test_layer_choices(spec: str, expected: list[int]) -> None:
    assert layer_choices(spec, 30) == expected


@pytest.mark.parametrize("spec,needle", [
    ("30", "out of range"), ("3,3", "twice"), ("5:5", "selects no layer"), ("a:b", "integers"),
    ("1:2:3:4", "START:STOP"), ("x", "comma list"), ("0:40:3", "must lie in -30..30"), ("::0", "must not be 0"),
])
def test_layer_choices_refuses_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        layer_choices(spec, 30)


def test_block_choices() -> None:
    assert block_choices([1, 2, 4], 30) == {1: [29], 2: [28, 29], 4: [26, 27, 28, 29]}
    assert block_choices([1, 2, 4], 30, "spread") == {1: [29], 2: [0, 29], 4: [0, 10, 19, 29]}
    with pytest.raises(ValueError, match="between 1 and"):
        block_choices([31], 30)
    with pytest.raises(ValueError, match="placement"):
        block_choices([2], 30, "middle")


def test_plan_reads_the_layer_count_of_the_configs_source() -> None:
    cfg = "configs/image/fmnist_smollm2.yaml"  # SmolLM2-135M: 30 layers
    assert plan(cfg, layers="0:30:3")[:2] == ("layers", [0, 3, 6, 9, 12, 15, 18, 21, 24, 27])
    assert plan(cfg, ["model.lm.source=minilm-l6"], layers="all")[1] == list(range(6))
    assert plan(cfg, blocks="1,2")[2] == {1: [29], 2: [28, 29]}
    assert plan(cfg, sources="smollm2-135m,gemma3-270m")[:2] == ("sources", ["smollm2-135m", "gemma3-270m"])
    with pytest.raises(ValueError, match="exactly one"):
        plan(cfg, layers="all", blocks="1")
    with pytest.raises(ValueError, match="exactly one"):
        plan(cfg)


def test_cli_parses_sweep_flags() -> None:
    _, a = parse(["sweep", "configs/image/fmnist_ablation.yaml", "--layers", "0:30:3", "--seeds", "2", "epochs=1"])
    assert (a.layers, a.seeds, a.overrides, a.controls) == ("0:30:3", 2, ["epochs=1"], "none,random")


def test_layer_sweep_end_to_end(tmp_path: Path) -> None:
    res = sweep("configs/image/fmnist_smollm2.yaml", "layers", [0, 29], seeds=1, overrides=TINY,
                controls=["none"], out=tmp_path)
    # Each run froze exactly the layer it is labelled with (the checkpoint's frozen-source record).
    for layer in (0, 29):
        meta = json.loads(next((tmp_path / f"frozen_{layer}_s0" / "checkpoints").glob("step_*/meta.json")).read_text())
        (src,) = meta["frozen_sources"].values()
        assert src["layers"] == [layer]
    none_meta = json.loads(next((tmp_path / "none_s0" / "checkpoints").glob("step_*/meta.json")).read_text())
    assert none_meta["frozen_sources"] == {}
    assert [p["choice"] for p in res["points"]] == [0, 29] and [b["control"] for b in res["bands"]] == ["none"]
    rows = list(csv.DictReader(res["csv"].open()))
    assert sorted(r["run"] for r in rows) == ["frozen_0_s0", "frozen_29_s0", "none_s0"]
    for r in rows:
        final = json.loads((tmp_path / r["run"] / "metrics.json").read_text())["final"]
        assert float(r["top1"]) == pytest.approx(final["top1"])
    md = res["md"].read_text()
    top1 = {r["run"]: float(r["top1"]) for r in rows}
    assert f"| 0 | 1 | {top1['frozen_0_s0']:.2f} ± 0.00 |" in md
    assert f"| baseline (no LM block) | 1 | {top1['none_s0']:.2f} ± 0.00 |" in md
    assert res["png"].read_bytes()[:4] == b"\x89PNG"
    # A finished sweep point is reused, not retrained (the runs are `frozenlm ablate` grid points).
    mtime = (tmp_path / "frozen_0_s0" / "metrics.json").stat().st_mtime
    sweep("configs/image/fmnist_smollm2.yaml", "layers", [0], seeds=1, overrides=TINY, controls=[], out=tmp_path)
    assert (tmp_path / "frozen_0_s0" / "metrics.json").stat().st_mtime == mtime


def test_block_sweep_via_cli(tmp_path: Path) -> None:
    res = main_sweep(["configs/image/fmnist_smollm2.yaml", "--blocks", "1,2", "--seeds", "1", "--controls", "",
                      "--out", str(tmp_path), *TINY])
    assert [(p["choice"], p["layers"]) for p in res["points"]] == [(1, "[29]"), (2, "[28,29]")]
    meta = json.loads(next((tmp_path / "frozen_28-29_s0" / "checkpoints").glob("step_*/meta.json")).read_text())
    (src,) = meta["frozen_sources"].values()
    assert src["layers"] == [28, 29]
    assert "| 2 [28,29] | 1 |" in res["md"].read_text()
