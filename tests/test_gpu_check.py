"""benchmarks/gpu_check.sh stays ready on CPU: its train check and its summary run here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from frozenlm.engine.precision import resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def test_summary_reports_mfu_against_the_datasheet_peak(tmp_path: Path) -> None:
    bench = {"env": {"device": "NVIDIA H200"}, "matmul_peak": {"tflops_per_s": 790.0},
             "step": [{"config": "frozenlm (sdpa)", "train_samples_per_s": 900.0, "infer_samples_per_s": 2500.0,
                       "train_tflops_per_s": 98.94, "block_fwd_pct_of_peak": 71.0, "peak_mem_bytes": 3 * 2**30},
                      {"config": "reference fp32 (eager)", "error": "CUDA out of memory"}]}
    (tmp_path / "bench_x.json").write_text(json.dumps(bench))
    (tmp_path / "train_check.json").write_text(json.dumps(
        {"loss_first_fifth": 2.5, "loss_last_fifth": 1.2, "loss_fell": True, "precision": "bf16", "seconds": 31}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_summary.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "| frozenlm (sdpa) | 900.00 | 2500.00 | 98.9 | 10.0% | 71% | 3.00 GiB |" in out
    assert "| reference fp32 (eager) | error: CUDA out of memory |" in out
    assert "loss 2.500 -> 1.200 (fell), precision bf16" in out


def test_train_check_runs_through_the_engine_and_records_precision(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_train_check.py"), str(tmp_path), "--device", "cpu",
                        "--steps", "4", "data.train_per_class=4", "data.test_per_class=1", "log_every=1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    report = json.loads((tmp_path / "train_check.json").read_text())
    assert report["steps"] == 4 and report["precision"] == resolve_precision("auto", torch.device("cpu"))
    assert p.returncode == (0 if report["loss_fell"] and report["bf16_chosen"] else 1)
    logged = [json.loads(line) for line in (tmp_path / "train_run" / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged if r["kind"] == "train") == 4
