"""Run under torchrun (2 gloo ranks) by tests/test_data_cache.py: build every cached data set from an
empty folder on both ranks, count how often each builder ran here, and write digests of the data."""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from frozenlm.data import pointcloud, tarshards
from frozenlm.data.synthetic import motion as motion_synth, pointcloud as pointcloud_shapes, sqa3d as rooms3d
from frozenlm.data.synthetic import video as moving_shapes
from frozenlm.data.motion import build_motion_dataset
from frozenlm.data.tarshards import TarShardDataset

builds: dict[str, int] = {}


def counting(module, name: str, key: str) -> None:
    """Replace module.name by a wrapper that counts its calls under builds[key]."""
    fn = getattr(module, name)

    def wrapper(*a, **k):
        builds[key] = builds.get(key, 0) + 1
        return fn(*a, **k)

    setattr(module, name, wrapper)


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.numpy()
        h.update(p.tobytes() if hasattr(p, "tobytes") else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    counting(rooms3d, "generate_rooms", "rooms3d")
    counting(pointcloud_shapes, "generate_shapes", "shapes")
    counting(motion_synth, "generate_split", "motion_synth")
    counting(moving_shapes, "write_mp4", "moving_shapes")
    counting(np, "loadtxt", "modelnet")  # ModelNet's text parser
    counting(tarshards, "_scan_shard", "tarshards")
    dig = {}
    pts, recs = rooms3d.load_or_generate_rooms(data / "rooms", 2, "train", num_points=128, progress=False)
    dig["rooms3d"] = digest(pts, recs)
    clouds, labels = pointcloud_shapes.load_or_generate_shapes(data / "shapes", 1, "train", num_points=64,
                                                               progress=False)
    dig["shapes"] = digest(clouds, labels)
    ds = build_motion_dataset({"name": "synth", "root": str(data / "motion"), "num_train": 3, "max_lanes": 8},
                              "train")
    dig["motion_synth"] = digest(*[s[k] for s in ds.samples for k in sorted(s)], ds.ids)
    root = moving_shapes.generate(data / "video", 2, 2, size=16, num_frames=4, progress=False)
    dig["moving_shapes"] = digest(*[p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()])
    mn = pointcloud.read_modelnet_txt(data / "mn", "train", num_points=32, progress=False)
    dig["modelnet"] = digest(mn.points, mn.labels)
    shards = TarShardDataset(data / "shards")
    dig["tarshards"] = digest(shards.samples, shards._offset)
    if "moving_shapes" in builds:
        builds["moving_shapes"] = 1  # one build writes several clips
    if "modelnet" in builds:
        builds["modelnet"] = 1  # one build reads every file
    for key in dig:
        builds.setdefault(key, 0)
    (out / f"rank{rank}.json").parent.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"builds": builds, "digest": dig}))
    dist.barrier()  # see frozenlm.engine.distributed.shutdown_distributed (gloo exit race)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
