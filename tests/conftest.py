"""Shared fixtures: tiny random checkpoints in every supported format (built once per session)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import ckpt_factory as F  # noqa: E402

KINDS = ("llama", "qwen2", "opt", "opt-postln", "gpt2", "bert")


def package_dir(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """{kind: (reference transformers model, HF save_pretrained safetensors dir)} for every family."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, kind in enumerate(KINDS):
        m = F.make_model(kind, seed=10 + i)
        out[kind] = (m, F.save_hf(m, root / kind))
    return out


@pytest.fixture(scope="session")
def llama_ckpts(tmp_path_factory):
    """One random LlamaModel written in every format: {name: path} plus the model under 'model'."""
    root = tmp_path_factory.mktemp("llama_formats")
    m = F.make_model("llama", seed=3)
    out = {"model": m}
    out["hf"] = F.save_hf(m, root / "hf")
    # ~tens of KB per layer: a 20KB limit forces several shards and an index json
    out["hf_sharded"] = F.save_hf(m, root / "hf_sharded", max_shard_size="20KB")
    out["hf_bin"] = F.save_hf_bin(m, root / "hf_bin")
    out["meta"] = F.write_meta(m, root / "meta")
    out["meta2"] = F.write_meta(m, root / "meta2", n_shards=2)
    out["gguf"] = F.write_gguf(m, root / "tiny-llama.gguf", arch="llama")
    return out


@pytest.fixture
def seeded():
    torch.manual_seed(1234)
    return torch.Generator().manual_seed(1234)
