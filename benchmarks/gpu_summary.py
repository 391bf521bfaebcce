"""Summarise benchmarks/gpu_check.sh's folder as markdown: each bench row's throughput, its share of
the measured bf16 matmul peak and its MFU against the card's datasheet bf16 peak, plus the train check.

    python benchmarks/gpu_summary.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

#: dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (SXM parts)
DATASHEET_BF16 = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0, "L4": 121.0}


def card_peak(name: str) -> float | None:
    """Datasheet bf16 peak for a device name such as 'NVIDIA H200', or None if unknown."""
    return next((v for k, v in DATASHEET_BF16.items() if k in name), None)


def bench_table(path: Path) -> list[str]:
    """Markdown rows of one `frozenlm bench --json` file."""
    r = json.loads(path.read_text())
    dev = r["env"]["device"]
    peak = card_peak(dev)
    mm = r.get("matmul_peak", {}).get("tflops_per_s")
    lines = [f"### {path.stem} on {dev} (measured bf16 matmul peak {mm or 0:.1f} TFLOP/s; datasheet "
             f"{peak or '?'} TFLOP/s)", "", "| configuration | train samples/s | infer samples/s | step TFLOP/s | "
             "MFU (datasheet) | block fwd % of measured peak | peak mem |", "|---|---|---|---|---|---|---|"]
    for row in r.get("step", []):
        if "error" in row:
            lines.append(f"| {row['config']} | error: {row['error']} | | | | | |")
            continue
        mfu = f"{100 * row['train_tflops_per_s'] / peak:.1f}%" if peak else "-"
        lines.append(f"| {row['config']} | {row['train_samples_per_s']:.2f} | {row['infer_samples_per_s']:.2f} | "
                     f"{row['train_tflops_per_s']:.1f} | {mfu} | {row.get('block_fwd_pct_of_peak', 0):.0f}% | "
                     f"{row['peak_mem_bytes'] / 2**30:.2f} GiB |")
    return lines + [""]


def main() -> None:
    out = Path(sys.argv[1])
    lines = ["# GPU check", ""]
    smi = out / "nvidia-smi.txt"
    if smi.exists():
        lines += ["```", smi.read_text().strip(), "```", ""]
    for p in sorted(out.glob("bench_*.json")):
        lines += bench_table(p)
    tc = out / "train_check.json"
    if tc.exists():
        t = json.loads(tc.read_text())
        lines.append(f"200-step train: loss {t['loss_first_fifth']:.3f} -> {t['loss_last_fifth']:.3f} "
                     f"({'fell' if t['loss_fell'] else 'DID NOT FALL'}), precision {t['precision']}, {t['seconds']:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
