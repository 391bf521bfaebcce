"""Backbones with an LMLayer spliced in, built by name."""
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
