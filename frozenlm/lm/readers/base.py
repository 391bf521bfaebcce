"""What every checkpoint reader provides, and the checks they share."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import CheckpointError
from ..config import BlockConfig


def unpermute_rotary(w: Tensor, n_heads: int) -> Tensor:
    """Meta/llama.cpp interleaved q/k row order -> Hugging Face (rotate_half) row order.

    Rows of each head are stored as pairs (x0, x1), (x2, x3), ...; HF stores all first
    members, then all second members. Without RoPE both give the same q.k, but one layout
    makes weights comparable across sources and the optional RoPE path correct.
    """
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *rest).transpose(1, 2).reshape(rows, *rest)


_LAYER_SPEC_HELP = ("give a layer index (-1 = last), a list ([30, 31]), a range string ('28:30', '-2:') "
                    "or a comma list ('-2,-1')")


def _layer_int(x: Any, spec: Any) -> int:
    # bool is an int subclass (True would silently mean layer 1); floats are refused unless whole.
    if isinstance(x, bool) or isinstance(x, float) and not x.is_integer():
        raise CheckpointError(f"layer spec {spec!r} is not valid ({x!r} is not a layer index): {_LAYER_SPEC_HELP}")
    try:
        return int(x)
    except (TypeError, ValueError):
        raise CheckpointError(f"layer spec {spec!r} is not valid ({x!r} is not a layer index): "
                              f"{_LAYER_SPEC_HELP}") from None


def parse_layers(spec: Any, n_layers: int) -> list[int]:
    """Turn -1, [30, 31], "-2:", "28:30", "31" or "-2,-1" into absolute indices, checked:
    in range, each layer once, and nothing that is not an integer index (True, 1.5, "abc")."""
    if isinstance(spec, (int, float)):
        items: list[Any] = [_layer_int(spec, spec)]
    elif isinstance(spec, str):
        s = spec.strip()
        if ":" in s:
            a, b = s.split(":", 1)
            start = _layer_int(a, spec) if a.strip() else 0
            stop = _layer_int(b, spec) if b.strip() else n_layers
            start = start + n_layers if start < 0 else start
            stop = stop + n_layers if stop < 0 else stop
            items = list(range(start, stop))
            if not items:
                raise CheckpointError(f"layer range {spec!r} is empty for a model with {n_layers} layers")
        else:
            items = [_layer_int(t, spec) for t in s.split(",") if t.strip()]
    elif isinstance(spec, (list, tuple, range)):
        items = [_layer_int(t, spec) for t in spec]
    else:
        raise CheckpointError(f"layer spec {spec!r} is not valid: {_LAYER_SPEC_HELP}")
    if not items:
        raise CheckpointError("no layers selected: give at least one index (e.g. -1 for the last layer)")
    out: list[int] = []
    for i in items:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise CheckpointError(f"layer index {i} is out of range: the model has {n_layers} layers "
                                  f"(valid: 0..{n_layers - 1} or -{n_layers}..-1)")
        if j in out:
            raise CheckpointError(f"layer spec {spec!r} selects layer {j} twice; each layer can be used once "
                                  f"(several layers run in the order given)")
        out.append(j)
    return out


class Reader(ABC):
    """Reads single layers of a language-model checkpoint without loading the rest.

    Subclasses set `self.path`, `self.config` (a BlockConfig) and `self.format`, and map
    their own tensor names onto the canonical names of `BlockConfig.expected_shapes()`.
    """

    path: Path
    config: BlockConfig
    format: str

    @abstractmethod
    def layer_keys(self, i: int) -> dict[str, str]:
        """Canonical name -> the file's own tensor name(s) for layer i (for messages/inspect)."""

    def key_pattern(self, i: int, canon: str) -> str | None:
        """The file's own name for canonical tensor `canon` of layer i, whether or not it is present."""
        return None

    @abstractmethod
    def _read_layer(self, i: int) -> dict[str, Tensor]:
        """Canonical name -> tensor for layer i, in HF row layout."""

    @abstractmethod
    def tensor_info(self, i: int) -> list[tuple[str, tuple[int, ...], str]]:
        """(file tensor name, shape, dtype or quantisation) of layer i, without reading data."""

    def describe(self) -> dict[str, Any]:
        """Summary for `frozenlm inspect`."""
        c = self.config
        return {"path": str(self.path), "format": self.format, "arch": c.arch, "family": c.family,
                "layers": c.n_layers, "dim": c.dim, "heads": c.n_heads, "kv_heads": c.n_kv_heads,
                "head_dim": c.head_dim, "ffn_dim": c.ffn_dim, "norm_eps": c.norm_eps, "act": c.act,
                "pre_norm": c.pre_norm, "params_per_block": c.params_per_block(),
                **{k: getattr(c, k) for k in ("qk_norm", "post_norms", "query_scale", "attn_softcap") if getattr(c, k)},
                **self._positions_summary()}

    def _positions_summary(self) -> dict[str, Any]:
        """What rope='1d' / mask='causal' will reproduce of the source (only the facts that apply)."""
        c = self.config
        out: dict[str, Any] = {}
        if c.family == "llama":
            out["rope_theta"] = c.rope_theta
            out["rope_scaling"] = (c.rope_scaling or {}).get("rope_type", "none")
        windows = {w for w in (c.layer_windows or []) if w is not None}
        if windows:
            out["sliding_window"] = {w: [i for i in range(c.n_layers) if c.layer_window(i) == w] for w in windows}
        if c.local_rope:
            out["sliding_layers_rope"] = {"rope_theta": c.local_rope["rope_theta"],
                                          "rope_scaling": (c.local_rope["rope_scaling"] or {}).get("rope_type", "none")}
        nope = [i for i in range(c.n_layers) if not c.layer_has_rope(i)]
        if nope:
            out["no_rope_layers"] = nope
        if c.unsupported:
            out["not_reproduced"] = dict(c.unsupported)
        return out

    def canonical_shapes(self, i: int) -> dict[str, tuple[int, ...]]:
        """Canonical name -> shape of layer i's tensors as they will be loaded, from file metadata only."""
        # The same conversion as reading, on shape-only tensors: no data is read.
        canon = {f: c for c, f in self.layer_keys(i).items()}
        metas = self._to_canonical({canon[name]: torch.empty(shape, device="meta")
                                    for name, shape, _ in self.tensor_info(i)})
        return {c: tuple(t.shape) for c, t in metas.items()}

    def _to_canonical(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """File tensors under canonical names -> the block's layout (fused projections split)."""
        return split_fused(out, self.config)

    def shape_problems(self, i: int, shapes: dict[str, tuple[int, ...]] | None = None) -> list[dict[str, Any]]:
        """Every way layer i's tensors (canonical name -> shape; default: read from the file's
        metadata) disagree with the config: missing, unexpected (the config declares no such
        tensor, e.g. a bias flag is off) or of another shape. Each entry names the file's tensor."""
        shapes = self.canonical_shapes(i) if shapes is None else shapes
        expected = self.config.expected_shapes()
        keys = self.layer_keys(i)
        out: list[dict[str, Any]] = []
        for name in sorted(set(expected) | set(shapes)):
            want, got = expected.get(name), shapes.get(name)
            if want == got:
                continue
            kind = "missing" if got is None else "unexpected" if want is None else "shape"
            tensor = file_name(keys, name, self.key_pattern(i, name))
            msg = {"missing": f"{tensor!r} is missing (the config implies shape {want})",
                   "unexpected": f"{tensor!r} {got} is in the file, but the config declares no such tensor "
                                 f"(a bias or other option is off in the config)",
                   "shape": f"{tensor!r} has shape {got}, but the config implies {want}"}[kind]
            out.append({"tensor": tensor, "canonical": name, "problem": kind, "shape": got, "expected": want,
                        "message": msg})
        return out

    def config_summary(self) -> str:
        """The config values that decide the shapes, for messages."""
        c = self.config
        flags = ", ".join(f for f in ("qkv_bias", "out_bias", "mlp_bias") if getattr(c, f))
        return (f"dim={c.dim}, heads={c.n_heads}, kv_heads={c.n_kv_heads}, head_dim={c.head_dim}, "
                f"ffn_dim={c.ffn_dim}" + (f", {flags}" if flags else ""))

    def read_layer(self, i: int) -> dict[str, Tensor]:
        """Tensors of layer i (canonical names), checked against the config's names and shapes."""
        i = parse_layers(i, self.config.n_layers)[0]
        tensors = self._read_layer(i)
        problems = self.shape_problems(i, {k: tuple(t.shape) for k, t in tensors.items()})
        if problems:
            raise CheckpointError(
                f"{self.path}: layer {i} does not match the {self.config.arch or self.config.family} config "
                f"({self.config_summary()}): " + "; ".join(p["message"] for p in problems)
                + ". The config and weights disagree: fix the config file or use the weights it belongs to")
        return tensors


FUSED = {"attn.q": "attn.qkv", "attn.k": "attn.qkv", "attn.v": "attn.qkv", "ffn.gate": "ffn.gate_up",
         "ffn.up": "ffn.gate_up"}


def split_fused(out: dict[str, Tensor], cfg: BlockConfig) -> dict[str, Tensor]:
    """Split fused `attn.qkv.*` (rows q, k, v: GPT-2, Phi-3) and `ffn.gate_up.*` (rows gate, up: Phi-3)
    tensors in place. One whose rows do not add up is left fused, so the shape check names it."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for fused, parts, sizes in (("attn.qkv", "qkv", [q, kv, kv]), ("ffn.gate_up", ("gate", "up"), [cfg.ffn_dim] * 2)):
        for p in ("weight", "bias"):
            t = out.get(f"{fused}.{p}")
            if t is not None and t.shape[0] == sum(sizes):
                del out[f"{fused}.{p}"]
                prefix = fused.split(".")[0]
                out.update({f"{prefix}.{c}.{p}": part for c, part in zip(parts, t.split(sizes, dim=0))})
    return out


def file_name(keys: dict[str, str], canon: str, would_be: str | None = None) -> str:
    """The file's name for a canonical tensor; parts of a fused tensor (qkv, gate_up) name the fused one."""
    if canon in keys:
        return keys[canon]
    if would_be:
        return would_be
    module, p = canon.rsplit(".", 1)
    fused = f"{FUSED.get(module, module)}.{p}"
    return f"{keys[fused]} ({module.split('.')[1]} part)" if fused in keys else canon


def check_layer_numbers(path: Path, found: set[int], n_layers: int, pattern: str, count_key: str) -> None:
    """Refuse a file whose layer numbers are not exactly 0..n_layers-1 (the count its config states):
    otherwise `-1` would silently pick a layer that is not the last one, or a layer would be missing."""
    if found == set(range(n_layers)):
        return
    missing = sorted(set(range(n_layers)) - found)
    extra = sorted(found - set(range(n_layers)))
    detail = "; ".join(s for s in (f"missing layers {_ranges(missing)}" if missing else "",
                                   f"unexpected layers {_ranges(extra)}" if extra else "") if s)
    raise CheckpointError(f"{path}: {count_key} says {n_layers} layers, but the tensors named {pattern!r} "
                          f"disagree ({detail}); fix the config or use the complete checkpoint")


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (short messages for long layer lists)."""
    out: list[str] = []
    for x in xs:
        if out and out[-1].split("-")[-1] == str(x - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ", ".join(out)


def check_exists(path: Path, what: str) -> None:
    """Raise a CheckpointError naming a missing file."""
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file that must exist, naming it in every error."""
    import json
    check_exists(path, what)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def safe_torch_load(path: Path) -> dict[str, Tensor]:
    """Memory-mapped, weights-only torch.load with readable errors (never unrestricted pickle)."""
    import pickle
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message starts with generic advice; the line naming the offending global is the useful one.
        import re
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        m = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
        detail = f"it holds {m.group(1)}" if m else msg.strip().splitlines()[-1] if msg.strip() else type(e).__name__
        raise CheckpointError(
            f"{path} contains pickled objects other than tensors ({detail}); loading it was refused because "
            f"unpickling it could run arbitrary code. Re-save it as safetensors or as a plain "
            f"state_dict of tensors.") from None
    except RuntimeError as e:
        msg = str(e)
        if "mmap" in msg or "zip" in msg.lower():
            # Legacy (pre-1.6) torch.save files cannot be memory-mapped; load them whole.
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e2:  # noqa: BLE001 - re-raised with the file name
                raise CheckpointError(f"cannot read {path}: {str(e2).splitlines()[0]} "
                                      f"(truncated or not a torch checkpoint?)") from None
        raise CheckpointError(f"cannot read {path}: {msg.splitlines()[0]} "
                              f"(truncated or not a torch checkpoint?)") from None
    except EOFError:
        raise CheckpointError(f"cannot read {path}: unexpected end of file (truncated download?)") from None
