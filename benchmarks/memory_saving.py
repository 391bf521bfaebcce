"""Peak memory of the bf16 rows of `frozenlm bench` (ViT-S/16 + LLaMA-7B block, batch 8): `python benchmarks/memory_saving.py`."""
from frozenlm.bench.run import run_worker, step_configs
base = {"model": "vit_small_patch16_224", "img_size": 224, "lm": "llama-7b", "batch": 8, "steps": 2, "warmup": 1}
for name, over in step_configs("bf16", "cpu", False):
    if "fp32" in name or name == "frozenlm (sdpa)":
        continue
    r = run_worker({**base, **over, "kind": "step"})
    print(f"{name:55s} train {r.get('train_samples_per_s',0):.2f} peak {r.get('peak_mem_bytes',0)/2**30:.3f} GiB step {r.get('step_mem_bytes',0)/2**20:.0f} MiB", r.get("error",""), flush=True)
