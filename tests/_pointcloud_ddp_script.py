"""Run under torchrun by tests/test_ddp_bn.py: train the point-cloud task (CONFIG key=value ...)
and dump each rank's final model state (parameters and BatchNorm buffers)."""
import os
import sys

import torch

from frozenlm.config import load_config
from frozenlm.engine import train
from frozenlm.tasks.pointcloud import PointCloudClassification

if __name__ == "__main__":
    out_dir, config, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    built, build = [], PointCloudClassification.build_model
    # Each run builds its own task object: patch the class to keep the model and dump it.
    PointCloudClassification.build_model = lambda self, cfg: built.append(build(self, cfg)) or built[-1]
    metrics = train(load_config(config, overrides))
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone() for k, v in built[0].state_dict().items()}
    torch.save({"metrics": metrics, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see frozenlm.engine.distributed.shutdown_distributed (gloo exit race)
