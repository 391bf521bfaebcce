"""Build models by name, as timm does: small factory functions registered under a name."""
from __future__ import annotations

import difflib
from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FALLBACKS: list[tuple[Callable[[str], bool], Callable[..., nn.Module]]] = []


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a factory `fn(**kwargs) -> nn.Module` under `name`."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} registered twice")
        _MODELS[name] = fn
        return fn
    return deco


def register_fallback(accepts: Callable[[str], bool], factory: Callable[..., nn.Module]) -> None:
    """A factory for whole families of names (e.g. every timm ViT), tried after exact names."""
    _FALLBACKS.append((accepts, factory))


def list_models() -> list[str]:
    """Registered exact names."""
    _import_families()
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name, e.g. `create_model("vit_small_patch16_224", lm="~/llama-7b:31")`."""
    _import_families()
    if name in _MODELS:
        return _MODELS[name](**kwargs)
    for accepts, factory in _FALLBACKS:
        if accepts(name):
            return factory(name, **kwargs)
    import timm
    close = difflib.get_close_matches(name, list(_MODELS) + timm.list_models("vit_*"), n=5, cutoff=0.6)
    raise ValueError(f"unknown model name {name!r}. Close matches: {close or 'none'}; "
                     f"see frozenlm.models.list_models() (any timm vit_* name also works, and timm:<any timm name> "
                     f"with model.lm.at naming the module the LM layer follows)")


def _import_families() -> None:
    # Model files register themselves on import; importing here keeps `create_model` self-contained.
    from . import meter, mmtransformer, pointbert, sqa3d, timm_any, vectornet, video_vit, vit  # noqa: F401
