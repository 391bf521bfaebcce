"""frozenlm: frozen transformer blocks from language models as visual encoder layers (ICLR 2024)."""
from .layer import LMLayer, count_parameters, frozen_param_names, frozen_sources
from .lm import BlockConfig, BlockStack, CheckpointError, load_blocks, source_config

__version__ = "0.1.0"
__all__ = ["LMLayer", "BlockConfig", "BlockStack", "CheckpointError", "count_parameters", "frozen_param_names",
           "frozen_sources", "load_blocks", "source_config", "__version__"]
