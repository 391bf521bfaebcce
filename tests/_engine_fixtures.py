"""A tiny synthetic task for engine tests: gaussian-blob classification through a frozen LM block."""
from __future__ import annotations

import random
from typing import Any

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from frozenlm.config import make_config
from frozenlm.engine import register_task
from frozenlm.layer import LMLayer
from frozenlm.lm import BlockConfig, BlockStack
from frozenlm.lm.block import init_random_
from frozenlm.tasks.metrics import classification_finalize, topk_sums

N_CLASSES, IN_DIM, TOKENS, DIM = 3, 6, 4, 8
#: The model of the latest run in this process (each run builds its own task object), for tests to inspect.
BUILT: dict[str, nn.Module] = {}


class BlobDataset(Dataset):
    """Fixed class centres; every read adds fresh noise from the torch RNG (an 'augmentation')."""

    def __init__(self, n: int, split_seed: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.centres = torch.randn(N_CLASSES, IN_DIM, generator=g) * 2
        g = torch.Generator().manual_seed(split_seed)
        self.y = torch.randint(0, N_CLASSES, (n,), generator=g)
        self.x = self.centres[self.y] + torch.randn(n, IN_DIM, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.3 * torch.randn(IN_DIM), self.y[i]


def tiny_blocks(seed: int) -> BlockStack:
    """A 1-layer LLaMA-style stack with seeded random weights, standing in for a pretrained block."""
    cfg = BlockConfig(family="llama", dim=16, n_heads=2, ffn_dim=32, n_layers=4)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        stack = BlockStack(cfg, 1, layer_indices=[3])
        init_random_(stack)
    return stack


class BlobModel(nn.Module):
    """Tokens = fc(x) + pos_embed, with a CLS token, then the LM sandwich, a norm and a head."""

    def __init__(self, block_seed: int = 0, source: str = "tiny-test") -> None:
        super().__init__()
        self.fc = nn.Linear(IN_DIM, TOKENS * DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS + 1, DIM) * 0.02)
        self.lm = LMLayer(DIM, source=source, blocks=tiny_blocks(block_seed))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.fc(x).view(x.shape[0], TOKENS, DIM)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], 1) + self.pos_embed
        return self.head(self.norm(self.lm(t))[:, 0])


@register_task("test_blobs")
class BlobTask:
    """Duck-typed task (no base class) to check the engine needs nothing more than the methods."""

    primary_metric, primary_mode = "top1", "max"

    def __init__(self) -> None:
        self.calls = 0

    def build_model(self, cfg: Any) -> nn.Module:
        BUILT["model"] = BlobModel(cfg.data.block_seed, cfg.data.source)
        return BUILT["model"]

    def build_dataset(self, cfg: Any, split: str) -> Dataset:
        if split == "train":
            return BlobDataset(cfg.data.n_train, 1)
        return BlobDataset(cfg.data.n_val, 2)

    def train_step_loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        self.calls += 1
        if cfg.data.crash_after_calls and self.calls > cfg.data.crash_after_calls:
            raise RuntimeError("simulated crash")
        x, y = batch
        if cfg.data.step_noise:
            # Like mixup: draws from the GLOBAL python/numpy/torch RNGs, which resume must restore.
            scale = cfg.data.step_noise * (1 + random.random() + float(np.random.rand()))
            x = x + scale * torch.randn_like(x)
        return F.cross_entropy(model(x), y)

    def eval_batch(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x).float()
        return topk_sums(logits, y, ks=(1, 2), loss=F.cross_entropy(logits, y, reduction="none"))

    def finalize(self, sums: dict[str, torch.Tensor], cfg: Any) -> dict[str, float]:
        return classification_finalize(sums)


def blob_config(run_dir: Any, *overrides: str) -> Any:
    """A small fp32 CPU config for the blob task."""
    base = {
        "task": "test_blobs", "run_dir": str(run_dir), "epochs": 3, "batch_size": 16, "num_workers": 0,
        "precision": "fp32", "log_every": 2, "progress": False, "device": "cpu",
        "optim": {"lr": 5e-3, "warmup_epochs": 0.5, "min_lr": 1e-4, "weight_decay": 0.05},
        "data": {"n_train": 72, "n_val": 40, "block_seed": 0, "source": "tiny-test", "crash_after_calls": None,
                 "step_noise": 0.0},
    }
    return make_config(base, overrides)


def trainable_state(model_or_dir: Any) -> dict[str, torch.Tensor]:
    """Trainable weights of a model, for bit-exact comparisons."""
    return {n: p.detach().clone() for n, p in model_or_dir.named_parameters() if p.requires_grad}
