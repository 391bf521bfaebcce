#!/usr/bin/env bash
# One short GPU check (about 5 minutes on one H100/H200): everything lands under one folder.
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default $OUT, else runs/gpu_check)
# On a bare device machine use its own python (PY=python3) with this checkout on PYTHONPATH; it
# needs torch, timm, transformers, safetensors, pyyaml, tqdm, tensorboard, matplotlib (no LM wheels:
# the bench uses LLaMA-7B-shaped random blocks and the train check writes its own block).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() { echo "== $1"; shift; "$@" || { echo "!! failed: $*"; status=1; }; }
step "device" bash -c "nvidia-smi -L | tee '$OUT/nvidia-smi.txt'"
step "CUDA tests" bash -c "timeout 180 $PY -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -s 2>&1 | tee '$OUT/pytest_cuda.txt'"
step "bench: ViT-S/16 + LLaMA-7B block, batch 64" bash -c "timeout 240 $PY -m frozenlm.cli bench --model vit_small_patch16_224 \
  --lm llama-7b --batch 64 --steps 5 --warmup 2 --json '$OUT/bench_vits_llama7b_b64.json' | tee '$OUT/bench_vits_llama7b_b64.md'"
step "bench: 1568-token video sandwich, batch 8" bash -c "timeout 150 $PY -m frozenlm.cli bench --model block --tokens 1568 \
  --in-dim 384 --lm llama-7b --batch 8 --steps 5 --warmup 2 --json '$OUT/bench_video_block_b8.json' | tee '$OUT/bench_video_block_b8.md'"
step "200-step train on CUDA" bash -c "timeout 240 $PY benchmarks/gpu_train_check.py '$OUT' --steps 200 2>&1 | tail -20 | tee '$OUT/train_check.txt'"
step "summary" bash -c "$PY benchmarks/gpu_summary.py '$OUT' | tee '$OUT/summary.md'"
exit $status
