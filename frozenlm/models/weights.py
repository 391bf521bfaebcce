"""Import pretrained backbone weights (timm / DeiT / CLIP, Point-BERT, VideoMAE files the user has) safely.

Every loader reads with :func:`read_state_dict` (safetensors, or weights-only unpickling), maps the
file's names to the model's, and returns one :class:`LoadReport`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from ..lm.readers.base import CheckpointError, safe_torch_load


@dataclass
class LoadReport:
    """What a backbone loader did with a checkpoint's tensors."""

    loaded: list[str] = field(default_factory=list)      # model keys taken from the file
    missing: list[str] = field(default_factory=list)     # model keys the file lacks (trained from scratch)
    unexpected: list[str] = field(default_factory=list)  # file keys the model has no use for
    dropped: list[str] = field(default_factory=list)     # file keys left out: a head of another shape, fixed tables

    def summary(self) -> str:
        """One human-readable paragraph."""
        def short(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"
        return (f"loaded {len(self.loaded)} tensors; missing: {short(self.missing)}; "
                f"unexpected: {short(self.unexpected)}; dropped: {short(self.dropped)}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """safetensors or weights-only torch file; unwraps {'model': ...}/{'state_dict': ...}/{'base_model': ...},
    strips 'module.'."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"backbone weights not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            sd = load_file(str(p))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{p} is not a valid safetensors file ({e})") from None
    else:
        sd = safe_torch_load(p)
    for key in ("model", "state_dict", "base_model", "module", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise CheckpointError(f"{p} does not contain a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, Tensor)}


def match_weights(model: nn.Module, sd: dict[str, Tensor], path: str | Path, heads: tuple[str, ...], hint: str,
                  file_names: dict[str, str] | None = None) -> tuple[dict[str, Tensor], LoadReport]:
    """Split ``sd`` (already in the model's names) into the tensors to load and a report.

    The LMLayer is never taken from a file. A head (``heads`` prefixes) of another shape is dropped
    (another class count: trained from scratch); any other shape mismatch raises CheckpointError
    naming the keys and ``hint``. ``file_names`` maps model names back to the file's for the report.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_layer.")}
    names = file_names or {}
    clean: dict[str, Tensor] = {}
    report, bad = LoadReport(), []
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(names.get(k, k))
        elif v.shape == own[k].shape:
            clean[k] = v
        elif k.startswith(heads):
            report.dropped.append(f"{names.get(k, k)} {tuple(v.shape)} (model head {tuple(own[k].shape)})")
        else:
            bad.append(f"{names.get(k, k)} has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}")
    if bad:
        raise CheckpointError(f"{path}: shape mismatch with the model: " + "; ".join(bad[:5]) + f" ({hint})")
    report.unexpected.sort()
    report.loaded = sorted(clean)
    report.missing = sorted(k for k in own if k not in clean and not k.endswith("num_batches_tracked"))
    return clean, report


def apply_weights(model: nn.Module, clean: dict[str, Tensor], report: LoadReport, tag: str, path: str | Path,
                  verbose: bool) -> LoadReport:
    """Load the matched tensors into ``model`` and print the report's summary (stderr) when ``verbose``."""
    model.load_state_dict(clean, strict=False)
    if verbose:
        print(f"[{tag}] {path}: {report.summary()}", file=sys.stderr, flush=True)
    return report


def load_backbone_weights(vit: nn.Module, path: str | Path, verbose: bool = True) -> LoadReport:
    """Load a timm/DeiT ViT checkpoint, or the image tower of an OpenAI-CLIP / open_clip checkpoint
    (keys `visual.*`, converted to timm's names by timm's own filter); resample pos_embed to the model's
    grid; drop a mismatched head, and any head when the model has none (num_classes=0). Anything else
    missing or unexpected is an error."""
    from timm.layers import resample_abs_pos_embed
    sd = read_state_dict(path)
    own = vit.state_dict()
    if "visual.class_embedding" in sd:  # OpenAI CLIP / open_clip layout; the text tower's keys are skipped
        from timm.models.vision_transformer import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, vit)
        if "head.weight" not in own:  # CLIP's image projection became head.*; a headless tower ignores it
            sd.pop("head.weight", None)
            sd.pop("head.bias", None)
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
        sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], list(vit.patch_embed.grid_size),
                                                 num_prefix_tokens=prefix)
    clean, report = match_weights(vit, sd, path, ("head.",), "is it a ViT of the same size?")
    missing = [m for m in report.missing if not m.startswith("head.")]
    if missing or report.unexpected:
        raise CheckpointError(f"{path}: does not match the backbone. missing keys: {missing[:10]}; "
                              f"unexpected keys: {report.unexpected[:10]} (is it a ViT of the same size?)")
    return apply_weights(vit, clean, report, "vit", path, verbose)
