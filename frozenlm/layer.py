"""The sandwich: F_L2( unitRMSNorm( F_LM( F_L1(z) ) ) ) with the paper's controls as variants."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .lm.block import RMSNorm, init_random_
from .lm.load import LayerSpec, load_blocks, resolve_layers, tensor_digest
from .lm.stack import BlockStack

VARIANTS = ("none", "frozen", "finetune", "random", "mlp")
RESIDUALS = ("none", "inner", "outer")
INITS = ("trunc_normal", "default")


FROZEN_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _storage_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A frozen-weight storage dtype from a config value; unknown names are refused."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if value not in FROZEN_DTYPES:
        raise ValueError(f"model.lm.frozen_dtype={value!r} is not a storage dtype: use one of "
                         f"{', '.join(FROZEN_DTYPES)} or null (float32)")
    return FROZEN_DTYPES[value]


def lm_config_keys(prefix: str = "model.lm") -> tuple[str, ...]:
    """Config keys of an ``lm:`` section: the LMLayer arguments a YAML file can give."""
    names = [n for n in inspect.signature(LMLayer.__init__).parameters if n not in ("self", "in_dim", "blocks")]
    return tuple(f"{prefix}.{n}" for n in names)


class LMLayer(nn.Module):
    """Frozen language-model block(s) between two trainable bias-free linear maps.

    z' = F_L2(RMSNorm_1(F_LM(F_L1(z))))  — method.md section 1; z' has z's shape and dtype. Variants:
      none     identity (the baseline; no parameters)
      frozen   pretrained block(s), requires_grad False, kept out of optimizers (default)
      finetune pretrained block(s), trainable
      random   same architecture, random init, trainable
      mlp      F_L1 -> GELU -> LayerNorm (no affine, so the trainable count equals `frozen`'s) -> F_L2
    residual: "none" (paper), "inner" (block output + its input, before the norm) or
              "outer" (z + z'), as follow-up work uses.
    frozen_dtype: storage dtype of frozen weights (e.g. torch.bfloat16 halves memory). Compute runs
              in the activations' dtype or the autocast dtype, never silently in the storage dtype.
              "auto" (the configs' default) is resolved by the engine when a run starts: bfloat16 if
              the run computes in bf16 (the matmuls then see the same bf16 values either way), else
              float32; built outside the engine, "auto" stores float32.
    blocks: an already-loaded BlockStack to use instead of reading `source` again.
    Fast-path switches (docs/performance.md): attn "sdpa" | "math" (eager reference);
    grad_checkpointing recomputes the LM block(s) in backward; compile wraps the block(s) in
    torch.compile; fuse_norm applies the unit RMSNorm's per-token scale after F_L2 at inference
    (F_L2 is linear without bias, so W(s*h) = s*(Wh): the d_lm-wide normalised tensor is never written).
    """

    def __init__(self, in_dim: int, source: str | Path = "smollm2-135m", layers: LayerSpec = (-1,),
                 variant: str = "frozen", residual: str = "none", mask: str = "none", rope: str = "none",
                 frozen_dtype: torch.dtype | str | None = None, init: str = "trunc_normal",
                 blocks: BlockStack | None = None, attn: str = "sdpa", grad_checkpointing: bool = False,
                 compile: bool = False, fuse_norm: bool = True) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"LMLayer variant must be one of {VARIANTS}, got {variant!r}")
        if residual not in RESIDUALS:
            raise ValueError(f"LMLayer residual must be one of {RESIDUALS}, got {residual!r}")
        if init not in INITS:
            raise ValueError(f"LMLayer init must be one of {INITS}, got {init!r}")
        self.in_dim, self.variant, self.residual, self.fuse_norm = in_dim, variant, residual, fuse_norm
        self._compiled: Any = None
        self.source = str(source)
        self.blocks: BlockStack | None = None
        self._digest: tuple[tuple, str] | None = None
        if variant == "none":
            self.layer_indices: list[int] = []
            return
        frozen_dtype = _storage_dtype(frozen_dtype)
        if blocks is None and variant in ("frozen", "finetune"):
            blocks = load_blocks(source, layers, dtype=frozen_dtype if variant == "frozen" else None,
                                 mask=mask, rope=rope, freeze=variant == "frozen")
        elif blocks is None:
            reader, idx = resolve_layers(source, layers)  # architecture only; no weights are read
            if variant == "random":
                blocks = BlockStack(reader.config, len(idx), mask=mask, rope=rope, layer_indices=idx)
                init_random_(blocks)
        if blocks is None:  # mlp: only the LM's width is needed (a LLaMA-7B block would be 0.8 GB)
            self.layer_indices, d_lm = list(idx), reader.config.dim
        else:
            self.layer_indices, d_lm = list(blocks.layer_indices), blocks.dim
        self.proj_in = nn.Linear(in_dim, d_lm, bias=False)   # F_L1
        self.proj_out = nn.Linear(d_lm, in_dim, bias=False)  # F_L2
        if variant == "mlp":
            self.act = nn.GELU()
            self.mlp_norm = nn.LayerNorm(d_lm, elementwise_affine=False)
        else:
            self.blocks = blocks
            self.blocks.requires_grad_(variant != "frozen")
            self.blocks.set_attn_impl(attn)
            self.blocks.grad_checkpointing = grad_checkpointing
            if compile:
                # Kept out of the module tree so state-dict keys do not gain an `_orig_mod.` prefix.
                self.__dict__["_compiled"] = torch.compile(self.blocks)
            if variant == "random":
                self.blocks.float()
            self.norm = RMSNorm(d_lm, eps=blocks.cfg.norm_eps, weight=False)  # unit weight, frozen by construction
        if init == "trunc_normal":
            for lin in (self.proj_in, self.proj_out):
                nn.init.trunc_normal_(lin.weight, std=0.02)

    @classmethod
    def from_spec(cls, dim: int, lm: str | dict[str, Any] | LMLayer | None, **defaults: Any) -> LMLayer:
        """The ``lm=`` argument of model factories as an LMLayer: None (the baseline), a source string
        ("smollm2-135m", "~/llama-7b:31"), a dict of LMLayer arguments (over ``defaults``), or a ready LMLayer."""
        if isinstance(lm, LMLayer):
            return lm
        if isinstance(lm, str):
            lm = {"source": lm}
        if lm is not None and not isinstance(lm, dict):
            raise TypeError(f"lm must be None, a source string, a dict or an LMLayer, not {type(lm).__name__}")
        kw = {**defaults, **(lm or {"variant": "none"})}
        return cls(dim, variant="none") if kw.get("variant") == "none" else cls(dim, **kw)

    @property
    def is_frozen(self) -> bool:
        """True when this layer holds pretrained weights that are not trained (and not checkpointed)."""
        return self.variant == "frozen"

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, in_dim) -> (B, N, in_dim) in x's dtype (train or eval, autocast or not);
        padding_mask (B, N) bool, True = padded."""
        if self.variant == "none":
            return x
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"LMLayer expects tokens with {self.in_dim} channels, got shape {tuple(x.shape)}")
        h = self.proj_in(x)
        scale = None
        if self.blocks is None:
            h = self.mlp_norm(self.act(h))
        else:
            inner = h
            h = (self.blocks if self._compiled is None else self._compiled)(h, padding_mask)
            if self.residual == "inner":
                h = h + inner.to(h.dtype)
            if self.fuse_norm and not torch.is_grad_enabled():
                scale = torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + self.norm.eps)
            else:
                h = self.norm(h).float()
        if h.dtype != self.proj_out.weight.dtype and not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.proj_out.weight.dtype)
        out = self.proj_out(h)
        if scale is not None:
            out = out.float() * scale
        out = out + x if self.residual == "outer" else out
        # One contract in every mode: the output has the input's dtype (float32 for a float32
        # residual stream), whether or not autocast ran the matmuls in bf16.
        return out.to(x.dtype)

    def frozen_part(self) -> tuple[str, nn.Module] | None:
        """(attribute name, module) of the frozen weights, or None when nothing is frozen."""
        return ("blocks", self.blocks) if self.is_frozen and self.blocks is not None else None

    def frozen_digest(self) -> str | None:
        """SHA-256 of the frozen tensors (cached), or None when nothing is frozen."""
        return _cached_digest(self, self.blocks) if self.frozen_part() else None

    def frozen_reference(self) -> dict[str, Any] | None:
        """What a training checkpoint records instead of the frozen weights."""
        if not self.frozen_part():
            return None
        dtype = str(self.blocks.layers[0].attn.q.weight.dtype).replace("torch.", "")
        # `source` is where the weights were read (a hint for finding them again); the digest, the
        # layer indices, the architecture and the attention mode are what identify the frozen block.
        return {"source": self.source, "layers": self.layer_indices, "dtype": dtype, "digest": self.frozen_digest(),
                "arch": self.blocks.cfg.to_dict(), "mask": self.blocks.mask, "rope": self.blocks.rope}

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, variant={self.variant}, source={self.source}, " \
               f"layers={self.layer_indices}, residual={self.residual}"


