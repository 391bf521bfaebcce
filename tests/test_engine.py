"""Engine tests on a tiny synthetic task (CPU, fp32): training, exact resume, DDP, checkpoints, optimizer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _engine_fixtures as fx
from frozenlm.config import make_config
from frozenlm.engine import CheckpointError, evaluate, latest_checkpoint, load_checkpoint, train
from frozenlm.engine.checkpoint import load_train_state, read_meta
from frozenlm.engine.data import EpochSampler, SeededDataset
from frozenlm.engine.optim import base_lr, build_optimizer, lr_at, param_groups
from frozenlm.config import validate_config
from frozenlm.layer import frozen_param_names
from frozenlm.tasks.metrics import classification_finalize, topk_sums

TESTS = Path(__file__).parent


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One full 3-epoch run shared by the checkpoint tests."""
    run_dir = tmp_path_factory.mktemp("trained")
    metrics = train(fx.blob_config(run_dir, "keep_last=2"))
    return run_dir, metrics


# -- training -----------------------------------------------------------------------------------
def test_training_lowers_loss_and_writes_run_files(trained):
    run_dir, metrics = trained
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.7 * losses[0]
    assert metrics["top1"] > 70.0 and set(metrics) >= {"top1", "top2", "loss", "train_loss"}
    assert all({"step", "epoch", "lr", "loss", "samples_per_s"} <= set(r) for r in records if r["kind"] == "train")
    assert [r["step"] for r in records if r["kind"] == "eval"] == [4, 8, 12]  # eval_every=1 epoch of 4 steps
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["top1"] == metrics["top1"]
    assert (run_dir / "config.yaml").is_file() and any((run_dir / "tb").iterdir())


def test_evaluate_from_checkpoint_matches_training(trained):
    run_dir, metrics = trained
    again = evaluate(run_dir, ["eval_split=test"])
    assert again["top1"] == metrics["top1"] and again["loss"] == pytest.approx(metrics["loss"], abs=1e-6)


