"""Layer k of a source is layer k of the reference model, whatever order the file lists its keys in.

Models have 12 layers (tiny widths), so layer numbers 10 and 11 share their last digit's prefix
with layer 1 ('layers.1' + '0.'). Every format is written with the layers' keys in a shuffled
order that puts layer 10 before layer 0 (index weight_map, shard keys, .bin state-dict order,
GGUF tensor order, Meta shard keys); the loaded tensors must equal the transformers model's own
layer k for k in {0, 1, 10, last}, and different layers must have different frozen digests.
"""
from __future__ import annotations

import json
import random

import gguf
import pytest
import torch

import ckpt_factory as F
import frozenlm
from frozenlm import CheckpointError
from frozenlm.lm import tensor_digest

N_LAYERS = 12
CHECK = (0, 1, 10, N_LAYERS - 1)
# 10 first, then a fixed shuffle of the others (0 somewhere after it)
ORDER = [10] + random.Random(0).sample([i for i in range(N_LAYERS) if i != 10], N_LAYERS - 1)
FORMATS = ("hf", "hf_sharded", "hf_bin", "hf_bin_sharded", "meta", "meta2", "gguf")


def block_sd(stack) -> dict[str, torch.Tensor]:
    return dict(stack.layers[0].state_dict())


def first_listed(keys, mark: str) -> int:
    """Layer number of the first key (in listing order) that ends with `mark`."""
    return next(F.layer_of(k) for k in keys if k.endswith(mark))


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    """One 12-layer LlamaModel in every format, each listing the layers in ORDER."""
    root = tmp_path_factory.mktemp("shuffled")
    m = F.make_model("llama", seed=7, num_hidden_layers=N_LAYERS)
    out = {"model": m}
    out["hf"] = F.save_hf(m, root / "hf")
    out["hf_sharded"] = F.reorder_index(F.save_hf(m, root / "hf_sharded", max_shard_size="100KB"), ORDER)
    out["hf_bin"] = F.save_hf_bin(m, root / "hf_bin", layer_order=ORDER)
    out["hf_bin_sharded"] = F.save_hf_bin_sharded(m, root / "hf_bin_sharded", n_shards=3, layer_order=ORDER)
    out["meta"] = F.write_meta(m, root / "meta", layer_order=ORDER)
    out["meta2"] = F.write_meta(m, root / "meta2", n_shards=2, layer_order=ORDER)
    out["gguf"] = F.write_gguf(m, root / "shuffled.gguf", layer_order=ORDER)
    return out


