"""Peak memory of a code region: resident set size on CPU (sampled), allocator peak on CUDA."""
from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def max_rss_bytes() -> int:
    """Peak RSS of this process since it started (kernel's high-water mark)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """`with PeakMemory(device) as pm: ...` then `pm.peak` (bytes) and `pm.start` (bytes at entry).

    CPU: a thread samples RSS every `interval` s (ru_maxrss is process-lifetime, so it cannot
    isolate a region); allocations shorter than the interval can be missed, which is why the
    kernel high-water mark is also checked when it moved during the region.
    CUDA: torch.cuda.max_memory_allocated over the region.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device, self.interval = torch.device(device), interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = rss_bytes()
        self._hwm0 = max_rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        hwm = max_rss_bytes()
        if hwm > self._hwm0:  # the high-water mark was set inside the region: it is exact
            self.peak = max(self.peak, hwm)

    @property
    def delta(self) -> int:
        """Peak minus the memory in use when the region started."""
        return self.peak - self.start
