"""The core: language-model blocks, checkpoint readers and the catalog of named sources."""
from .block import Block, RMSNorm
from .catalog import CATALOG, resolve_source
from .config import BlockConfig
from .load import describe_source, load_blocks, source_config, tensor_digest
from .readers import CheckpointError, open_reader, parse_layers
from .stack import BlockStack

__all__ = ["Block", "BlockConfig", "BlockStack", "CATALOG", "CheckpointError", "RMSNorm", "describe_source",
           "load_blocks", "open_reader", "parse_layers", "resolve_source", "source_config", "tensor_digest"]