def test_files_list_layer_10_first(shuffled):
    """Guard for the tests below: each ordered listing really names layer 10 before layer 0."""
    assert ORDER.index(10) < ORDER.index(0)
    for fmt in ("hf_sharded", "hf_bin_sharded"):
        idx = next(shuffled[fmt].glob("*.index.json"))
        wm = json.loads(idx.read_text())["weight_map"]
        assert first_listed(wm, "self_attn.q_proj.weight") == 10, fmt
        assert len(set(wm.values())) > 1, fmt
    sd = torch.load(shuffled["hf_bin"] / "pytorch_model.bin", weights_only=True, mmap=True)
    assert first_listed(sd, "self_attn.q_proj.weight") == 10
    for fmt in ("meta", "meta2"):
        sd = torch.load(shuffled[fmt] / "consolidated.00.pth", weights_only=True, mmap=True)
        assert first_listed(sd, "attention.wq.weight") == 10, fmt
    names = [t.name for t in gguf.GGUFReader(str(shuffled["gguf"])).tensors]
    assert first_listed(names, "attn_q.weight") == 10


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_k_is_reference_layer_k(shuffled, fmt):
    model, path = shuffled["model"], shuffled[fmt]
    assert frozenlm.source_config(str(path)).n_layers == N_LAYERS
    for k in CHECK:
        got = block_sd(frozenlm.load_blocks(str(path), [k]))
        want = F.expected_llama_layer(model, k)
        assert set(got) == set(want), (fmt, k)
        for name, w in want.items():
            assert torch.equal(got[name], w), f"{fmt}: layer {k} tensor {name} is not the reference layer {k}'s"
    last = frozenlm.load_blocks(str(path), [-1])
    assert last.layer_indices == [N_LAYERS - 1]
    assert torch.equal(block_sd(last)["attn.q.weight"], F.expected_llama_layer(model, N_LAYERS - 1)["attn.q.weight"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_frozen_digest_differs_between_layers(shuffled, fmt):
    digests = {k: tensor_digest(frozenlm.load_blocks(str(shuffled[fmt]), [k])) for k in CHECK}
    assert len(set(digests.values())) == len(CHECK), f"{fmt}: two layers share a digest: {digests}"
    # ... and the digest certifies the reference's layer k: same digest as layer k read from the plain file
    ref = {k: tensor_digest(frozenlm.load_blocks(str(shuffled["hf"]), [k])) for k in CHECK}
    assert digests == ref


@pytest.mark.parametrize("kind,first", [("opt", "self_attn.q_proj.weight"), ("gpt2", "attn.c_attn.weight"),
                                        ("bert", "attention.self.query.weight")])
def test_other_families_shuffled(tmp_path, kind, first):
    """OPT (decoder.layers.), GPT-2 (h.), BERT (encoder.layer.): shuffled sharded safetensors and .bin."""
    n_key = "n_layer" if kind == "gpt2" else "num_hidden_layers"
    model = F.make_model(kind, seed=5, **{n_key: N_LAYERS})
    ref = F.reference_layers(model)
    paths = {"sharded": F.reorder_index(F.save_hf(model, tmp_path / "st", max_shard_size="100KB"), ORDER),
             "bin": F.save_hf_bin(model, tmp_path / "bin", layer_order=ORDER)}
    wm = json.loads(next(paths["sharded"].glob("*.index.json")).read_text())["weight_map"]
    assert first_listed(wm, first) == 10
    for fmt, path in paths.items():
        for k in CHECK:
            q = block_sd(frozenlm.load_blocks(str(path), [k]))["attn.q.weight"]
            if kind == "gpt2":
                want = ref[k].attn.c_attn.weight[:, :F.DIM].t()
            elif kind == "bert":
                want = ref[k].attention.self.query.weight
            else:
                want = ref[k].self_attn.q_proj.weight
            assert torch.equal(q, want), f"{kind} {fmt} layer {k}"


# ------------------------------------------------------------------ layer numbers that disagree

@pytest.mark.parametrize("fmt,file,key,value,message", [
    # config.json says 14 layers, the weights hold 12: refused (-1 would not be the last layer)
    ("hf_sharded", "config.json", "num_hidden_layers", 14, r"num_hidden_layers says 14 layers.*missing layers 12-13"),
    ("meta", "params.json", "n_layers", 10, r"n_layers says 10 layers.*unexpected layers 10-11"),
])
def test_declared_layer_count_disagrees_with_weights(shuffled, tmp_path, fmt, file, key, value, message):
    import shutil
    dst = tmp_path / fmt
    shutil.copytree(shuffled[fmt], dst)
    cfg = json.loads((dst / file).read_text())
    cfg[key] = value
    (dst / file).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        frozenlm.load_blocks(str(dst), [-1])


def test_gguf_block_count_disagrees_with_tensors(shuffled, tmp_path):
    model = shuffled["model"]
    path = F.write_gguf(model, tmp_path / "fewer.gguf", layer_order=list(range(N_LAYERS - 1)))
    with pytest.raises(CheckpointError, match=r"block_count says 12 layers.*missing layers 11"):
        frozenlm.load_blocks(str(path), [-1])


def test_meta_shard_missing_from_numbering(llama_ckpts, tmp_path):
    """consolidated.00 + consolidated.02 (01 gone): refused, not read as a 2-way split."""
    import shutil
    dst = tmp_path / "gap"
    shutil.copytree(llama_ckpts["meta2"], dst)
    (dst / "consolidated.01.pth").rename(dst / "consolidated.02.pth")
    with pytest.raises(CheckpointError, match=r"numbered \[0, 2\]"):
        frozenlm.load_blocks(str(dst), [0])


def test_two_layer_stacks_in_one_file(llama_ckpts, tmp_path):
    """Layer tensors under two prefixes (e.g. a second model saved alongside): refused, naming both."""
    from safetensors.torch import load_file, save_file
    import shutil
    dst = tmp_path / "two"
    shutil.copytree(llama_ckpts["hf"], dst)
    sd = load_file(str(dst / "model.safetensors"))
    sd.update({f"draft.{k}": v.clone() for k, v in sd.items() if k.startswith("layers.")})
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"several prefixes \['draft.layers.', 'layers.'\]"):
        frozenlm.load_blocks(str(dst), [0])
