"""Run logging on rank 0: log.jsonl, TensorBoard, tqdm, config.yaml and metrics.json."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["RunLogger"]


class RunLogger:
    """Writes one JSON object per logged step/eval to ``log.jsonl`` and mirrors scalars to TensorBoard.

    On ranks other than 0 (``enabled=False``) every method is a no-op.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, progress: bool = True,
                 total_steps: int = 0, initial_step: int = 0) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._bar = None
        self._jsonl = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "log.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        except ImportError:  # tensorboard is optional at run time
            self._tb = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr)
        self._t0 = time.time()

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` (numbers) under ``kind`` ("train", "eval", "eval_ema"...)."""
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, "time": round(time.time() - self._t0, 3)}
        rec.update({k: _clean(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if self._bar is not None and kind == "train":
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "lr")})
        if kind != "train":
            self.write(f"[{kind} step {step}] " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))

    def advance(self, n: int = 1) -> None:
        """Advance the progress bar."""
        if self._bar is not None:
            self._bar.update(n)

    def write(self, msg: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def save_json(self, name: str, obj: Any) -> None:
        """Write ``run_dir/name`` as JSON."""
        if self.enabled:
            (self.run_dir / name).write_text(json.dumps(obj, indent=2, default=_clean))

    def close(self) -> None:
        """Flush and close everything."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item") and getattr(v, "numel", lambda: 2)() == 1:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