def test_bf16_runs_and_fp16_on_cpu_is_refused(tmp_path):
    assert train(fx.blob_config(tmp_path / "bf16", "precision=bf16", "max_steps=2"))["top1"] >= 0
    with pytest.raises(ValueError, match="fp16 is only supported on CUDA"):
        train(fx.blob_config(tmp_path / "fp16", "precision=fp16"))
    with pytest.raises(ValueError, match="precision must be"):
        train(fx.blob_config(tmp_path / "fp8", "precision=fp8"))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(KeyError, match="test_blobs"):
        train(fx.blob_config(tmp_path, "task=nope"))
    with pytest.raises(ValueError, match="divisible by world_size x accum_steps = 3 x 1"):
        validate_config(fx.blob_config(tmp_path), world_size=3)
    with pytest.raises(ValueError, match="accum_steps must be a positive integer"):
        validate_config(fx.blob_config(tmp_path, "accum_steps=0"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(fx.blob_config(tmp_path, "batch_size=128"))


# -- exact resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,extra", [(0, ["ema.decay=0.9"]), (2, ["accum_steps=2"])])
def test_resume_after_crash_is_bit_identical(tmp_path, workers, extra):
    common = [f"num_workers={workers}", "epochs=2", "save_every_steps=3", "eval_every=1", "data.step_noise=0.1",
              *extra]
    train(fx.blob_config(tmp_path / "full", *common))
    # 7 optimizer steps (with an eval + save at step 4), then a crash: step 6 (mid-epoch; 4 steps per
    # epoch) is the last checkpoint, step 7 is lost.
    crash_calls = 7 * (2 if "accum_steps=2" in extra else 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(fx.blob_config(tmp_path / "crash", *common, f"data.crash_after_calls={crash_calls}"))
    assert latest_checkpoint(tmp_path / "crash").name == "step_0000006"
    train(fx.blob_config(tmp_path / "crash", *common, "resume=auto"))
    a, b = _final_weights(tmp_path / "full"), _final_weights(tmp_path / "crash")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = (load_train_state(latest_checkpoint(tmp_path / d)) for d in ("full", "crash"))
    assert sa["step"] == sb["step"] == 8
    if sa["ema"] is not None:
        for k in sa["ema"]:
            assert torch.equal(sa["ema"][k], sb["ema"][k]), k


# -- distributed ---------------------------------------------------------------------------------
def test_two_process_gloo_matches_single_process(tmp_path):
    overrides = ["epochs=1", "num_workers=0", "log_every=1"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(TESTS / "_engine_ddp_script.py"), str(tmp_path / "ddp"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
    assert r0["metrics"] == r1["metrics"]

    single = train(fx.blob_config(tmp_path / "single", *overrides))
    ref = fx.trainable_state(fx.BUILT["model"])
    for k, v in ref.items():
        torch.testing.assert_close(r0["weights"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert r0["metrics"]["loss"] == pytest.approx(single["loss"], abs=1e-4)


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_excludes_frozen_weights(trained):
    run_dir, _ = trained
    model = fx.BlobModel()
    frozen = frozen_param_names(model)
    assert frozen and all(k.startswith("lm.blocks.") for k in frozen)
    saved = set(_final_weights(run_dir))
    assert not saved & frozen
    assert saved == set(model.state_dict()) - frozen
    meta = read_meta(latest_checkpoint(run_dir))
    assert meta["frozen_sources"]["lm"]["source"] == "tiny-test" and meta["frozen_sources"]["lm"]["layers"] == [3]
    assert meta["config"]["task"] == "test_blobs" and meta["step"] == 12


def test_checkpoint_pointers_and_pruning(trained):
    run_dir, _ = trained
    root = run_dir / "checkpoints"
    dirs = sorted(p.name for p in root.glob("step_*"))
    best = (root / "best").read_text().strip()
    assert (root / "latest").read_text().strip() == "step_0000012"
    assert set(dirs) == {"step_0000008", "step_0000012"} | {best}  # keep_last=2 plus best


def test_load_verifies_frozen_weights_by_digest_not_by_path(trained):
    run_dir, metrics = trained
    with pytest.raises(CheckpointError, match=r"lm: digest differs"):
        load_checkpoint(run_dir, fx.BlobModel(block_seed=1))
    load_checkpoint(run_dir, fx.BlobModel())  # same source loads
    # The same weights read from another path (the LM folder was moved) load, with a warning ...
    with pytest.warns(UserWarning, match=r"source path changed \(lm: 'tiny-test' -> 'moved/elsewhere'\)"):
        load_checkpoint(run_dir, fx.BlobModel(source="moved/elsewhere"))
    # ... and `frozenlm eval` with the new path gives the same numbers.
    with pytest.warns(UserWarning, match="source path changed"):
        again = evaluate(run_dir, ["data.source=moved/elsewhere"])
    assert again["top1"] == metrics["top1"]
    # Other weights under the old path are still refused.
    with pytest.raises(CheckpointError, match=r"digest differs"):
        evaluate(run_dir, ["data.block_seed=2"])


def test_load_reports_missing_unexpected_and_shape(trained):
    run_dir, _ = trained
    model = fx.BlobModel()
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match=r"missing keys \(2\): \['extra.bias', 'extra.weight'\]"):
        load_checkpoint(run_dir, model)
    model = fx.BlobModel()
    del model.norm
    model.norm = torch.nn.Identity()
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): \['norm.bias', 'norm.weight'\]"):
        load_checkpoint(run_dir, model)
    model = fx.BlobModel()
    model.head = torch.nn.Linear(fx.DIM, 7)
    with pytest.raises(CheckpointError, match=r"head.weight: checkpoint \(3, 8\) vs model \(7, 8\)"):
        load_checkpoint(run_dir, model)


def test_corrupt_or_incomplete_checkpoint(trained, tmp_path):
    src = latest_checkpoint(trained[0])
    bad = tmp_path / "step_0000012"
    shutil.copytree(src, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(bad, fx.BlobModel())
    data = (bad / "train_state.pt").read_bytes()
    (bad / "train_state.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_train_state(bad)
    (bad / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="missing meta.json"):
        load_checkpoint(bad, fx.BlobModel())
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nothing_here"):
        load_checkpoint(tmp_path / "nothing_here", fx.BlobModel())


def test_crashed_save_leftovers_are_ignored_and_cleaned(tmp_path):
    run_dir = tmp_path / "run"
    train(fx.blob_config(run_dir, "max_steps=2"))
    root = run_dir / "checkpoints"
    # A save that died before its rename leaves a temp dir (with a newer step) and a temp pointer.
    leftover = root / ".tmp_step_0000099_4242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    (root / ".tmp_latest_4242").write_text("step_0000099\n")
    assert latest_checkpoint(run_dir).name == "step_0000002"
    # A 'latest' pointer to a checkpoint that is gone falls back to the newest complete one.
    (root / "latest").write_text("step_0000077\n")
    assert latest_checkpoint(run_dir).name == "step_0000002"
    train(fx.blob_config(run_dir, "max_steps=3", "resume=auto"))
    assert not list(root.glob(".tmp_*"))
    assert load_train_state(latest_checkpoint(run_dir))["step"] == 3


# -- optimizer and schedule -------------------------------------------------------------------------
def test_param_groups_weight_decay_and_frozen():
    model = fx.BlobModel()
    cfg = make_config({"optim": {"lr_mult": {"lm.": 10.0}, "no_decay_lr_mult": 0.1}})
    groups = param_groups(model, cfg)
    by_name = {n: g for g in groups for n in g["param_names"]}
    for n in ("pos_embed", "cls_token", "fc.bias", "norm.weight", "norm.bias", "head.bias"):
        assert by_name[n]["weight_decay"] == 0.0, n
    for n in ("fc.weight", "head.weight", "lm.proj_in.weight", "lm.proj_out.weight"):
        assert by_name[n]["weight_decay"] == 0.05, n
    assert by_name["lm.proj_in.weight"]["lr_mult"] == 10.0 and by_name["fc.weight"]["lr_mult"] == 1.0
    assert by_name["fc.bias"]["lr_mult"] == pytest.approx(0.1)
    assert not any(n.startswith("lm.blocks.") for n in by_name)
    opt_params = {id(p) for g in build_optimizer(model, cfg).param_groups for p in g["params"]}
    assert all(id(p) not in opt_params for p in model.lm.blocks.parameters())
    assert len(opt_params) == sum(p.requires_grad for p in model.parameters())


def test_task_lr_mults_multiply_the_config_ones():
    model = fx.BlobModel()
    cfg = make_config({"optim": {"lr_mult": {"lm.": 10.0}, "no_decay_lr_mult": 0.1}})
    mult = {n: g["lr_mult"] for g in param_groups(model, cfg, {"lm.proj_in": 0.5, "lm.": 3.0, "head.weight": 2.0})
            for n in g["param_names"]}
    assert mult["lm.proj_in.weight"] == 10.0 * 0.5 and mult["lm.proj_out.weight"] == 10.0 * 3.0  # longest match
    assert mult["head.weight"] == 2.0 and mult["head.bias"] == pytest.approx(0.1) and mult["fc.weight"] == 1.0
    opt = build_optimizer(model, cfg, {"head.weight": 2.0})
    assert sorted(g["lr_mult"] for g in opt.param_groups if "head.weight" in g["param_names"]) == [2.0]


def test_model_no_weight_decay_hook_and_lr_scaling():
    model = fx.BlobModel()
    model.no_weight_decay = lambda: {"fc.weight"}
    groups = param_groups(model, make_config({}))
    assert {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]} >= {"fc.weight"}
    assert base_lr(make_config({"batch_size": 1024, "optim": {"lr": 5e-4, "lr_scale_batch": 512}})) == 1e-3
    assert base_lr(make_config({"batch_size": 1024, "optim": {"lr": 5e-4}})) == 5e-4


def test_lr_schedule_values():
    kw = dict(total_steps=100, warmup_steps=10, peak=1.0, min_lr=0.01, warmup_lr=1e-6)
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(0.5, abs=1e-5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx((1.0 + 0.01) / 2)
    assert lr_at(100, **kw) == pytest.approx(0.01)
    values = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


# -- data order and metrics -----------------------------------------------------------------------
def test_sampler_ranks_partition_global_batches_and_skip():
    one = list(EpochSampler(50, 8, seed=3))
    assert len(one) == 48 and len({i for _, i in one}) == 48
    ranks = [list(EpochSampler(50, 8, rank=r, world_size=2, seed=3)) for r in (0, 1)]
    for b in range(6):
        assert sorted(ranks[0][4 * b: 4 * b + 4] + ranks[1][4 * b: 4 * b + 4]) == sorted(one[8 * b: 8 * b + 8])
    s = EpochSampler(50, 8, seed=3)
    s.set_epoch(0, start_batch=2)
    assert list(s) == one[16:]
    s.set_epoch(1)
    assert [i for _, i in s] != [i for _, i in one]


def test_seeded_dataset_is_order_independent_and_keeps_global_rng():
    ds = SeededDataset(fx.BlobDataset(10, 1), seed=0)
    before = torch.get_rng_state()
    a, b = ds[(0, 3)][0], ds[(0, 5)][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(ds[(0, 5)][0], b) and torch.equal(ds[(0, 3)][0], a)
    assert not torch.equal(ds[(1, 3)][0], a)


def test_topk_sums_and_finalize():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    target = torch.tensor([0, 2, 0, 2])
    sums = topk_sums(logits, target, ks=(1, 2), loss=torch.ones(4))
    assert (float(sums["correct1"]), float(sums["correct2"]), float(sums["count"])) == (1.0, 3.0, 4.0)
    assert classification_finalize(sums) == {"top1": 25.0, "top2": 75.0, "loss": 1.0}
    soft = torch.nn.functional.one_hot(target, 3).float()
    assert float(topk_sums(logits, soft, ks=(1,))["correct1"]) == 1.0


def test_main_train_and_main_eval_parse_argv(tmp_path, capsys):
    from frozenlm.cli import main_eval, main_train

    cfg = fx.blob_config(tmp_path / "run").to_dict()
    cfg.pop("name")
    (tmp_path / "blobs.yaml").write_text(__import__("yaml").safe_dump(cfg))
    metrics = main_train([str(tmp_path / "blobs.yaml"), "max_steps=2", "optim.lr=1e-3", "+data.note=hi"])
    saved = read_meta(tmp_path / "run")["config"]
    assert saved["name"] == "blobs" and saved["optim"]["lr"] == 1e-3 and saved["data"]["note"] == "hi"
    again = main_eval([str(tmp_path / "run" / "checkpoints" / "latest")])
    assert again["top1"] == metrics["top1"] and f"top1={metrics['top1']:.4f}" in capsys.readouterr().out


def test_repeated_augmentation_sampler_and_seeds() -> None:
    """DeiT-style x3 repeats: copies of an index sit on different ranks and get different augmentation."""
    from frozenlm.engine.data import EpochSampler, SeededDataset

    size, world = 24, 3
    per_rank = [list(EpochSampler(size, 6, rank=r, world_size=world, seed=1, repeats=3)) for r in range(world)]
    assert sum(len(p) for p in per_rank) == size  # the epoch keeps the dataset's length
    for pos in range(len(per_rank[0])):
        keys = [per_rank[r][pos] for r in range(world)]
        assert len({k[1] for k in keys}) == 1 and sorted(k[2] for k in keys) == [0, 1, 2]

    class Noise(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return size

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.rand(())

    ds = SeededDataset(Noise(), seed=1)
    assert ds[(0, 5)] == ds[(0, 5, 0)] and ds[(0, 5, 1)] != ds[(0, 5, 0)]
    with pytest.raises(ValueError, match="repeated_aug"):
        EpochSampler(size, 6, repeats=0)


def test_moved_lm_folder_loads_and_other_mode_is_refused(tmp_path):
    # A real HF checkpoint: train-time LMLayer at one path, the folder moved, the model rebuilt from the new path.
    import ckpt_factory as F
    from frozenlm import LMLayer
    from frozenlm.engine.checkpoint import save_checkpoint
    src = F.save_hf(F.make_model("llama", seed=5), tmp_path / "lm_a")
    torch.manual_seed(0)
    model = torch.nn.Sequential(LMLayer(12, source=str(src)))
    save_checkpoint(tmp_path / "ck", 1, model, {"step": 1}, {"config": {}})
    moved = tmp_path / "lm_b"
    src.rename(moved)
    again = torch.nn.Sequential(LMLayer(12, source=str(moved)))
    with pytest.warns(UserWarning, match="source path changed"):
        load_checkpoint(tmp_path / "ck" / "step_0000001", again)
    assert torch.equal(again[0].proj_in.weight, model[0].proj_in.weight)
    # same weights, but causal attention: a different block, refused and named
    causal = torch.nn.Sequential(LMLayer(12, source=str(moved), mask="causal"))
    with pytest.raises(CheckpointError, match=r"0: mask differs \(checkpoint 'none', model 'causal'\)"):
        load_checkpoint(tmp_path / "ck" / "step_0000001", causal)
