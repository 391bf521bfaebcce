"""`frozenlm bench`: measure our fast path against the eager reference, print a table, write JSON.

Every measurement runs in its own process (frozenlm.bench.worker), so peak memory is that
configuration's alone and one run cannot warm caches or allocators for the next.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ..engine.precision import cpu_has_bf16, resolve_precision

GiB, MiB = 1024 ** 3, 1024 ** 2


def device_name(device: str) -> str:
    """GPU name, or the CPU model name from /proc/cpuinfo."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; errors come back as {'error': message}."""
    with tempfile.TemporaryDirectory() as d:
        sp, out = Path(d) / "spec.json", Path(d) / "out.json"
        sp.write_text(json.dumps(spec))
        p = subprocess.run([sys.executable, "-m", "frozenlm.bench.worker", str(sp), str(out)],
                           capture_output=True, text=True)
        if p.returncode != 0 or not out.exists():
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
            return {"error": tail[0]}
        return json.loads(out.read_text())


def step_configs(precision: str, device: str, compile_: bool, authors: str | None = None,
                 model: str = "vit_small_patch16_224") -> list[tuple[str, dict[str, Any]]]:
    """(name, spec overrides) of the step configurations compared; the authors' model first when
    ``authors`` (a checkout of their repository) is given."""
    bf16_ok = device.startswith("cuda") or cpu_has_bf16()
    cfgs: list[tuple[str, dict[str, Any]]] = []
    if authors:
        from .authors import authors_model_name, authors_models_dir
        authors_models_dir(authors)  # a wrong DIR or model fails here, before any worker starts
        theirs = f"authors' {authors_model_name(model)}"
        cfgs.append((f"{theirs} fp32", {"impl": "authors", "authors_dir": str(authors), "precision": "fp32"}))
        if bf16_ok:
            cfgs.append((f"{theirs} bf16 autocast", {"impl": "authors", "authors_dir": str(authors), "precision": "bf16"}))
    cfgs.append(("reference fp32 (eager)", {"impl": "reference", "precision": "fp32"}))
    if bf16_ok:
        cfgs.append(("reference bf16 autocast", {"impl": "reference", "precision": "bf16"}))
    cfgs += [("frozenlm (sdpa)", {"impl": "ours", "precision": precision}),
             # bf16 storage without recomputation: autocast then casts no frozen weight in forward or backward
             ("frozenlm (sdpa + bf16 weights)", {"impl": "ours", "precision": precision, "frozen_dtype": "bfloat16"}),
             ("frozenlm (sdpa + bf16 weights + LM ckpt)", {"impl": "ours", "precision": precision,
                                                           "grad_checkpointing": True, "frozen_dtype": "bfloat16"})]
    if model != "block":
        # The LM block sits at the top of the ViT, so its recomputation starts as soon as backward does and
        # frees nothing at the peak; recomputing the cheap ViT blocks (5% of a step's FLOPs) does.
        lean = {"impl": "ours", "precision": precision, "frozen_dtype": "bfloat16", "vit_checkpointing": True}
        cfgs += [("frozenlm (sdpa + bf16 weights + ViT ckpt)", lean),
                 ("frozenlm (sdpa + bf16 weights + ViT and LM ckpt)", {**lean, "grad_checkpointing": True})]
    if compile_:
        cfgs.append(("frozenlm (sdpa + compile)", {"impl": "ours", "precision": precision, "compile": True}))
    return cfgs


def bench_steps(a: argparse.Namespace, base: dict[str, Any], peak: float) -> list[dict[str, Any]]:
    """Training/inference throughput, FLOP/s and peak memory of every configuration."""
    rows = []
    configs = step_configs(a.precision, a.device, a.compile, getattr(a, "authors", None), a.model)
    for name, over in tqdm(configs, desc="step configs", leave=False):
        r = {"config": name, "precision": over["precision"], **run_worker({**base, **over, "kind": "step"})}
        if "error" not in r and peak:
            r["block_fwd_pct_of_peak"] = 100 * r["block_fwd_tflops_per_s"] / peak
        rows.append(r)
    ref = next((r for r in rows if r["config"].startswith("reference fp32") and "error" not in r), None)
    theirs = {r["precision"]: r for r in rows if r["config"].startswith("authors'") and "error" not in r}
    for r in rows:
        if ref and "error" not in r:
            r["train_speedup_vs_ref"] = r["train_samples_per_s"] / ref["train_samples_per_s"]
            r["mem_ratio_vs_ref"] = r["peak_mem_bytes"] / ref["peak_mem_bytes"]
        # against the authors' run at the same precision (bf16 rows vs their bf16 autocast run)
        same = theirs.get(r["precision"])
        if same and "error" not in r:
            r["train_x_authors"] = r["train_samples_per_s"] / same["train_samples_per_s"]
            r["infer_x_authors"] = r["infer_samples_per_s"] / same["infer_samples_per_s"]
    return rows


