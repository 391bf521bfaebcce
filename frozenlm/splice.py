"""`splice`: put an LMLayer after any named submodule of any nn.Module; `freeze_backbone` around it.

The LMLayer becomes a child of the model (``model.lm_layer``), so ``.to()``, ``state_dict``, optimizers,
:func:`frozenlm.layer.frozen_param_names` / ``frozen_sources`` and the engine's checkpoints see it. A
forward hook on the named submodule passes that submodule's output through it: the submodule and every
existing state-dict key stay as they were (pretrained weights still load). The hook's state lives on a
plain object the model owns, so ``copy.deepcopy`` and pickling keep the copy's hook on the copy's LMLayer.

``frozenlm.splice`` is the function (the package re-exports it over this module's name); the module's
other names are imported with ``from frozenlm.splice import SpliceError, splices, ...``.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .errors import FrozenLMError
from .layer import LMLayer
from .lm.load import LayerSpec

__all__ = ["LAYOUTS", "SpliceError", "SpliceRecord", "freeze_backbone", "infer_dim", "splice", "splices",
           "split_at"]

#: Named token layouts: B batch, N tokens, D = C channels, H x W a grid (flattened to N = H*W tokens and back).
LAYOUTS = ("auto", "BND", "BCHW", "BHWC", "BD")
_ALIASES = {"tokens": "BND", "NCHW": "BCHW", "NHWC": "BHWC", "pooled": "BD"}
#: A custom layout: ``f(output, lm_layer) -> new output``, or a pair ``(to_tokens, from_tokens)`` with
#: ``to_tokens(output) -> (B, N, D)`` and ``from_tokens(tokens, output) -> new output``.
Layout = Union[str, Callable[[Any, LMLayer], Any], tuple[Callable[[Any], Tensor], Callable[[Tensor, Any], Any]]]
_SPLICES, _PINNED, _GUARD = "_frozenlm_splices", "_frozenlm_eval_pinned", "_frozenlm_guard"


class SpliceError(FrozenLMError):
    """``splice`` / ``freeze_backbone`` got a module path, width or layout that cannot work."""


@dataclass
class SpliceRecord:
    """One splice: the LMLayer attribute ``name`` on the model runs after the submodule ``at``."""

    name: str
    at: str
    layout: str            # a LAYOUTS name, or "custom:<qualname>" for a callable
    select: int | str | None
    dim: int
    dim_from: str          # where ``dim`` came from (a parameter path, or "dim=")

    def describe(self) -> dict[str, Any]:
        """The JSON form checkpoints record (and compare on load)."""
        return {"at": self.at, "layout": self.layout, "select": self.select, "dim": self.dim}


def _norm_layout(layout: Layout) -> tuple[str, Any]:
    if isinstance(layout, str):
        name = _ALIASES.get(layout, layout)
        if name not in LAYOUTS:
            raise SpliceError(f"layout={layout!r} is not one of {LAYOUTS} (or {sorted(_ALIASES)}); for any other "
                              "output give a callable f(output, lm_layer) or a pair (to_tokens, from_tokens)")
        return name, name
    if callable(layout):
        return f"custom:{getattr(layout, '__qualname__', type(layout).__name__)}", layout
    if isinstance(layout, tuple) and len(layout) == 2 and all(callable(f) for f in layout):
        names = "/".join(getattr(f, "__qualname__", type(f).__name__) for f in layout)
        return f"custom:{names}", layout
    raise SpliceError(f"layout must be a name {LAYOUTS}, a callable or a pair of callables, not {layout!r}")


def infer_dim(module: nn.Module) -> tuple[int | None, str, bool]:
    """(channel width, where it was read, whether that layer works channels-first) of ``module``'s output,
    from the last layer with a known output width in registration order (Linear, Conv, norms, attention);
    (None, "", False) when there is none. A heuristic: ``splice`` checks it against the real output."""
    for path, m in reversed(list(module.named_modules())):
        where = path or "(the module itself)"
        if isinstance(m, nn.Linear):
            return m.out_features, f"{where}.out_features", False
        if isinstance(m, _ConvNd):
            return m.out_channels, f"{where}.out_channels", True
        if isinstance(m, _NormBase):
            return m.num_features, f"{where}.num_features", True
        if isinstance(m, nn.GroupNorm):
            return m.num_channels, f"{where}.num_channels", True
        if isinstance(m, nn.MultiheadAttention):
            return m.embed_dim, f"{where}.embed_dim", False
        shape = getattr(m, "normalized_shape", None)  # LayerNorm, RMSNorm, timm's LayerNorm2d / RmsNorm
        if isinstance(shape, (tuple, list)) and shape and isinstance(shape[-1], int):
            return int(shape[-1]), f"{where}.normalized_shape", False
    return None, "", False


class _SpliceHook:
    """Forward hook: the submodule's output -> tokens -> LMLayer -> the same structure again."""

    def __init__(self, lm: LMLayer, record: SpliceRecord, layout: Any, channels_first: bool) -> None:
        self.lm, self.record, self.layout, self.channels_first = lm, record, layout, channels_first
        self.resolved: str | None = None  # an "auto" layout, fixed at the first call

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        rec = self.record
        if rec.layout.startswith("custom:") and rec.select is None:
            return self._custom(output)
        key, tensor = self._pick(output)
        new = self._custom(tensor) if rec.layout.startswith("custom:") else self._apply(tensor)
        return self._put(output, key, new)

    def _custom(self, value: Any) -> Any:
        if callable(self.layout):
            return self.layout(value, self.lm)
        to_tokens, from_tokens = self.layout
        tokens = to_tokens(value)
        if not isinstance(tokens, Tensor) or tokens.dim() != 3:
            raise SpliceError(f"splice at {self.record.at!r}: the layout's to_tokens returned "
                              f"{_describe(tokens)}, not a (B, N, D) tensor")
        return from_tokens(self.lm(tokens), value)

    def _pick(self, out: Any) -> tuple[Any, Tensor]:
        rec, sel = self.record, self.record.select
        if isinstance(out, Tensor):
            if sel is not None:
                raise SpliceError(f"splice at {rec.at!r}: select={sel!r} was given but the output is one tensor")
            return None, out
        if isinstance(out, Mapping):  # a dict or a transformers ModelOutput
            present = [k for k, v in out.items() if v is not None]
            if sel is None:
                tensors = [k for k in present if isinstance(out[k], Tensor)]
                if len(present) != 1 or len(tensors) != 1:
                    raise SpliceError(f"splice at {rec.at!r}: the output is a {type(out).__name__} with fields "
                                      f"{present}; pass select=<field> to say which one goes through the LM layer "
                                      "(the others are returned unchanged)")
                sel = tensors[0]
            if sel not in present or not isinstance(out[sel], Tensor):
                raise SpliceError(f"splice at {rec.at!r}: select={sel!r} is not a tensor field of the output "
                                  f"{type(out).__name__} (fields {present})")
            return sel, out[sel]
        if isinstance(out, (tuple, list)):
            if sel is None:
                if len(out) != 1:
                    raise SpliceError(f"splice at {rec.at!r}: the output is a {type(out).__name__} of {len(out)} "
                                      f"({', '.join(_describe(v) for v in out)}); pass select=<index> to say which "
                                      "element goes through the LM layer")
                sel = 0
            if not isinstance(sel, int) or not -len(out) <= sel < len(out) or not isinstance(out[sel], Tensor):
                raise SpliceError(f"splice at {rec.at!r}: select={sel!r} is not the index of a tensor in the "
                                  f"output ({', '.join(_describe(v) for v in out)})")
            return sel, out[sel]
        raise SpliceError(f"splice at {rec.at!r}: cannot splice into an output of type {type(out).__name__}; "
                          "pass layout=(to_tokens, from_tokens) or a callable f(output, lm_layer)")

    @staticmethod
    def _put(out: Any, key: Any, new: Any) -> Any:
        if key is None:
            return new
        if isinstance(out, Mapping):
            if dataclasses.is_dataclass(out):  # ModelOutput: the same class with one field replaced
                return dataclasses.replace(out, **{key: new})
            return type(out)({**out, key: new}) if type(out) is not dict else {**out, key: new}
        items = list(out)
        items[key] = new
        if hasattr(out, "_replace"):  # namedtuple
            return type(out)(*items)
        return type(out)(items)

    def _apply(self, x: Tensor) -> Tensor:
        layout = self.record.layout if self.record.layout != "auto" else (self.resolved or self._resolve(x))
        self._check(x, layout)
        if layout == "BND":
            return self.lm(x)
        if layout == "BD":
            return self.lm(x[:, None])[:, 0]
        b, h, w, c = (x.shape[0], x.shape[2], x.shape[3], x.shape[1]) if layout == "BCHW" else x.shape
        if layout == "BCHW":
            y = self.lm(x.flatten(2).transpose(1, 2))
            return y.transpose(1, 2).reshape(b, c, h, w)
        return self.lm(x.reshape(b, h * w, c)).reshape(b, h, w, c)

    def _resolve(self, x: Tensor) -> str:
        rec, d, shape = self.record, self.record.dim, tuple(x.shape)
        hint = (f"the LM layer's in_dim {d} was read from {rec.dim_from}" if rec.dim_from != "dim="
                else f"dim={d} was given")
        fix = "pass layout= (BND, BCHW, BHWC, BD or a callable) and, if the width is wrong, dim="
        if x.dim() == 2 and shape[1] == d:
            layout = "BD"
        elif x.dim() == 3 and shape[2] == d and not (self.channels_first and rec.dim_from != "dim="):
            layout = "BND"
        elif x.dim() == 4 and (shape[1] == d) != (shape[3] == d):
            layout = "BCHW" if shape[1] == d else "BHWC"
            if layout == "BHWC" and self.channels_first and rec.dim_from != "dim=":
                raise SpliceError(f"splice at {rec.at!r}: output {shape} looks channels-last, but {hint}, a "
                                  f"channels-first layer; the width may be wrong: {fix}")
        elif x.dim() == 4 and shape[1] == d:
            raise SpliceError(f"splice at {rec.at!r}: output {shape} is ambiguous (channels first or last? both "
                              f"axes 1 and 3 have {d}); {fix}")
        else:
            raise SpliceError(f"splice at {rec.at!r}: cannot tell the token layout of output {shape} ({hint}); {fix}")
        self.resolved = layout
        return layout

    def _check(self, x: Tensor, layout: str) -> None:
        axis = {"BND": 2, "BD": 1, "BCHW": 1, "BHWC": 3}[layout]
        ndim = {"BND": 3, "BD": 2, "BCHW": 4, "BHWC": 4}[layout]
        if x.dim() != ndim or x.shape[axis] != self.record.dim:
            raise SpliceError(f"splice at {self.record.at!r}: layout {layout} expects a {ndim}-D output with "
                              f"{self.record.dim} channels on axis {axis}, got shape {tuple(x.shape)}")