def _cached_digest(owner: nn.Module, module: nn.Module) -> str:
    """tensor_digest(module), cached on ``owner``. The key holds every tensor's storage and version
    counter: any in-place change (load_state_dict, copy_, .to()) invalidates it, so it is never stale."""
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in module.state_dict().values())
    if owner._digest is None or owner._digest[0] != key:
        owner._digest = (key, tensor_digest(module))
    return owner._digest[1]


class FrozenModule(nn.Module):
    """A frozen pretrained module that is not an LM block (e.g. the MiniLM text encoder of SQA3D or METER).

    Held like a frozen LMLayer's blocks: requires_grad False, in the module tree (so ``.to()`` moves
    it), left out of training checkpoints (:func:`frozen_param_names`) and recorded by source and
    SHA-256 digest (:func:`frozen_sources`), which loading verifies. It stays in eval mode: a frozen
    module is a fixed function, so its dropout is off in training too.
    """

    def __init__(self, module: nn.Module, source: str | Path) -> None:
        super().__init__()
        self.module = module.requires_grad_(False).eval()
        self.source = str(source)
        self._digest: tuple[tuple, str] | None = None

    def train(self, mode: bool = True) -> FrozenModule:
        """Set this module's flag; the wrapped module stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped module's forward."""
        return self.module(*args, **kwargs)

    def frozen_part(self) -> tuple[str, nn.Module]:
        """(attribute name, module) of the frozen weights."""
        return "module", self.module

    def frozen_digest(self) -> str:
        """SHA-256 of the wrapped module's tensors (cached)."""
        return _cached_digest(self, self.module)

    def frozen_reference(self) -> dict[str, Any]:
        """What a training checkpoint records instead of the frozen weights."""
        dtype = str(next(self.module.parameters()).dtype).replace("torch.", "")
        return {"source": self.source, "dtype": dtype, "digest": self.frozen_digest()}


