"""Turn the `lm=` argument of model factories into an LMLayer."""
from __future__ import annotations

from typing import Any

from ..layer import LMLayer


def make_lm_layer(dim: int, lm: str | dict[str, Any] | LMLayer | None, **defaults: Any) -> LMLayer:
    """`lm` may be None (baseline), a source string ("smollm2-135m", "~/llama-7b:31"), a dict of
    LMLayer arguments ({source, layers, variant, residual, frozen_dtype, init, mask, rope}),
    or a ready LMLayer."""
    if isinstance(lm, LMLayer):
        return lm
    if lm is None:
        return LMLayer(dim, variant="none")
    if isinstance(lm, str):
        return LMLayer(dim, source=lm, **defaults)
    if isinstance(lm, dict):
        kw = {**defaults, **lm}
        if kw.get("variant") == "none":
            return LMLayer(dim, variant="none")
        return LMLayer(dim, **kw)
    raise TypeError(f"lm must be None, a source string, a dict or an LMLayer, not {type(lm).__name__}")
