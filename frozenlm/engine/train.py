"""The one training loop shared by every task: ``train(cfg)``, the library entry point of ``frozenlm train``
(``frozenlm.cli`` parses the command line; evaluation lives in ``frozenlm.engine.evaluation``)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.distributed as dist

from frozenlm.config import Config, ConfigError, check_keys, make_config, unknown_keys_message, validate_config
from frozenlm.engine import checkpoint as ckpt
from frozenlm.engine.distributed import DistInfo, broadcast_object, shutdown_distributed, wrap_ddp
from frozenlm.engine.ema import ModelEma
from frozenlm.engine.evaluation import run_eval
from frozenlm.engine.runtime import start_run, task_loader, to_device
from frozenlm.engine.logging import RunLogger
from frozenlm.engine.optim import base_lr, build_optimizer, schedule_lr, set_lr
from frozenlm.engine.precision import autocast, make_scaler
from frozenlm.engine.rng import get_rng_state, seed_all, set_rng_state
from frozenlm.engine.task import get_task, task_schema
from frozenlm.tasks.base import Task

__all__ = ["train", "best_rule"]


def _version() -> str:
    try:
        return importlib.metadata.version("frozenlm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _as_config(cfg: Config | Mapping[str, Any]) -> Config:
    # Plain dicts (tests, notebooks) get the engine defaults merged under them.
    return cfg if isinstance(cfg, Config) and "optim" in cfg else make_config(dict(cfg))


def best_rule(cfg: Config, task: Task) -> tuple[str, str]:
    """(metric, mode) that picks ``checkpoints/best``: ``best_metric``/``best_mode`` if set, else the
    task's declared primary validation metric (``primary_metric``) and its direction (``primary_mode``)."""
    name, mode = cfg.best_metric, cfg.best_mode
    declared, task_mode = getattr(task, "primary_metric", ""), getattr(task, "primary_mode", "max")
    if name is None:
        if not declared:
            raise ValueError(f"task {cfg.task!r} declares no primary_metric; set best_metric (and best_mode) in the "
                             f"config, or give the task class `primary_metric = ...` and `primary_mode = 'max'|'min'`")
        if task_mode not in ("max", "min"):
            raise ValueError(f"task {cfg.task!r}: primary_mode must be 'max' or 'min', got {task_mode!r}")
        return declared, mode or task_mode
    if mode is None:
        if name != declared:
            raise ValueError(f"best_metric={name!r} is not the task's primary metric ({declared or 'none declared'}), "
                             f"so its direction is unknown: set best_mode=max or best_mode=min")
        mode = task_mode
    return str(name), mode


def _gather_rng(info: DistInfo) -> list[dict]:
    state = get_rng_state()
    if not info.enabled:
        return [state]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, state)
    return out


def _run_dir(cfg: Config, info: DistInfo) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = broadcast_object(time.strftime("%Y%m%d-%H%M%S"), info)  # same folder on every rank
    return Path("runs") / str(cfg.name or cfg.task) / stamp


def _find_resume(cfg: Config, run_dir: Path) -> Optional[Path]:
    r = cfg.resume
    if r in (None, False, "none", "null", ""):
        return None
    if r == "auto":
        return ckpt.latest_checkpoint(run_dir)
    return ckpt.resolve_checkpoint(r)