def _describe(v: Any) -> str:
    return f"Tensor{tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__


class _Guard:
    """Forward pre-hook on the model: keeps each splice hook on the module now at its path (a module
    replaced after splicing, e.g. by SyncBatchNorm conversion, gets it too) and pins a frozen backbone
    in eval mode after ``model.train()``."""

    def __call__(self, root: nn.Module, args: Any) -> None:
        for rec in getattr(root, _SPLICES, {}).values():
            hook = _hook_of(root, rec.name)
            lm = getattr(root, rec.name, None)
            if isinstance(lm, LMLayer) and hook.lm is not lm:
                hook.lm = lm
            target = root.get_submodule(rec.at)
            if not any(h is hook for h in target._forward_hooks.values()):
                target.register_forward_hook(hook)
        if root.training:
            for path in getattr(root, _PINNED, ()):
                root.get_submodule(path).eval()


def _hook_of(root: nn.Module, name: str) -> _SpliceHook:
    """The hook object of splice ``name`` on ``root``."""
    return root.__dict__["_frozenlm_hooks"][name]


def _ensure_guard(model: nn.Module) -> None:
    if not model.__dict__.get(_GUARD):
        model.register_forward_pre_hook(_Guard())
        model.__dict__[_GUARD] = True


def splices(model: nn.Module) -> dict[str, SpliceRecord]:
    """{LMLayer attribute name: SpliceRecord} of every splice on ``model`` (empty when none)."""
    return dict(getattr(model, _SPLICES, {}))


