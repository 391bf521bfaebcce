"""Run under torchrun by tests/test_vl.py: evaluate a checkpoint (CHECKPOINT OUT_DIR [key=value ...]) and
dump each rank's metrics."""
import json
import os
import sys

from frozenlm.engine import evaluate

if __name__ == "__main__":
    checkpoint, out_dir, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
    metrics = evaluate(checkpoint, overrides)
    with open(os.path.join(out_dir, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(metrics, f)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see frozenlm.engine.distributed.shutdown_distributed (gloo exit race)
