"""Checkpoint readers: `open_reader(path)` picks the right one from what the path holds."""
from __future__ import annotations

import functools
from pathlib import Path

from .base import CheckpointError, Reader, parse_layers, unpermute_rotary
from .gguf_file import GGUFReader
from .hf import HFReader
from .meta import MetaReader

__all__ = ["CheckpointError", "Reader", "open_reader", "parse_layers", "unpermute_rotary",
           "GGUFReader", "HFReader", "MetaReader"]


def open_reader(path: str | Path) -> Reader:
    """Open a checkpoint: a .gguf file, a Meta dir (params.json), or a Hugging Face dir (config.json)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint path does not exist: {p}")
    if p.is_file():
        if p.suffix == ".gguf":
            st = p.stat()
            return _gguf_reader(p.resolve(), st.st_mtime_ns, st.st_size)
        if p.name in ("config.json", "params.json") or p.suffix in (".safetensors", ".bin", ".pth"):
            return open_reader(p.parent)
        raise CheckpointError(f"{p}: unknown checkpoint file type; give a .gguf file or a model directory")
    if (p / "params.json").exists():
        return MetaReader(p)
    if (p / "config.json").exists():
        return HFReader(p)
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return open_reader(ggufs[0])
    raise CheckpointError(f"{p}: not a recognised checkpoint directory; expected params.json + consolidated.*.pth "
                          f"(Meta), config.json + weights (Hugging Face), or one .gguf file")


@functools.lru_cache(maxsize=8)
def _gguf_reader(path: Path, mtime_ns: int, size: int) -> GGUFReader:
    # Parsing a GGUF header walks every metadata field (SmolLM2's 49k-token vocabulary takes
    # seconds); readers are read-only, so one per unchanged file is shared.
    return GGUFReader(path)
