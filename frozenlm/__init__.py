"""frozenlm: frozen transformer blocks from language models as visual encoder layers (ICLR 2024)."""
from .layer import LMLayer, count_parameters, frozen_param_names, frozen_sources
from .splice import freeze_backbone, splice
from .lm import BlockConfig, BlockStack, CheckpointError, load_blocks, source_config

__version__ = "0.1.0"

_SUBMODULES = ("ablate", "analysis", "bench", "config", "data", "engine", "layer", "lm", "models", "tasks")


def __getattr__(name: str):
    # `frozenlm.models.create_model` and `frozenlm.load_trained` / `save_trained` work after a bare `import frozenlm`,
    # without importing the heavier parts (timm, the engine) on every import.
    import importlib
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("load_trained", "save_trained"):
        from .engine import trained
        return getattr(trained, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["LMLayer", "splice", "freeze_backbone", "load_trained", "save_trained", "BlockConfig", "BlockStack", "CheckpointError", "count_parameters", "frozen_param_names",
           "frozen_sources", "load_blocks", "source_config", "__version__"]
