"""Time the ModelNet40 FPS cache build (10,000 -> 8,192 points per cloud, as Point-BERT's
``uniform=True``) on the CPU and, when there is one, the GPU, and check both pick the same points.

    python benchmarks/modelnet_fps.py [--clouds 64] [--points 10000] [--npoints 8192] [--threads 1]

Prints one JSON line; docs/pointcloud.md quotes it. The clouds are random normal points (FPS cost
does not depend on the shape) plus one 5x5x5 grid cloud, whose many equal distances test the ties.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from frozenlm.data.pointcloud import _fps_select, modelnet_fps_starts


def main() -> None:
    """Run the timing and the CPU/GPU comparison."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--clouds", type=int, default=64)
    ap.add_argument("--points", type=int, default=10000)
    ap.add_argument("--npoints", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpu-clouds", type=int, default=None, help="clouds timed on the CPU (default: all)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(a.points, 3)).astype(np.float32) for _ in range(a.clouds)]
    starts = modelnet_fps_starts(range(a.clouds), [a.points] * a.clouds)
    grid = np.stack(np.meshgrid(*[np.arange(5, dtype=np.float32)] * 3, indexing="ij"), -1).reshape(-1, 3)
    out = {"clouds": a.clouds, "points": a.points, "npoints": a.npoints, "threads": a.threads,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    n_cpu = a.cpu_clouds or a.clouds
    t0 = time.perf_counter()
    cpu = _fps_select(clouds[:n_cpu], starts[:n_cpu], a.npoints, torch.device("cpu"))
    out["cpu_s_per_cloud"] = round((time.perf_counter() - t0) / n_cpu, 4)
    cpu_grid = _fps_select([grid], [62], 100, torch.device("cpu"))[0]
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        _fps_select(clouds[:1], starts[:1], 64, dev)  # warm-up (CUDA context, kernels)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gpu = _fps_select(clouds, starts, a.npoints, dev)
        torch.cuda.synchronize()
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_s_per_cloud"] = round((time.perf_counter() - t0) / a.clouds, 5)
        out["gpu_equals_cpu"] = all(np.array_equal(c, g) for c, g in zip(cpu, gpu[:n_cpu]))
        out["gpu_equals_cpu_grid_ties"] = bool(np.array_equal(cpu_grid, _fps_select([grid], [62], 100, dev)[0]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
