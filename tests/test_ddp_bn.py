"""BatchNorm under DDP (synchronised: N processes train the model 1 process does) and the EMA of
BatchNorm buffers (as timm.utils.ModelEmaV3)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.utils import ModelEmaV3
from torch import nn

from frozenlm.config import load_config
from frozenlm.engine import get_task, latest_checkpoint, load_checkpoint, train
from frozenlm.engine.checkpoint import load_train_state
from frozenlm.engine.ema import ModelEma
from frozenlm.engine.syncbn import GlobalBatchNorm, convert_sync_batchnorm
from frozenlm.layer import LMLayer, frozen_param_names

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import _ddp_bn_cases as cases  # noqa: E402
import _engine_fixtures as fx  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))


def _torchrun(script: str, *args: str, timeout: int = 300) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(TESTS / script), *args]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# -- the synchronised layer ----------------------------------------------------------------------
def test_global_batchnorm_over_two_ranks_equals_batchnorm_on_whole_batch(tmp_path: Path) -> None:
    _torchrun("_syncbn_script.py", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, case in cases.CASES.items():
        xs, projs, bn = cases.make(case)
        split = case["split"]
        for step, (x, proj) in enumerate(zip(xs, projs)):
            x = x.clone().requires_grad_(True)
            y = bn(x)
            (y * proj).sum().backward()
            for r, res in enumerate(ranks):
                lo, hi = split[r], split[r + 1]
                msg = f"{name} step {step} rank {r}"
                torch.testing.assert_close(res[f"{name}/y{step}"], y[lo:hi].detach(), atol=1e-5, rtol=1e-5, msg=msg)
                torch.testing.assert_close(res[f"{name}/dx{step}"], x.grad[lo:hi], atol=1e-5, rtol=1e-5, msg=msg)
        for pname, p in bn.named_parameters():  # weight grads summed over ranks = whole-batch grads
            for res in ranks:
                torch.testing.assert_close(res[f"{name}/grad_{pname}"], p.grad, atol=1e-5, rtol=1e-5, msg=name)
        for bname, b in bn.named_buffers():  # running stats with the unbiased GLOBAL variance
            for res in ranks:
                torch.testing.assert_close(res[f"{name}/{bname}"], b, atol=1e-6, rtol=1e-6, msg=f"{name} {bname}")
        bn.eval()
        for r, res in enumerate(ranks):
            torch.testing.assert_close(res[f"{name}/y_eval"], bn(xs[0][split[r]:split[r + 1]]).detach(),
                                       atol=1e-5, rtol=1e-5, msg=name)


def test_convert_keeps_parameter_objects_and_state_dict_keys() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4), nn.Sequential(nn.BatchNorm1d(4, affine=False)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    keys, tensors = list(model.state_dict()), {k: v.data_ptr() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3, 6)
    ref = model(x)
    out = convert_sync_batchnorm(model)
    assert out is model and isinstance(model[1], GlobalBatchNorm) and isinstance(model[2][0], GlobalBatchNorm)
    assert list(model.state_dict()) == keys
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == tensors  # the same storage, not copies
    # the optimizer built before the conversion still holds the model's parameters
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in model.parameters()]
    assert model[1].weight is opt.param_groups[0]["params"][2]
    # without a process group it is plain BatchNorm
    torch.testing.assert_close(model(x), ref, atol=0, rtol=0)
    bn = convert_sync_batchnorm(nn.BatchNorm2d(3))  # a BatchNorm at the root comes back as a new layer
    assert isinstance(bn, GlobalBatchNorm) and bn.num_features == 3
    with pytest.raises(ValueError, match="at least 2D"):
        bn(torch.randn(3))


# -- the training engine -------------------------------------------------------------------------
POINT_CONFIG = "configs/pointcloud/shapes_baseline.yaml"
# Tiny Point-BERT, no LM block, no step-level randomness (test-time FPS, no augmentation, no dropout):
# the BatchNorm layers of the group encoder are then the only thing that couples the samples.
# The conv biases whose output a BatchNorm re-centres have a zero true gradient; theirs is rounding
# noise (~1e-9), which AdamW turns into full-size random steps, so the test keeps them fixed (lr_mult 0).
POINT_OVER = ["data.train_per_class=4", "data.test_per_class=2", "data.num_classes=4", "data.shapes.num_points=128",
              "data.num_points=64", "data.train_fps_points=null", "data.augment=false", "model.depth=1",
              "model.num_group=8", "model.group_size=8", "model.trans_dim=48", "model.num_heads=2",
              "model.encoder_dims=32", "model.head_dropout=0.0", "epochs=2", "batch_size=8", "optim.lr=1e-3",
              "optim.warmup_epochs=0", "log_every=1",
              "optim.lr_mult={first_conv.0.bias: 0.0, first_conv.3.bias: 0.0, second_conv.0.bias: 0.0}", "progress=false", "eval_every=null", "num_workers=0",
              "ema.decay=0.5", "device=cpu", "precision=fp32"]


def test_two_process_pointcloud_matches_single_process(tmp_path: Path) -> None:
    over = [*POINT_OVER, f"data.cache_dir={tmp_path / 'data'}"]
    # the 1-process run also writes the data cache, so the two ranks only read it
    single = train(load_config(POINT_CONFIG, [*over, f"run_dir={tmp_path / 'single'}"]))
    _torchrun("_pointcloud_ddp_script.py", str(tmp_path), POINT_CONFIG, *over, f"run_dir={tmp_path / 'ddp'}")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["state"].items():  # the ranks hold one model, BatchNorm statistics included
        assert torch.equal(v, r1["state"][k]), k

    ck1, ck2 = latest_checkpoint(tmp_path / "single"), latest_checkpoint(tmp_path / "ddp")
    w1, w2 = load_file(str(ck1 / "model.safetensors")), load_file(str(ck2 / "model.safetensors"))
    assert set(w1) == set(w2)
    stats = [k for k in w1 if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stats) == 6  # two BatchNorm1d layers in the group encoder
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4, msg=k)
    e1, e2 = load_train_state(ck1)["ema"], load_train_state(ck2)["ema"]
    assert set(e1) == set(e2) and set(stats) <= set(e1)
    for k in e1:
        torch.testing.assert_close(e2[k], e1[k], atol=1e-5, rtol=1e-4, msg=f"ema {k}")
    assert r0["metrics"]["train_loss"] == pytest.approx(single["train_loss"], abs=1e-5)

    # a checkpoint written by 2 processes loads into a 1-process model (plain BatchNorm, same keys)
    cfg = load_config(POINT_CONFIG, over)
    model = get_task("pointcloud").build_model(cfg)
    load_checkpoint(ck2, model)
    assert type(model.encoder.first_conv[1]) is nn.BatchNorm1d
    torch.testing.assert_close(model.encoder.first_conv[1].running_var, w1["encoder.first_conv.1.running_var"],
                               atol=1e-5, rtol=1e-4)


# -- EMA -----------------------------------------------------------------------------------------
class _BNModel(nn.Module):
    """Linear -> BatchNorm over tokens -> frozen LM sandwich -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(fx.IN_DIM, fx.TOKENS * fx.DIM)
        self.bn = nn.BatchNorm1d(fx.DIM)
        self.lm = LMLayer(fx.DIM, source="tiny-test", blocks=fx.tiny_blocks(0))
        self.head = nn.Linear(fx.DIM, fx.N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(x).view(x.shape[0], fx.TOKENS, fx.DIM)
        t = self.bn(t.transpose(1, 2)).transpose(1, 2)
        return self.head(self.lm(t).mean(1))


def test_ema_follows_timm_model_ema_v3_including_buffers() -> None:
    torch.manual_seed(0)
    model = _BNModel()
    ours, timm_ema = ModelEma(model, 0.8), ModelEmaV3(model, decay=0.8)
    frozen = frozen_param_names(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(ours.shadow) == {k for k in model.state_dict() if k not in frozen and (k in trainable or "bn." in k)}
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(ours.shadow)
    assert not any(k.startswith("lm.blocks.") for k in ours.shadow)  # frozen LM weights are not copied

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(4):
        x = torch.randn(6, fx.IN_DIM) * 3 + 1
        model(x).logsumexp(-1).sum().backward()
        opt.step()
        opt.zero_grad()
        ours.update(model)
        timm_ema.update(model)
    ref = timm_ema.module.state_dict()
    for k, v in ours.state_dict().items():
        torch.testing.assert_close(v, ref[k], atol=0, rtol=0, msg=k)
    assert not torch.equal(ours.shadow["bn.running_var"], model.bn.running_var)  # averaged, not copied
    assert int(ours.shadow["bn.num_batches_tracked"]) == 4  # integer buffers are copied

    live = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, fx.IN_DIM)
    model.eval()
    with ours.swapped_in(model):
        torch.testing.assert_close(model(x), timm_ema.module(x), atol=0, rtol=0)  # EMA weights AND statistics
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k

    again = ModelEma(_BNModel(), 0.8)  # resumable: state_dict -> load_state_dict is exact
    again.load_state_dict(ours.state_dict())
    for k, v in ours.shadow.items():
        assert torch.equal(again.shadow[k], v), k


def test_ema_state_without_buffers_is_refused() -> None:
    ema = ModelEma(_BNModel(), 0.9)
    old = {k: v for k, v in ema.state_dict().items() if not k.startswith("bn.running")
           and k != "bn.num_batches_tracked"}  # what an EMA that skipped buffers saved
    with pytest.raises(ValueError, match=r"step_9.*no buffers \(3 missing.*ema.decay=null"):
        ema.load_state_dict(old, where="runs/x/checkpoints/step_9")
    with pytest.raises(ValueError, match="unexpected.*'extra'"):
        ema.load_state_dict({**ema.state_dict(), "extra": torch.zeros(1)})
    bad = {**ema.state_dict(), "bn.running_mean": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"'bn.running_mean' has shape \(3,\)"):
        ema.load_state_dict(bad)
