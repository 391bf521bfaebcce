#!/usr/bin/env bash
# The measurements quoted in docs/performance.md. Run on an otherwise idle machine:
#   bash benchmarks/run_suite.sh [OUT_DIR]        (CPU: ~15 min on 2 cores; needs ~14 GB free in /tmp)
# On a GPU machine the same commands pick CUDA and bf16 autocast automatically.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
# ViT-S/16 at 224 px + a LLaMA-7B-shaped block (the paper's main image setting)
$PY -m frozenlm.cli bench --model vit_small_patch16_224 --img-size 224 --lm llama-7b --batch "${BATCH:-4}" \
    --steps 2 --compile --json "$OUT/vit_s_llama7b.json" | tee "$OUT/vit_s_llama7b.md"
# The LM sandwich alone on a 1568-token video clip (VideoMAE ViT-S, 16 frames, 224 px)
$PY -m frozenlm.cli bench --model block --tokens 1568 --in-dim 384 --lm llama-7b --batch 1 --steps 2 \
    --json "$OUT/video_block_llama7b.json" | tee "$OUT/video_block_llama7b.md"
# Where bf16 is native: batch 8 (docs/performance.md, "Where bf16 is native")
$PY -m frozenlm.cli bench --model vit_small_patch16_224 --img-size 224 --lm llama-7b --batch 8 --steps 3 \
    --json "$OUT/vits_llama7b_b8.json" | tee "$OUT/vits_llama7b_b8.md"
# The offline default (make demo): mini ViT on Fashion-MNIST + SmolLM2's last block
$PY -m frozenlm.cli bench --model vit_mini_patch14_28 --img-size 28 --lm smollm2-135m --batch 128 --steps 3 \
    --json "$OUT/demo.json" | tee "$OUT/demo.md"
# Building one layer from 13.5 GB checkpoints, and the size of a trained ViT-S + LLaMA-7B checkpoint
$PY -m frozenlm.cli bench --no-step --load --ckpt --tmp "${TMPDIR:-/tmp}" --json "$OUT/load.json" | tee "$OUT/load.md"
