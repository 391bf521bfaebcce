"""`frozenlm bench`: synthetic checkpoints, the eager reference, memory probe and the CLI end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import frozenlm
from frozenlm.bench.memory import PeakMemory
from frozenlm.bench.synth import dir_bytes, hf_shapes, meta_shapes, write_hf_sharded, write_meta
from frozenlm.bench import reference
from frozenlm.bench.worker import build_lm_layer, measure_ckpt, measure_load, measure_step

SMALL = {"dim": 64, "n_layers": 3, "n_heads": 4, "ffn_dim": 256, "vocab": 100, "norm_eps": 1e-6}
ROOT = Path(__file__).resolve().parents[1]


def _nbytes(shapes, itemsize=2) -> int:
    return sum(itemsize * torch.Size(s).numel() for _, s in shapes)


def test_synthetic_checkpoints_are_real_formats(tmp_path):
    meta = write_meta(tmp_path / "meta", SMALL)
    hf = write_hf_sharded(tmp_path / "hf", SMALL, max_shard_bytes=60_000)
    shards = sorted(hf.glob("*.safetensors"))
    assert len(shards) > 2
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {n for n, _ in hf_shapes(SMALL)}
    assert sum(f.stat().st_size for f in shards) >= _nbytes(hf_shapes(SMALL))
    assert (meta / "consolidated.00.pth").stat().st_size >= _nbytes(meta_shapes(SMALL))
    assert dir_bytes(meta) >= _nbytes(meta_shapes(SMALL))
    for src in (meta, hf):
        stack = frozenlm.load_blocks(str(src), [2])
        assert stack.layer_indices == [2] and stack.cfg.ffn_dim == 256 and stack.cfg.n_heads == 4
    ref = reference.reference_load_layer(meta, 2)
    assert ref.feed_forward.w1.weight.shape == (256, 64)
    r = measure_load({"impl": "ours", "path": str(meta), "layer": 1, "dtype": "bfloat16"})
    assert r["layer_bytes"] == 2 * (4 * 64 * 64 + 3 * 64 * 256 + 2 * 64) and r["load_s"] > 0


def test_reference_sandwich_matches_lmlayer():
    lm = build_lm_layer({"lm": "smollm2-135m"}, 48)  # GQA: 9 query heads, 3 key/value heads
    ref = reference.reference_sandwich_like(lm)
    assert not any(p.requires_grad for p in ref.llama.parameters())
    x = torch.randn(2, 11, 48, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = lm(x), ref(x2)
    torch.testing.assert_close(y2, y, atol=2e-5, rtol=1e-4)
    y.sum().backward(), y2.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=2e-5, rtol=1e-4)


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu") as pm:
        t = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        del t
    assert pm.delta >= 60 * 1024 * 1024


def test_measure_step_block_and_vit(llama_ckpts):
    base = {"lm": str(llama_ckpts["hf"]), "batch": 2, "steps": 1, "warmup": 0}
    r = measure_step({**base, "kind": "step", "impl": "ours", "model": "block", "tokens": 8, "in_dim": 32,
                      "grad_checkpointing": True})
    assert r["tokens"] == 8 and r["train_samples_per_s"] > 0 and r["peak_mem_bytes"] > 0
    assert r["step_train_flops"] == r["lm_train_flops"] > 0  # no visual encoder in block mode
    v = measure_step({**base, "kind": "step", "impl": "reference", "model": "vit_tiny_patch16_224",
                      "img_size": 32})
    assert v["tokens"] == 5 and v["step_train_flops"] > v["lm_train_flops"] > 0


def test_checkpoint_holds_only_trainable_weights():
    r = measure_ckpt({"model": "vit_tiny_patch16_224", "img_size": 32, "lm": "smollm2-135m"})
    frozen = frozenlm.source_config("smollm2-135m").params_per_block() * 4
    assert r["reference_bytes"] - r["ours_model_bytes"] > 0.95 * frozen
    assert r["ours_dir_bytes"] > 2.5 * r["ours_model_bytes"]  # + AdamW's two moments


def test_bench_cli_end_to_end(tmp_path, llama_ckpts):
    out = tmp_path / "b.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "frozenlm.cli", "bench", "--model", "block", "--tokens", "8",
                        "--in-dim", "32", "--lm", str(llama_ckpts["hf"]), "--batch", "2", "--steps", "1",
                        "--warmup", "0", "--threads", "1", "--precision", "fp32", "--matmul-n", "256",
                        "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    res = json.loads(out.read_text())
    rows = {r["config"]: r for r in res["step"]}
    assert "reference fp32 (eager)" in rows and "frozenlm (sdpa)" in rows
    assert all("error" not in r for r in rows.values()), rows
    assert rows["reference fp32 (eager)"]["train_speedup_vs_ref"] == 1.0
    assert res["matmul_peak"]["tflops_per_s"] > 0
    assert "| frozenlm (sdpa) |" in p.stdout


def test_bench_cli_reports_bad_lm_clearly():
    p = subprocess.run([sys.executable, "-m", "frozenlm.cli", "bench", "--model", "block", "--lm", "/nope",
                        "--no-reference", "--steps", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 2 and "frozenlm bench: error:" in p.stderr and "/nope" in p.stderr
    assert "Traceback" not in p.stderr
