"""CLI front end and the ablation runner."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from frozenlm.ablate import grid, run_ablation, summarize, write_outputs


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "frozenlm.cli", *args], capture_output=True, text=True, timeout=300)


def test_inspect_reads_architecture_and_one_layer() -> None:
    r = _cli("inspect", "smollm2-135m", "--layer", "-1", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["layers"], info["dim"], info["heads"], info["kv_heads"], info["ffn_dim"]) == (30, 576, 9, 3, 1536)
    names = {t["name"] for t in info["tensors"]}
    assert "blk.29.attn_q.weight" in names and all(n.startswith("blk.29.") for n in names)
    assert {t["dtype"] for t in info["tensors"]} >= {"Q4_1", "F32"}


@pytest.mark.parametrize("args,needle", [
    (("inspect", "/does/not/exist"), "neither a catalog name"),
    (("inspect", "smollm2-135m", "--layer", "30"), "out of range"),
    (("train", "/does/not/exist.yaml"), "exist.yaml"),
    (("train", "configs/image/fmnist_smollm2.yaml", "optim.lrr=1"), "optim.lr"),
    (("bogus",), "unknown command"),
])
def test_bad_input_is_one_clear_line(args: tuple[str, ...], needle: str) -> None:
    r = _cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_grid_and_summary(tmp_path: Path) -> None:
    runs = grid({"variants": ["none", "frozen"], "positions": ["tail", "head"]}, seeds=[0, 1])
    assert len(runs) == 8
    assert runs[0]["overrides"] == ["model.lm.variant=none", "model.position=tail", "seed=0"]
    assert len({r["name"] for r in runs}) == 8
    rows = [{"group": {"variants": v}, "seed": s, "name": f"{v}{s}", "top1": acc}
            for v, s, acc in [("none", 0, 80.0), ("none", 1, 82.0), ("frozen", 0, 81.0), ("frozen", 1, 81.0)]]
    summ = {s["variants"]: s for s in summarize(rows, "top1")}
    assert summ["none"]["mean"] == pytest.approx(81.0) and summ["none"]["std"] == pytest.approx(2 ** 0.5)
    assert summ["frozen"]["std"] == 0.0
    paths = write_outputs(tmp_path, rows, "top1", "t")
    assert "| none | 2 | 81.00 ± 1.41 |" in paths["md"].read_text()
    assert len(list(csv.reader(paths["csv"].open()))) == 5
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    rows[0]["color"], rows[1]["color"], rows[2]["color"] = 50.0, 70.0, 90.0  # frozen_s1 lacks it
    md = write_outputs(tmp_path, rows, "top1", "t", also=["color", "shape"])["md"].read_text()
    assert "| variants | seeds | top1 (mean ± std) | color | shape |" in md
    assert "| none | 2 | 81.00 ± 1.41 | 60.00 ± 14.14 | - |" in md and "| frozen | 2 | 81.00 ± 0.00 | 90.00 ± 0.00 | - |" in md


def test_run_ablation_end_to_end(tmp_path: Path) -> None:
    over = ["data.subset_train=128", "data.subset_val=64", "batch_size=32", "epochs=1", "progress=false",
            "eval_every=0"]
    rows = run_ablation("configs/image/fmnist_smollm2.yaml", {"variants": ["none", "mlp"]}, [0], over, tmp_path)
    assert [r["group"]["variants"] for r in rows] == ["none", "mlp"]
    assert all(0.0 <= r["top1"] <= 100.0 for r in rows)
    cfg = (tmp_path / "mlp_s0" / "config.yaml").read_text()
    assert "variant: mlp" in cfg
    # Finished runs are not trained again: an interrupted ablation resumes where it stopped.
    mtime = (tmp_path / "none_s0" / "metrics.json").stat().st_mtime
    run_ablation("configs/image/fmnist_smollm2.yaml", {"variants": ["none"]}, [0], over, tmp_path)
    assert (tmp_path / "none_s0" / "metrics.json").stat().st_mtime == mtime


def test_run_ablation_parallel_jobs_match_sequential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    over = ["data.subset_train=128", "data.subset_val=64", "batch_size=32", "epochs=1", "progress=false",
            "eval_every=0"]
    axes = {"variants": ["none", "mlp"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = run_ablation("configs/image/fmnist_smollm2.yaml", axes, [0], over, tmp_path / "seq")
    finally:
        torch.set_num_threads(threads)
    par = run_ablation("configs/image/fmnist_smollm2.yaml", axes, [0], over, tmp_path / "par", jobs=2)
    assert [r["name"] for r in par] == ["none_s0", "mlp_s0"]
    for s, p in zip(seq, par):
        assert p["loss"] == pytest.approx(s["loss"], rel=1e-4)  # same seeds, same data: the same runs
        assert (tmp_path / "par" / p["name"] / "train.log").stat().st_size > 0


def test_run_ablation_parallel_failure_names_the_run(tmp_path: Path) -> None:
    over = ["data.name=imagenet", f"data.root={tmp_path / 'missing'}", "epochs=1", "progress=false"]
    with pytest.raises(RuntimeError, match=r"none_s0 \(see .*train\.log\)"):
        run_ablation("configs/image/fmnist_smollm2.yaml", {"variants": ["none"]}, [0], over, tmp_path, jobs=2)


def test_train_curves_are_read_and_plotted(tmp_path: Path) -> None:
    from frozenlm.ablate import plot_curves, read_train_curve
    recs = {"a_s0": [(10, 2.0), (20, 1.5), (20, 1.4), (30, 1.0)], "a_s1": [(10, 3.0), (20, 2.0), (30, 1.2)]}
    for name, pts in recs.items():
        (tmp_path / name).mkdir()
        lines = [json.dumps({"kind": "train", "step": s, "loss": v}) for s, v in pts]
        lines.insert(1, json.dumps({"kind": "eval", "step": 10, "loss": 9.0}))  # eval records are not train loss
        (tmp_path / name / "log.jsonl").write_text("\n".join(lines) + "\n")
    # A resumed run re-logs step 20: the later record counts, once.
    assert read_train_curve(tmp_path / "a_s0") == ([10, 20, 30], [2.0, 1.4, 1.0])
    assert read_train_curve(tmp_path / "missing") == ([], [])
    rows = [{"group": {"variants": "a"}, "seed": i, "name": f"a_s{i}"} for i in (0, 1)]
    path = plot_curves(tmp_path, rows, smooth=2)
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert plot_curves(tmp_path, [{"group": {"variants": "b"}, "seed": 0, "name": "b_s0"}]) is None
