"""Deterministic, resumable data loading.

Every sample's augmentation RNG is seeded from (seed, epoch, index) right before
``dataset[index]``, so results do not depend on worker count or scheduling; the order is a
function of (seed, epoch) only, and resuming mid-epoch skips consumed batches in the sampler.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SeededDataset", "EpochSampler", "build_loader", "sample_seed"]

_MASK64 = (1 << 64) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample (SplitMix64 over the triple)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) & ((1 << 63) - 1)


class SeededDataset(Dataset):
    """Wraps a dataset; its keys are ``(epoch, index)`` pairs produced by :class:`EpochSampler`."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, ...]) -> Any:
        epoch, index, *copy = key
        s = sample_seed(self.seed, epoch, index)
        if copy and copy[0]:
            s = sample_seed(s, copy[0], 0)  # repeated-augmentation copies get their own augmentation
        # Save/restore: with num_workers=0 this runs in the training process, whose global RNG
        # (dropout, mixup) must not be disturbed by data loading.
        py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed would also reseed CUDA, unrestored
        try:
            return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_rng_state(torch_state)


class EpochSampler(Sampler):
    """Distributed sampler yielding ``(epoch, index)`` keys.

    Like ``DistributedSampler``: the permutation depends on (seed, epoch) and rank r takes
    positions r, r+W, r+2W... With per-rank batch = global batch / W, the union of the ranks'
    k-th batches is exactly the k-th global batch of a 1-process run. ``drop_last`` drops the
    incomplete last GLOBAL batch (training); without it nothing is padded or duplicated (eval).
    ``repeats`` > 1 is DeiT's repeated augmentation: each shuffled index appears ``repeats``
    times in a row (so its copies land on different ranks, each with its own augmentation,
    keyed ``(epoch, index, copy)``) and the epoch keeps the dataset's length.
    """

    def __init__(self, size: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, repeats: int = 1) -> None:
        if repeats < 1:
            raise ValueError(f"repeated_aug must be >= 1, got {repeats}")
        self.repeats = int(repeats)
        self.size, self.global_batch = int(size), int(global_batch)
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and how many GLOBAL batches of it were already consumed."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _positions(self) -> range:
        n = (self.size // self.global_batch) * self.global_batch if self.drop_last else self.size
        return range(self.start_batch * self.global_batch + self.rank, n, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.repeats == 1:
            for pos in self._positions():
                yield (self.epoch, order[pos])
            return
        for pos in self._positions():
            yield (self.epoch, order[pos // self.repeats], pos % self.repeats)

    def __len__(self) -> int:
        return len(self._positions())


def _worker_init(_: int) -> None:
    # Workers would otherwise each use all cores and oversubscribe the CPU.
    torch.set_num_threads(1)


def build_loader(dataset: Dataset, *, global_batch: int, micro_batch: int, rank: int, world_size: int,
                 seed: int, shuffle: bool, drop_last: bool, num_workers: int,
                 collate_fn: Optional[Callable] = None, pin_memory: bool = False, repeats: int = 1) -> DataLoader:
    """A DataLoader over :class:`SeededDataset` with an :class:`EpochSampler` (``loader.sampler``)."""
    sampler = EpochSampler(len(dataset), global_batch, rank, world_size, seed, shuffle, drop_last,  # type: ignore[arg-type]
                           repeats)
    return DataLoader(
        SeededDataset(dataset, seed), batch_size=micro_batch, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=pin_memory, drop_last=False,
        persistent_workers=num_workers > 0, worker_init_fn=_worker_init if num_workers > 0 else None,
        # A private generator keeps DataLoader's base-seed draw off the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
