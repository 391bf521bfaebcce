"""Shared helpers for the video tests: SmolLM2's last block read once per test session.

Opening the GGUF parses its 49k-token vocabulary (~10 s here), so every LMLayer in these tests
is built around one already-loaded BlockStack instead of re-reading the file.
"""
from __future__ import annotations

import functools

from frozenlm import LMLayer, load_blocks
from frozenlm.lm.stack import BlockStack


@functools.cache
def smollm2_last_block() -> BlockStack:
    """SmolLM2-135M's last block (576 wide), frozen."""
    return load_blocks("smollm2-135m", [-1])


def lm_layer(variant: str, dim: int = 128) -> LMLayer:
    """An LMLayer of `variant` ("frozen" or "mlp") on the shared SmolLM2 block."""
    return LMLayer(dim, variant=variant, blocks=smollm2_last_block(), init="default")
