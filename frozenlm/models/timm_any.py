"""`timm:<name>`: any timm model as a backbone, with the LMLayer spliced after the module `at` names."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from torch import nn

from ..layer import LMLayer
from ..lm.readers.base import CheckpointError
from ..splice import freeze_backbone as freeze_backbone_
from ..splice import splice, split_at
from .registry import register_fallback
from .weights import apply_weights, match_weights, read_state_dict

PREFIX = "timm:"


def _create(name: str, **kw: Any) -> nn.Module:
    import timm
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"{PREFIX}{name}: {name!r} is not a timm model name. Close matches: {close or 'none'}")
    # img_size comes from the data by default; a convnet takes any input size and has no such argument.
    # A zero drop_path_rate is the default anyway. Both are left out for models that do not take them.
    optional = {k: kw[k] for k in ("img_size", "drop_path_rate") if k in kw and (k == "img_size" or not kw[k])}
    while True:
        try:
            return timm.create_model(name, pretrained=False, **kw)
        except TypeError as e:
            dropped = next((k for k in optional if f"'{k}'" in str(e)), None)
            if dropped is None:
                raise
            kw.pop(dropped)
            optional.pop(dropped)


def load_timm_weights(model: nn.Module, path: str | Path, verbose: bool = True) -> Any:
    """A local state dict in the timm model's own names (safetensors or weights-only .pth); a head of
    another size is dropped; any other missing or unexpected key is an error."""
    get = getattr(model, "get_classifier", None)
    clf = get() if callable(get) else None
    head = next((p for p, m in model.named_modules() if clf is not None and m is clf and p), None)
    heads = (f"{head}.",) if head else ()
    clean, report = match_weights(model, read_state_dict(path), path, heads, "is it the same timm model?")
    missing = [m for m in report.missing if not (heads and m.startswith(heads))]
    if missing or report.unexpected:
        raise CheckpointError(f"{path}: does not match the timm model. missing keys: {missing[:10]}; "
                              f"unexpected keys: {report.unexpected[:10]} (is it the same timm model?)")
    return apply_weights(model, clean, report, "timm", path, verbose)


def _insert_point(model: nn.Module, name: str, position: str | None) -> str:
    feats = [f["module"] for f in getattr(model, "feature_info", []) or []]
    if not feats or position in ("head",):
        raise ValueError(f"{PREFIX}{name}: set model.lm.at to the module the LM layer follows (e.g. "
                         f"{feats[-1] if feats else 'blocks.11'!r}); model.position={position!r} has no meaning for it")
    # timm's feature_info lists the stages (a ViT: every block): tail = after the last one, as the paper
    # places the block; middle = after stage len//2 - 1 (a ViT: before block depth//2, as the presets).
    return feats[-1] if position in (None, "tail") else feats[len(feats) // 2 - 1]


def build_timm(name: str, lm: str | dict[str, Any] | LMLayer | None = None, num_classes: int = 1000,
               img_size: int | None = None, in_chans: int = 3, drop_path_rate: float = 0.0,
               pretrained_path: str | Path | None = None, position: str | None = "tail",
               freeze_backbone: bool = False, freeze: str | None = None, grad_checkpointing: bool = False,
               **timm_kwargs: Any) -> nn.Module:
    """``timm:<name>`` (any timm model, random init or a local ``pretrained_path``) with ``lm`` spliced in.

    lm: as the presets' (None = the baseline: an identity LMLayer is still spliced, so every variant has
    the same module tree), and its ``at`` key names the module the LM layer follows (``blocks.11``,
    ``stages.2``, ``layer3``); without it, ``position`` picks one from timm's ``feature_info`` (tail: after
    the last stage). freeze_backbone (or ``freeze="backbone"``): train only the LM layer's maps and timm's
    classifier (``get_classifier()``); the frozen backbone stays in eval mode. grad_checkpointing: timm's
    ``set_grad_checkpointing`` (its blocks, with an LM layer spliced inside one, are recomputed in backward).
    """
    if position not in (None, "head", "middle", "tail"):
        raise ValueError(f"model.position must be head | middle | tail, got {position!r}")
    if freeze not in (None, "none", "backbone"):
        raise ValueError(f"freeze must be null or 'backbone', got {freeze!r}")
    base = name.removeprefix(PREFIX)
    kw = dict(num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate, **timm_kwargs)
    if img_size is not None:
        kw["img_size"] = img_size
    model = _create(base, **kw)
    if pretrained_path:
        load_timm_weights(model, pretrained_path)
    lm, at = split_at(lm)
    if at is not None and position not in (None, "tail"):
        raise ValueError(f"{name}: model.lm.at={at!r} and model.position={position!r} both name an insert point; "
                         "keep one (with model.lm.at set, leave model.position at tail)")
    at = at or _insert_point(model, name, position)
    if isinstance(lm, LMLayer):
        splice(model, at, lm)
    elif isinstance(lm, str):
        splice(model, at, lm)
    else:
        splice(model, at, **(lm if lm is not None else {"variant": "none"}))
    if freeze_backbone or freeze == "backbone":
        freeze_backbone_(model)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


register_fallback(lambda n: n.startswith(PREFIX), build_timm)
