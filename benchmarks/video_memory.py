"""Peak CPU memory of one training step (forward + backward) of ViT-S + a LLaMA-7B-shaped block.

VideoMAE ViT-S (16 frames, 224 px, tubelet 2x16x16: 1568 tokens) with a frozen, randomly
initialised 4096-wide LLaMA block (32 heads, FFN 11008) after its last block, as in the paper's
SSv2 model. Each setting runs in a fresh process; the reported number is the peak resident-set
growth during the step (activations + gradients; the weights are loaded before the region).

    python benchmarks/video_memory.py [--clips 1] [--frozen-dtype float32|bfloat16]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's frozenlm, not an installed one

SETTINGS = {  # name: (ViT block checkpointing, LM block checkpointing)
    "none": (False, False),
    "vit": (True, False),
    "lm": (False, True),
    "vit+lm": (True, True),
}


def measure(vit_ckpt: bool, lm_ckpt: bool, clips: int, frozen_dtype: str | None) -> dict:
    """One forward+backward in this process; returns peak memory growth (bytes) and seconds."""
    import torch
    from frozenlm.bench.memory import PeakMemory
    from frozenlm.bench.worker import build_lm_layer
    from frozenlm.models import create_model
    torch.set_num_threads(1)
    lm = build_lm_layer({"lm": "llama-7b", "grad_checkpointing": lm_ckpt, "frozen_dtype": frozen_dtype}, 384)
    model = create_model("videomae_small_patch16_224", lm=lm, num_classes=174, grad_checkpointing=vit_ckpt).train()
    x = torch.randn(clips, 3, 16, 224, 224)
    y = torch.zeros(clips, dtype=torch.long)
    t = time.perf_counter()
    with PeakMemory("cpu") as pm:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return {"peak_delta_bytes": pm.delta, "seconds": time.perf_counter() - t,
            "tokens": model.patch_embed.num_patches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=1)
    p.add_argument("--frozen-dtype", default=None)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child mode
    a = p.parse_args()
    if a.one:
        print(json.dumps(measure(*SETTINGS[a.one], a.clips, a.frozen_dtype)))
        return
    print(f"| checkpointing | clips | tokens/clip | peak memory growth (GiB) | per clip (GiB) | step (s) |")
    print("|---|---|---|---|---|---|")
    for name in a.settings.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--clips", str(a.clips)]
        if a.frozen_dtype:
            cmd += ["--frozen-dtype", a.frozen_dtype]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"setting {name!r} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.splitlines()[-1])
        gib = r["peak_delta_bytes"] / 2**30
        print(f"| {name} | {a.clips} | {r['tokens']} | {gib:.2f} | {gib / a.clips:.2f} | {r['seconds']:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
