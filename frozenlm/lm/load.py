"""`load_blocks`: build a BlockStack holding chosen layers of any supported checkpoint."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .catalog import resolve_source, split_source_spec
from .config import BlockConfig
from .readers import Reader, open_reader, parse_layers
from .stack import BlockStack

LayerSpec = int | str | Sequence[int]


def open_source(source: str | Path) -> Reader:
    """Reader for a catalog name or a local path."""
    return open_reader(resolve_source(source))


def resolve_layers(source: str | Path, layers: LayerSpec = (-1,)) -> tuple[Reader, list[int]]:
    """Reader for `source` (which may carry a `:LAYERS` suffix) and the absolute layer indices;
    a suffix wins over `layers`. No weights are read."""
    src, suffix = split_source_spec(str(source))
    reader = open_source(src)
    return reader, parse_layers(suffix if suffix is not None else layers, reader.config.n_layers)


def source_config(source: str | Path) -> BlockConfig:
    """Architecture of a source without reading any weights."""
    return open_source(split_source_spec(str(source))[0]).config


def load_blocks(source: str | Path, layers: LayerSpec = (-1,), dtype: torch.dtype | None = None,
                mask: str = "none", rope: str = "none", freeze: bool = True) -> BlockStack:
    """Load layers of a language model as a BlockStack; only those layers are read from disk.

    source: catalog name (`smollm2-135m`, `minilm-l6`), a GGUF file, a Meta or HF directory,
            optionally suffixed with `:LAYERS` (e.g. `~/llama-7b:31`, `path:-2:`).
    layers: index, negative index, list, or range string ("-2:", "28:30"); ignored if the
            source carries a suffix.
    dtype:  storage dtype (default: float32; bf16 halves memory).
    freeze: set requires_grad False on every parameter.
    """
    reader, idx = resolve_layers(source, layers)
    # Built on the meta device: no memory is allocated (or randomly initialised) for weights that
    # are about to be replaced, so peak memory stays ~1 copy of the layers being read.
    with torch.device("meta"):
        stack = BlockStack(reader.config, n_blocks=len(idx), mask=mask, rope=rope, layer_indices=idx)
    for blk, i in zip(stack.layers, idx):
        # read_layer has checked names and shapes against the config, so strict loading cannot fail.
        tensors = {k: _owned(t) for k, t in reader.read_layer(i).items()}
        blk.load_state_dict(tensors, strict=True, assign=True)
    stack.to(dtype or torch.float32)
    if freeze:
        stack.requires_grad_(False)
    return stack


def _owned(t: torch.Tensor) -> torch.Tensor:
    """`t` itself, or a compact copy when it is a view into a larger buffer (e.g. one third of a
    fused GPT-2 qkv weight), so parameters never pin memory they do not use."""
    if t.untyped_storage().nbytes() > t.numel() * t.element_size() or not t.is_contiguous():
        return t.contiguous().clone()
    return t


def tensor_digest(module: nn.Module) -> str:
    """SHA-256 over names, shapes, dtypes and bytes of a module's state (identifies frozen weights)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe_source(source: str | Path, layer: int | None = -1) -> dict[str, Any]:
    """Architecture summary of a source plus the tensors of one layer (read lazily) for `inspect`.

    `problems` lists every tensor of that layer that disagrees with the config (missing,
    unexpected, or another shape than the config's dims imply): loading that layer would fail.
    """
    reader = open_source(split_source_spec(str(source))[0])
    info = reader.describe()
    if layer is not None:
        i = parse_layers(layer, reader.config.n_layers)[0]
        info["layer"] = i
        info["tensors"] = [{"name": n, "shape": list(s), "dtype": d} for n, s, d in reader.tensor_info(i)]
        info["problems"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}
                            for p in reader.shape_problems(i)]
    return info
