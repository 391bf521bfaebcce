"""The parameter map between the authors' released models and frozenlm's (ziqipang/LM4VisualEncoding).

Every task's model in the authors' code is its backbone plus three attributes (``models/vit_llama.py``,
``video_understanding/modeling_finetune_llama.py``, ``pointcloud_classification/models/Point_BERT.py``):

==============================  ==========================================  =================================
authors' key                    frozenlm key                                what it is
==============================  ==========================================  =================================
``llama_dim_mapper1.weight``    ``lm_layer.proj_in.weight``                 F_L1, Linear(D -> 4096, no bias)
``llama_dim_mapper2.weight``    ``lm_layer.proj_out.weight``                F_L2, Linear(4096 -> D, no bias)
``llama.layers.J.<meta name>``  ``lm_layer.blocks.layers.J.<canonical>``    F_LM, Meta's LLaMA names; frozen,
                                                                            not stored: read from ``--lm``
``llama.norm.weight``           (none: frozenlm's unit RMSNorm)             must be all ones (never trained)
backbone keys                   image: ``vit.`` + key; video, point cloud:  the encoder F_E and the head
                                the same key
==============================  ==========================================  =================================

The frozen layer is stored in Meta's consolidated layout (the authors load ``consolidated.00.pth``):
``attention.wq/wk/wv/wo``, ``feed_forward.w1`` (gate) / ``w2`` (down) / ``w3`` (up),
``attention_norm``, ``ffn_norm``, with q/k rows in Meta's interleaved rotary order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import CheckpointError
from ..lm.readers.meta import KEYS as META_KEYS

__all__ = ["MAPPERS", "LLAMA_NORM", "SplitState", "split_state", "backbone_prefix", "authors_name", "HEAD_KEY",
           "AUTHORS_LAYER", "infer_model_name", "default_recipe"]

MAPPERS = {"llama_dim_mapper1.weight": "lm_layer.proj_in.weight",   # F_L1
           "llama_dim_mapper2.weight": "lm_layer.proj_out.weight"}  # F_L2
LLAMA_NORM = "llama.norm.weight"
_LLAMA_LAYER = re.compile(r"^llama\.layers\.(\d+)\.(.+)$")
_META_TO_CANON = {meta: canon for canon, meta in META_KEYS.items()}
#: the classifier weight of each task's model (its rows = the number of classes)
HEAD_KEY = {"image": "head.weight", "video": "head.weight", "pointcloud": "cls_head_finetune.3.weight"}
#: the LLaMA-7B layer the authors' code freezes: `first_layer` 31 in models/vit_llama.py and the
#: ScanObjectNN configs, 15 in video_understanding/modeling_finetune_llama.py
AUTHORS_LAYER = {"image": 31, "video": 15, "pointcloud": 31}


def backbone_prefix(task: str) -> str:
    """frozenlm's prefix of the backbone keys: ViTLM holds the timm ViT as ``vit``."""
    return "vit." if task == "image" else ""


def authors_name(task: str, key: str) -> str:
    """The authors' name of a frozenlm model key (for messages)."""
    for a, f in MAPPERS.items():
        if key == f:
            return a
    p = backbone_prefix(task)
    return key[len(p):] if p and key.startswith(p) else key


@dataclass
class SplitState:
    """An authors' state dict split by role; backbone keys already in frozenlm's names."""

    backbone: dict[str, Tensor] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # frozenlm key -> authors' key
    mappers: dict[str, Tensor] = field(default_factory=dict)  # frozenlm key -> F_L1 / F_L2 weight
    llama: list[dict[str, Tensor]] = field(default_factory=list)  # per stored layer: canonical name -> Meta tensor
    llama_names: list[dict[str, str]] = field(default_factory=list)  # per stored layer: canonical -> authors' key
    llama_norm: Tensor | None = None

    @property
    def has_lm(self) -> bool:
        """True when the checkpoint holds a LLaMA sandwich (the +LLaMA models, not the baselines)."""
        return bool(self.llama or self.mappers or self.llama_norm is not None)