def _resolve_at(model: nn.Module, at: str) -> nn.Module:
    if not isinstance(at, str) or not at:
        raise SpliceError(f"at must name a submodule of the model (e.g. 'blocks.11'), got {at!r}")
    mods = dict(model.named_modules())
    if at not in mods:
        close = difflib.get_close_matches(at, list(mods), n=5, cutoff=0.5)
        top = [n for n, _ in model.named_children()]
        raise SpliceError(f"at={at!r} names no submodule of {type(model).__name__}. Close matches: "
                          f"{close or 'none'}; its top-level modules: {top} (list all: [n for n, _ in "
                          "model.named_modules()])")
    target = mods[at]
    for path, m in model.named_modules():
        if isinstance(m, LMLayer) and (at == path or at.startswith(path + ".")):
            raise SpliceError(f"at={at!r} is inside the LMLayer {path!r}; splice after a module of the backbone")
    paths = [p for p, m in model.named_modules(remove_duplicate=False) if m is target]
    if len(paths) > 1:
        raise SpliceError(f"the module at {at!r} is shared (also at {[p for p in paths if p != at]}); a hook on it "
                          "would run the LM layer at every use. Splice after a module used once")
    return target


def splice(model: nn.Module, at: str, source: str | Path | LMLayer = "smollm2-135m", layers: LayerSpec | None = None, *,
           dim: int | None = None, layout: Layout = "auto", select: int | str | None = None,
           name: str | None = None, **lmlayer_options: Any) -> nn.Module:
    """Insert an LMLayer after the submodule ``at`` of ``model`` and return ``model`` (changed in place).

    source, layers, **lmlayer_options: as :class:`frozenlm.LMLayer` (variant, residual, frozen_dtype, init,
        attn, ...; layers default: the LMLayer's, the last layer); or ``source`` a ready LMLayer (its
        ``in_dim`` is the width).
    dim: the channel width of ``at``'s output; default: read from the last layer of ``at`` that has an
        output width (:func:`infer_dim`); checked against the real output at the first call.
    layout: how the output becomes tokens: "auto" (from its shape: (B, N, D), (B, C, H, W), (B, H, W, C)
        or (B, D); an ambiguous shape is an error), one of those by name, a callable
        ``f(output, lm_layer) -> output`` or a pair ``(to_tokens, from_tokens)``.
    select: which element of a tuple output (index) or field of a dict / transformers ModelOutput
        (name) goes through; default: the only one (a 1-tuple, a ModelOutput with one field set).
    name: the LMLayer's attribute on ``model``; default ``lm_layer`` (``lm_layer_1``, ... when taken).
    """
    if isinstance(model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        raise SpliceError(f"cannot splice into a bare {type(model).__name__}: it would run (or list) the LMLayer "
                          "as one more child. Wrap it in a module with its own forward first")
    target = _resolve_at(model, at)
    layout_name, layout_obj = _norm_layout(layout)
    channels_first = False
    if isinstance(source, LMLayer):
        if lmlayer_options or layers is not None:
            raise SpliceError("source is a ready LMLayer: give no layers= or LMLayer options with it")
        if dim is not None and dim != source.in_dim:
            raise SpliceError(f"dim={dim} but the given LMLayer has in_dim {source.in_dim}")
        dim, dim_from = source.in_dim, "dim="
    elif dim is not None:
        dim_from = "dim="
    else:
        dim, dim_from, channels_first = infer_dim(target)
        dim_from = f"{at}.{dim_from}" if not dim_from.startswith("(") else at
        if dim is None:
            raise SpliceError(f"cannot tell the channel width of the output of {at!r} ({type(target).__name__} has "
                              "no Linear, Conv, norm or attention layer); pass dim=<channels>")
    if not isinstance(dim, int) or dim <= 0:
        raise SpliceError(f"dim must be a positive int, got {dim!r}")
    if name is None:
        name, i = "lm_layer", 1
        while hasattr(model, name):
            name, i = f"lm_layer_{i}", i + 1
    elif hasattr(model, name):
        raise SpliceError(f"the model already has an attribute {name!r}; pass another name=")
    spec = {"source": source, **({} if layers is None else {"layers": layers}), **lmlayer_options}
    lm = source if isinstance(source, LMLayer) else LMLayer.from_spec(dim, spec)
    record = SpliceRecord(name, at, layout_name, select, dim, dim_from)
    hook = _SpliceHook(lm, record, layout_obj, channels_first)
    model.add_module(name, lm)
    target.register_forward_hook(hook)
    model.__dict__.setdefault(_SPLICES, {})[name] = record
    model.__dict__.setdefault("_frozenlm_hooks", {})[name] = hook
    _ensure_guard(model)
    return model


def split_at(lm: Any) -> tuple[Any, str | None]:
    """(the ``lm=`` spec without its ``at`` key, ``at``): a config's ``model.lm`` section holds both."""
    if isinstance(lm, Mapping) and "at" in lm:
        rest = {k: v for k, v in lm.items() if k != "at"}
        return rest, lm["at"]
    return lm, None


def _head_paths(model: nn.Module, head: str | Sequence[str] | None) -> list[str]:
    mods = dict(model.named_modules())
    if head is None:
        get = getattr(model, "get_classifier", None)  # timm's convention
        clf = get() if callable(get) else None
        paths = [p for p, m in mods.items() if clf is not None and m is clf and p]
        if not paths:
            raise SpliceError(f"{type(model).__name__} has no timm get_classifier(); pass head= with the path(s) of "
                              f"the module(s) to train (its top-level modules: {[n for n, _ in model.named_children()]})")
        return paths[:1]
    heads = [head] if isinstance(head, str) else list(head)
    bad = [h for h in heads if h not in mods or not h]
    if bad:
        close = {h: difflib.get_close_matches(h, list(mods), n=3, cutoff=0.5) for h in bad}
        raise SpliceError(f"head={bad} names no submodule of {type(model).__name__} (close matches: {close})")
    return heads


def freeze_backbone(model: nn.Module, head: str | Sequence[str] | None = None, *, eval_mode: bool = True) -> nn.Module:
    """Train only the LMLayers (as their variant says: a frozen one trains F_L1 and F_L2) and ``head``.

    head: module path(s) that stay trainable; default: timm's ``model.get_classifier()``.
    Every other parameter gets ``requires_grad=False``; it is still saved in checkpoints (only LM blocks
    and FrozenModules are rebuilt from a source). eval_mode (default True): every frozen part of the
    backbone stays in eval mode after ``model.train()`` (BatchNorm uses and keeps its running statistics,
    dropout and drop-path are off), re-applied at each call of ``model``; False leaves the modes alone.
    """
    heads = _head_paths(model, head)
    keep = {p for p, m in model.named_modules() if isinstance(m, LMLayer)} | set(heads)

    def kept(path: str) -> bool:
        return any(path == k or path.startswith(k + ".") for k in keep)

    for pname, p in model.named_parameters():
        if not kept(pname.rsplit(".", 1)[0] if "." in pname else ""):
            p.requires_grad_(False)
    pinned: list[str] = []

    def walk(mod: nn.Module, prefix: str) -> None:
        for cname, child in mod.named_children():
            path = f"{prefix}{cname}"
            if kept(path):
                continue
            if any(kept(f"{path}.{n}") for n, _ in child.named_modules() if n):
                walk(child, path + ".")  # a head or an LMLayer inside: pin only the parts around it
            else:
                pinned.append(path)
    walk(model, "")
    if eval_mode:
        model.__dict__[_PINNED] = tuple(pinned)
        for path in pinned:
            model.get_submodule(path).eval()
        _ensure_guard(model)
    return model