class _Trainer:
    """State of one training run; ``run()`` executes it. Kept private: use :func:`train`."""

    def __init__(self, cfg: Config, info: DistInfo, device: torch.device) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.task = get_task(cfg.task)
        self.run_dir = _run_dir(cfg, info)
        cfg.run_dir = str(self.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        if info.is_main and self.ckpt_root.is_dir():
            ckpt.cleanup_tmp(self.ckpt_root)

        seed_all(cfg.seed)  # identical initial weights on every rank (and in 1-process runs)
        self.model = self.task.build_model(cfg).to(device)
        self.train_ds = self.task.build_dataset(cfg, "train")
        if self.train_ds is None:
            raise ValueError(f"task {cfg.task!r} returned no training dataset")
        self.val_ds = self.task.build_dataset(cfg, cfg.eval_split) if cfg.eval_every is not None else None
        self.spe = len(self.train_ds) // cfg.batch_size
        if self.spe == 0:
            raise ValueError(f"training set has {len(self.train_ds)} samples, fewer than one global batch "
                             f"(batch_size={cfg.batch_size})")
        self.total = max(1, int(round(cfg.epochs * self.spe)))
        self.stop = min(self.total, cfg.max_steps) if cfg.max_steps else self.total
        self.warmup = int(round(float(cfg.optim.warmup_epochs) * self.spe))

        mults = self.task.lr_mults(self.model, cfg) if hasattr(self.task, "lr_mults") else None
        self.optimizer = build_optimizer(self.model, cfg, mults)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.peak_lr = base_lr(cfg)
        self.scaler = make_scaler(cfg.precision, device)
        self.ema = ModelEma(self.model, cfg.ema.decay) if cfg.ema.decay else None
        self.step = 0
        self.best_rule = best_rule(cfg, self.task)
        self.best: dict[str, Any] = {"metric": self.best_rule[0], "mode": self.best_rule[1], "value": None,
                                     "step": None}
        self.last_metrics: dict[str, float] = {}

        resume = broadcast_object(_find_resume(cfg, self.run_dir), info)
        if resume is not None:
            self._resume(resume)
        else:
            if cfg.init_from:  # fine-tuning: the weights only; a resumed run has its own weights already
                loaded = ckpt.load_checkpoint(cfg.init_from, self.model)
                if info.is_main:
                    print(f"initialised the weights from {loaded['path']}", file=sys.stderr, flush=True)
            seed_all(cfg.seed + info.rank)  # per-rank stream for dropout / mixup

        self.ddp = None
        if info.enabled:  # BatchNorm becomes synchronised: N processes train the model 1 process does
            self.model, self.ddp = wrap_ddp(self.model, device, bool(cfg.distributed.find_unused_parameters))
        self.train_loader = task_loader(self.task, self.train_ds, cfg, info, device, "train", True)
        self.val_loader = (task_loader(self.task, self.val_ds, cfg, info, device, cfg.eval_split, False)
                           if self.val_ds is not None else None)

    # -- checkpoints ---------------------------------------------------------------------------
    def _train_state(self) -> dict[str, Any]:
        state = {
            "step": self.step, "epoch": self.step // self.spe, "batch_in_epoch": self.step % self.spe,
            "steps_per_epoch": self.spe, "world_size": self.info.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": _gather_rng(self.info), "best": dict(self.best),
        }
        if hasattr(self.task, "state_dict"):
            state["task"] = self.task.state_dict()
        return state

    def _save(self, is_best: bool) -> None:
        state = self._train_state()  # collective (RNG gather): every rank calls it
        if self.info.is_main:
            meta = {"config": self.cfg.to_dict(), "epoch": self.step / self.spe, "frozenlm_version": _version(),
                    "torch_version": torch.__version__, "metrics": self.last_metrics, "best": self.best}
            ckpt.save_checkpoint(self.ckpt_root, self.step, self.model, state, meta,
                                 keep_last=self.cfg.keep_last, is_best=is_best)

    def _resume(self, path: Path) -> None:
        state = ckpt.load_train_state(path)
        if "steps_per_epoch" not in state:
            raise ckpt.CheckpointError(f"cannot resume {path}: it holds weights but no training state (e.g. a model "
                                       f"imported with `frozenlm import-authors`); start a new run from its weights "
                                       f"with init_from={path} and another run_dir")
        info = ckpt.load_checkpoint(path, self.model)
        if state["steps_per_epoch"] != self.spe:
            raise ValueError(f"cannot resume {info['path']}: it has {state['steps_per_epoch']} steps per epoch, "
                             f"this run {self.spe} (dataset size or batch_size changed)")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"], where=str(info["path"]))
        if hasattr(self.task, "load_state_dict") and "task" in state:
            self.task.load_state_dict(state["task"])
        self.step, self.best = int(state["step"]), dict(state["best"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])
        else:
            warnings.warn(f"checkpoint was written by {len(rngs)} ranks, this run has {self.info.world_size}: "
                          "RNG streams are re-seeded, so the run is not bit-identical to an uninterrupted one")
            seed_all(self.cfg.seed + self.info.rank + 1_000_003 * self.step)
        if self.info.is_main:
            print(f"resumed from {info['path']} at step {self.step}", file=sys.stderr, flush=True)

    # -- loop ----------------------------------------------------------------------------------
    def _eval(self, log: RunLogger) -> dict[str, float]:
        metrics = run_eval(self.task, self.model, self.val_loader, self.cfg, self.info, self.device)
        log.log("eval", self.step, {"epoch": self.step / self.spe, **metrics})
        if self.ema is not None and self.cfg.ema.eval:
            with self.ema.swapped_in(self.model):
                ema_metrics = run_eval(self.task, self.model, self.val_loader, self.cfg, self.info, self.device)
            log.log("eval_ema", self.step, ema_metrics)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics

    def _is_best(self, eval_metrics: dict[str, float]) -> bool:
        """Whether this evaluation beats the best so far. Only validation metrics compete: the
        metric is ``best_metric`` or the task's declared primary metric, never a training loss."""
        name, mode = self.best_rule
        if name not in eval_metrics:
            raise KeyError(f"best_metric {name!r} is not among the validation metrics {sorted(eval_metrics)}; "
                           f"set best_metric to one of them")
        value, old = eval_metrics[name], self.best["value"]
        better = old is None or (value > old if mode == "max" else value < old)
        if better:
            self.best = {"metric": name, "mode": mode, "value": value, "step": self.step}
        return better

    def _train_step(self, it: Any, lr: float) -> torch.Tensor:
        cfg, model = self.cfg, self.ddp or self.model
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        for i in range(cfg.accum_steps):
            batch = to_device(next(it), self.device)
            # Skip DDP's gradient all-reduce on all but the last accumulation micro-step.
            sync = self.ddp.no_sync() if self.ddp is not None and i < cfg.accum_steps - 1 else contextlib.nullcontext()
            with sync:
                with autocast(cfg.precision, self.device):
                    loss = self.task.train_step_loss(model, batch, cfg)
                scaled = loss.float() / cfg.accum_steps
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.detach().float() / cfg.accum_steps
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if cfg.optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params, float(cfg.optim.clip_grad))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        return total

    def run(self) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        log = RunLogger(self.run_dir, enabled=info.is_main, progress=bool(cfg.progress),
                        total_steps=self.stop, initial_step=self.step)
        if info.is_main:
            cfg.save(self.run_dir / "config.yaml")
        self.model.train()
        loss_sum, loss_n, t0 = torch.zeros((), device=self.device), 0, time.time()
        while self.step < self.stop:
            epoch = self.step // self.spe
            self.train_loader.sampler.set_epoch(epoch, self.step % self.spe)
            if hasattr(self.task, "set_epoch"):
                self.task.set_epoch(epoch)
            it = iter(self.train_loader)
            while True:
                lr = schedule_lr(cfg.optim, self.step, self.total, self.warmup, self.spe, self.peak_lr)
                loss_sum += self._train_step(it, lr)
                loss_n += 1
                self.step += 1
                log.advance()
                at_end = self.step >= self.stop
                end_of_epoch = self.step % self.spe == 0
                if self.step % cfg.log_every == 0 or at_end:
                    loss = self._mean_loss(loss_sum, loss_n)
                    dt = max(time.time() - t0, 1e-9)
                    log.log("train", self.step, {"epoch": self.step / self.spe, "lr": lr, "loss": loss,
                                                 "samples_per_s": loss_n * cfg.batch_size / dt})
                    self.last_metrics["train_loss"] = loss
                    loss_sum, loss_n, t0 = torch.zeros((), device=self.device), 0, time.time()
                do_eval = self.val_loader is not None and (at_end or (
                    end_of_epoch and cfg.eval_every and (self.step // self.spe) % cfg.eval_every == 0))
                is_best = False
                if do_eval:
                    eval_metrics = self._eval(log)
                    self.last_metrics.update(eval_metrics)
                    is_best = self._is_best(eval_metrics)
                if do_eval or at_end or (cfg.save_every_steps and self.step % cfg.save_every_steps == 0):
                    self._save(is_best)
                if at_end or end_of_epoch:
                    break
            del it
        result = dict(self.last_metrics)
        log.save_json("metrics.json", {"final": result, "best": self.best, "step": self.step,
                                       "run_dir": str(self.run_dir)})
        log.close()
        return result

    def _mean_loss(self, loss_sum: torch.Tensor, n: int) -> float:
        loss = loss_sum / max(n, 1)
        if self.info.enabled:
            dist.all_reduce(loss)
            loss /= self.info.world_size
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {self.step}; try a lower optim.lr, "
                                     "optim.clip_grad, or precision=fp32")
        return value


def train(cfg: Config | Mapping[str, Any]) -> dict[str, float]:
    """Train ``cfg.task`` as configured; returns the final metrics (identical on every rank).

    Under ``torchrun`` (WORLD_SIZE > 1) it joins the process group, trains with DDP and leaves
    the group at the end (barrier + destroy) if it created it.
    """
    cfg = _as_config(cfg)
    schema = task_schema(cfg.get("task"))
    bad = check_keys(cfg, schema) if schema is not None else []
    if bad:
        raise ConfigError(unknown_keys_message(bad, schema, "config", cfg.task))
    validate_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    info, device = start_run(cfg)
    result = _Trainer(cfg, info, device).run()
    shutdown_distributed(info)  # not in a finally: a barrier after a crash on one rank would hang
    return result