def split_state(state: dict[str, Tensor], task: str, where: Any) -> SplitState:
    """Map every key of an authors' state dict exactly once: backbone, F_L1/F_L2, LLaMA layers, final norm.

    An unknown ``llama.*`` key, a missing tensor of a stored layer or a gap in the layer numbers is
    a CheckpointError naming the keys.
    """
    out, prefix = SplitState(), backbone_prefix(task)
    layers: dict[int, dict[str, Tensor]] = {}
    unknown: list[str] = []
    for k, v in state.items():
        m = _LLAMA_LAYER.match(k)
        if k in MAPPERS:
            out.mappers[MAPPERS[k]] = v
        elif k == LLAMA_NORM:
            out.llama_norm = v
        elif m and m.group(2) in _META_TO_CANON:
            layers.setdefault(int(m.group(1)), {})[_META_TO_CANON[m.group(2)]] = v
        elif k.startswith("llama."):
            unknown.append(k)
        else:
            out.backbone[prefix + k] = v
            out.names[prefix + k] = k
    if unknown:
        raise CheckpointError(f"{where}: keys of the LLaMA part that the authors' LLaMA block (Meta's names "
                              f"{sorted(_META_TO_CANON)}) does not have: {sorted(unknown)[:10]}")
    if sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"{where}: the stored LLaMA layers are numbered {sorted(layers)}; the authors' "
                              f"LLaMATransformer numbers them 0, 1, ... (llama.layers.0.* is its first layer)")
    for j in sorted(layers):
        missing = sorted(set(_META_TO_CANON.values()) - set(layers[j]))
        if missing:
            raise CheckpointError(f"{where}: LLaMA layer llama.layers.{j} lacks "
                                  f"{[f'llama.layers.{j}.{META_KEYS[c]}' for c in missing]}")
        out.llama.append(layers[j])
        out.llama_names.append({c: f"llama.layers.{j}.{META_KEYS[c]}" for c in layers[j]})
    if out.has_lm:
        checks = [(a, f in out.mappers) for a, f in MAPPERS.items()]
        checks += [(LLAMA_NORM, out.llama_norm is not None), ("llama.layers.0.*", bool(out.llama))]
        absent = [k for k, ok in checks if not ok]
        if absent:
            raise CheckpointError(f"{where}: the checkpoint holds part of the LLaMA sandwich but lacks {absent}; the "
                                  f"authors' +LLaMA models always have llama_dim_mapper1/2, llama.layers.* and "
                                  f"llama.norm.weight")
    return out


# --------------------------------------------------------------------- model names and recipes

_SIZES = ("tiny", "small", "base")


def infer_model_name(task: str, args: dict[str, Any] | None, state: dict[str, Tensor], where: Any) -> str:
    """frozenlm's model name for an authors' model: from ``args.model`` (image, video) or the shapes (point cloud).

    image: ``vit_llama_small_patch16_224`` / ``vit_small_patch16_224`` -> timm's ``vit_small_patch16_224``;
    video: ``vit_llama_small_patch16_224`` / ``vit_small_patch16_224`` -> ``videomae_small_patch16_224``;
    point cloud: the Point-BERT size whose width and depth match (``point_bert``: 12 x 384).
    """
    if task == "pointcloud":
        from ..models.pointbert import POINTBERT_SIZES
        width = state["cls_token"].shape[-1] if "cls_token" in state else None
        depth = len({k.split(".")[2] for k in state if k.startswith("blocks.blocks.")})
        for name, size in POINTBERT_SIZES.items():
            if size["trans_dim"] == width and size["depth"] == depth:
                return name
        raise CheckpointError(f"{where}: a Point-BERT of width {width} and depth {depth} is none of frozenlm's "
                              f"sizes {sorted(POINTBERT_SIZES)}; give --model and the sizes as overrides")
    name = str((args or {}).get("model") or "")
    m = re.fullmatch(r"vit_(?:llama_)?(tiny|small|base)_patch(\d+)_224", name)
    if not m:
        raise CheckpointError(f"{where}: args.model={name!r} is not one of the authors' ViT names "
                              f"(vit[_llama]_{{tiny,small,base}}_patchN_224); give --model")
    if task == "image":
        return f"vit_{m.group(1)}_patch{m.group(2)}_224"
    if m.group(1) == "tiny" or m.group(2) != "16":
        raise CheckpointError(f"{where}: args.model={name!r}: frozenlm's VideoMAE models are ViT-S/B patch 16; "
                              f"give --model")
    return f"videomae_{m.group(1)}_patch16_224"


_RECIPES = {
    ("image", "vit_tiny_patch16_224"): "image/imagenet_vit_t",
    ("image", "vit_small_patch16_224"): "image/imagenet_vit_s",
    ("image", "vit_base_patch16_224"): "image/imagenet_vit_b",
    ("video", "videomae_small_patch16_224"): "video/ssv2_vit_s",
    ("video", "videomae_base_patch16_224"): "video/ssv2_vit_b",
}


def default_recipe(task: str, model: str, has_lm: bool) -> str | None:
    """The shipped recipe (path under ``configs/``) an authors' model was trained with, or None.

    Point-cloud checkpoints do not record their ScanObjectNN split, so they always need ``--config``.
    """
    stem = _RECIPES.get((task, model))
    return None if stem is None else f"{stem}{'_llama7b' if has_lm else ''}.yaml"
