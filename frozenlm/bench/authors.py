"""The paper authors' own model, timed by `frozenlm bench --authors DIR` next to ours.

DIR is the user's checkout of ziqipang/LM4VisualEncoding (nothing is downloaded). Its
`image_classification/models/` folder is imported as a package of its own name, so its relative
imports (`.llama`, `.vit`) resolve inside the checkout and nothing of ours is shadowed.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from torch import nn

#: our timm name -> the authors' registered model function (image_classification/models/vit_llama.py)
AUTHORS_MODELS = {"vit_tiny_patch16_224": "vit_llama_tiny_patch16_224",
                  "vit_small_patch16_224": "vit_llama_small_patch16_224",
                  "vit_base_patch16_224": "vit_llama_base_patch16_224"}
_PACKAGE = "lm4visualencoding_models"


def authors_models_dir(root: str | Path) -> Path:
    """``ROOT/image_classification/models`` of a checkout, checked to hold vit_llama.py."""
    root = Path(root).expanduser()
    models = root / "image_classification" / "models"
    if not (models / "vit_llama.py").is_file():
        raise ValueError(f"--authors {root}: expected a checkout of ziqipang/LM4VisualEncoding with "
                         f"{models / 'vit_llama.py'}; that file does not exist")
    return models


def authors_model_name(ours: str) -> str:
    """The authors' model function for one of our ViT names (ValueError if they have none)."""
    if ours not in AUTHORS_MODELS:
        raise ValueError(f"--authors: the authors' code has no LLaMA model for --model {ours}; "
                         f"use one of {', '.join(AUTHORS_MODELS)}")
    return AUTHORS_MODELS[ours]


def build_authors_model(root: str | Path, ours: str, num_classes: int = 1000) -> nn.Module:
    """Their ``vit_llama_*_patch16_224(num_classes=...)`` (random weights), imported from ``root``."""
    models = authors_models_dir(root)
    fn_name = authors_model_name(ours)
    package = f"{_PACKAGE}_{hashlib.sha1(str(models.resolve()).encode()).hexdigest()[:10]}"  # one per checkout
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(package, models / "__init__.py",
                                                      submodule_search_locations=[str(models)])
        if spec is None or spec.loader is None:
            raise ValueError(f"--authors: cannot import {models} as a package")
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[package] = pkg
        if (models / "__init__.py").exists():
            spec.loader.exec_module(pkg)
    try:
        mod = importlib.import_module(f"{package}.vit_llama")
    except Exception as e:  # their code, our environment: say which import failed and why
        raise RuntimeError(f"--authors: importing {models / 'vit_llama.py'} failed: {type(e).__name__}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if fn is None:
        raise ValueError(f"--authors: {models / 'vit_llama.py'} defines no {fn_name}")
    model = fn(num_classes=num_classes)
    if not isinstance(getattr(model, "llama", None), nn.Module):
        raise ValueError(f"--authors: {fn_name}() returned a model without the `llama` module the bench times")
    return model


__all__ = ["AUTHORS_MODELS", "authors_model_name", "authors_models_dir", "build_authors_model"]