def bench_load(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Time/peak RSS to build one layer from a LLaMA-7B-shaped checkpoint, ours vs whole-file load."""
    from .synth import dir_bytes, write_hf_sharded, write_meta
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        if a.load_dir:
            meta, hf = Path(a.load_dir), None
        else:
            print("writing a synthetic LLaMA-7B-shaped Meta checkpoint (13.5 GB) and HF shards ...", file=sys.stderr)
            meta, hf = write_meta(Path(d) / "meta"), write_hf_sharded(Path(d) / "hf")
        rows = []
        jobs = [("frozenlm, Meta .pth, fp32", {"impl": "ours", "path": str(meta)}),
                ("frozenlm, Meta .pth, bf16", {"impl": "ours", "path": str(meta), "dtype": "bfloat16"})]
        if hf is not None:
            jobs += [("frozenlm, HF sharded safetensors, fp32", {"impl": "ours", "path": str(hf)}),
                     ("frozenlm, HF sharded safetensors, bf16", {"impl": "ours", "path": str(hf), "dtype": "bfloat16"})]
        if not a.no_reference:
            jobs.append(("reference: whole-file torch.load", {"impl": "reference", "path": str(meta)}))
        for name, over in tqdm(jobs, desc="load", leave=False):
            ckpt = meta if "Meta" in name or "reference" in name else hf
            r = run_worker({"kind": "load", "layer": a.layer, **over})
            rows.append({"config": name, "checkpoint_bytes": dir_bytes(ckpt), **r})
        return rows


def _fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """Markdown table; cols = (key, header, format: 'bytes' | python format spec)."""
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for k, _, f in cols:
            v = r.get(k)
            if "error" in r and k not in ("config",):
                cells.append(f"error: {r['error']}" if k == cols[1][0] else "")
            elif v is None:
                cells.append("-")
            elif f == "bytes":
                cells.append(_fmt_bytes(v))
            else:
                cells.append(format(v, f))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STEP_COLS = [("config", "configuration", "s"), ("train_samples_per_s", "train samples/s", ".2f"),
             ("train_speedup_vs_ref", "x ref", ".2f"), ("train_x_authors", "train x authors", ".2f"),
             ("infer_samples_per_s", "infer samples/s", ".2f"), ("infer_x_authors", "infer x authors", ".2f"),
             ("train_tflops_per_s", "step TFLOP/s", ".3f"), ("block_fwd_tflops_per_s", "block fwd TFLOP/s", ".3f"),
             ("block_fwd_pct_of_peak", "% of matmul peak", ".0f"), ("peak_mem_bytes", "peak mem", "bytes"),
             ("mem_ratio_vs_ref", "mem x ref", ".2f"), ("step_mem_bytes", "step mem", "bytes")]
LOAD_COLS = [("config", "configuration", "s"), ("load_s", "build time (s)", ".2f"),
             ("peak_rss_growth_bytes", "peak RSS growth", "bytes"), ("layer_bytes", "layer in memory", "bytes"),
             ("checkpoint_bytes", "checkpoint on disk", "bytes")]


def run_bench(a: argparse.Namespace) -> dict[str, Any]:
    """Run the measurements `frozenlm bench` asks for (``a``: its parsed arguments); returns every number."""
    from .worker import lm_config
    lm_config(a.lm)  # a bad --lm fails here, in one line, before any worker starts
    a.precision = resolve_precision(a.precision, torch.device(a.device))
    env = {"device": device_name(a.device),
           "torch": torch.__version__, "threads": a.threads or torch.get_num_threads(),
           "cpu_native_bf16": cpu_has_bf16(), "precision": a.precision, "cpu_count": os.cpu_count()}
    result: dict[str, Any] = {"env": env, "args": vars(a)}
    peak = 0.0
    if not a.no_step:
        mm = run_worker({"kind": "matmul", "device": a.device, "threads": a.threads,
                         "dtype": "bfloat16" if a.precision == "bf16" else "float32", "n": a.matmul_n})
        peak = mm.get("tflops_per_s", 0.0)
        result["matmul_peak"] = mm
        print(f"measured {mm.get('dtype')} matmul peak: {peak:.3f} TFLOP/s (M,K,N={mm.get('shape')}) on {env['device']}")
        base = {"model": a.model, "img_size": a.img_size, "tokens": a.tokens, "in_dim": a.in_dim, "lm": a.lm,
                "batch": a.batch, "steps": a.steps, "warmup": a.warmup, "device": a.device, "threads": a.threads}
        rows = bench_steps(a, base, peak)
        if a.no_reference:
            rows = [r for r in rows if not r["config"].startswith("reference")]
        result["step"] = rows
        what = f"{a.model} @ {a.img_size}px" if a.model != "block" else f"LM sandwich on {a.tokens} tokens"
        print(f"\n{what} + {a.lm} block, batch {a.batch}, {a.device}\n" + table(rows, STEP_COLS))
    if a.load:
        result["load"] = bench_load(a)
        print(f"\nbuilding layer {a.layer} of a LLaMA-7B-shaped checkpoint\n" + table(result["load"], LOAD_COLS))
    if a.ckpt:
        c = run_worker({"kind": "ckpt", "model": a.model if a.model != "block" else "vit_small_patch16_224",
                        "img_size": a.img_size, "lm": a.lm})
        result["ckpt"] = c
        if "error" in c:
            print(f"\ncheckpoint size: error: {c['error']}")
        else:
            print(f"\ncheckpoint of a trained model: frozenlm {_fmt_bytes(c['ours_model_bytes'])} of weights "
                  f"({_fmt_bytes(c['ours_dir_bytes'])} with optimizer state) vs torch.save(state_dict) "
                  f"{_fmt_bytes(c['reference_bytes'])}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result