def _frozen_holders(model: nn.Module) -> dict[str, LMLayer | FrozenModule]:
    # remove_duplicate=False: a module shared by two parents is in the state dict under both paths.
    return {path: m for path, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, (LMLayer, FrozenModule)) and m.frozen_part() is not None}


def frozen_param_names(model: nn.Module) -> set[str]:
    """state_dict keys of frozen LM blocks and FrozenModules (left out of training checkpoints)."""
    names: set[str] = set()
    for path, m in _frozen_holders(model).items():
        child, part = m.frozen_part()
        pre = f"{path}.{child}." if path else f"{child}."
        names.update(pre + k for k in part.state_dict())
    return names


def frozen_sources(model: nn.Module) -> dict[str, dict[str, Any]]:
    """{module path: {source, digest, dtype, ...}} for every frozen LMLayer and FrozenModule in the model."""
    return {path: m.frozen_reference() for path, m in _frozen_holders(model).items()}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters an optimizer should see (frozen blocks excluded)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts."""
    tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fr = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": tr, "frozen": fr, "total": tr + fr}


__all__: Sequence[str] = ["FrozenModule", "LMLayer", "VARIANTS", "count_parameters", "frozen_param_names",
                          "lm_config_keys", "frozen_sources", "trainable_parameters"]
