"""Run under torchrun by tests/test_engine.py: train the blob task and dump each rank's weights."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _engine_fixtures as fx  # noqa: E402  (registers the test task)
from frozenlm.engine import train  # noqa: E402

if __name__ == "__main__":
    run_dir = sys.argv[1]
    metrics = train(fx.blob_config(run_dir, *sys.argv[2:]))
    rank = int(os.environ["RANK"])
    weights = fx.trainable_state(fx.BUILT["model"])
    torch.save({"metrics": metrics, "weights": weights}, os.path.join(run_dir, f"rank{rank}.pt"))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see frozenlm.engine.distributed.shutdown_distributed (gloo exit race)
