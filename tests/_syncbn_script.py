"""Run under torchrun (gloo) by tests/test_ddp_bn.py: each rank normalises its slice of a global
batch with GlobalBatchNorm, backpropagates, and dumps outputs, gradients and running statistics."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _ddp_bn_cases as cases  # noqa: E402  (shared with the test, which computes the reference)
from frozenlm.engine.syncbn import convert_sync_batchnorm

if __name__ == "__main__":
    out_dir, device = sys.argv[1], torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    results = {}
    for name, case in cases.CASES.items():
        xs, projs, bn = cases.make(case)
        bn = convert_sync_batchnorm(bn, device).to(device)
        lo, hi = case["split"][rank], case["split"][rank + 1]
        for step, (x, proj) in enumerate(zip(xs, projs)):
            x_r = x[lo:hi].clone().to(device).requires_grad_(True)
            y = bn(x_r)
            (y * proj[lo:hi].to(device)).sum().backward()
            results[f"{name}/y{step}"] = y.detach().cpu()
            results[f"{name}/dx{step}"] = x_r.grad.cpu()
        for pname, p in bn.named_parameters():
            g = p.grad.detach().clone()
            dist.all_reduce(g)  # what DDP does (up to its 1/world scaling, the test's loss is a sum)
            results[f"{name}/grad_{pname}"] = g.cpu()
        for bname, b in bn.named_buffers():
            results[f"{name}/{bname}"] = b.detach().cpu()
        bn.eval()
        results[f"{name}/y_eval"] = bn(xs[0][lo:hi].to(device)).detach().cpu()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see frozenlm.engine.distributed.shutdown_distributed (gloo exit race)
