"""`frozenlm import-authors` (issue 19, part 1): the paper authors' released checkpoints become frozenlm runs.

The checkpoints are built here, independently of frozenlm, in the three formats the authors' code
writes (ziqipang/LM4VisualEncoding):
- image: image_classification/main.py saves {'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema',
  'scaler', 'args'} with args an argparse.Namespace; models/vit_llama.py names the weights as timm's
  ViT plus llama_dim_mapper1/2 and the LLaMATransformer `llama` (models/llama.py: Meta's wq/wk/wv/wo,
  w1/w2/w3, attention_norm, ffn_norm; no RoPE, no mask; a final RMSNorm `llama.norm`);
- video: video_understanding/utils.py save_model saves {'model', 'optimizer', 'epoch', 'scaler', 'args'};
  modeling_finetune_llama.py names the VideoMAE weights (qkv without bias + q_bias/v_bias, fc_norm, head);
- point cloud: pointcloud_classification/tools/builder.py save_checkpoint saves {'base_model', 'optimizer',
  'epoch', 'metrics', 'best_metrics'} (metrics = Acc_Metric.state_dict() = {'acc': tensor}); the weights
  carry 'module.' under DataParallel; models/Point_BERT.py names them (cls_token, cls_pos, encoder.first_conv,
  reduce_dim, pos_embed, blocks.blocks.i, norm, cls_head_finetune).
The frozen layer is a tiny random transformers LLaMA (dim 64, 4 heads, no GQA, as LLaMA-1) written by
tests/ckpt_factory.py in Meta's layout (q/k rows interleaved); the reference forward uses the
transformers LlamaDecoderLayer itself (bidirectional: explicit zero mask; RoPE off: cos 1, sin 0).
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ckpt_factory as F
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.interop import import_authors

REPO = Path(__file__).resolve().parents[1]
EPS = 1e-6  # the authors' LLaMA config: norm_eps 1e-6
LAYER = 2  # the last layer of the tiny LLaMA plays LLaMA-7B's layer 31
TOL = 1e-5


# ------------------------------------------------------------------------ the frozen LLaMA layer

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """(transformers LlamaModel, its Meta consolidated dir, its HF dir, another LLaMA's Meta dir)."""
    root = tmp_path_factory.mktemp("authors_llama")
    hf = F.make_model("llama", seed=5, std=0.1, num_key_value_heads=F.HEADS, rms_norm_eps=EPS)
    other = F.make_model("llama", seed=6, std=0.1, num_key_value_heads=F.HEADS, rms_norm_eps=EPS)
    return hf, F.write_meta(hf, root / "meta"), F.save_hf(hf, root / "hf"), F.write_meta(other, root / "other")


def authors_llama_part(hf, layer: int, g: torch.Generator, dim: int) -> dict[str, torch.Tensor]:
    """What the authors' model holds besides its backbone: both mappers, layer `layer` of the LM in Meta's
    layout under llama.layers.0, and the (untrained, all-ones) final RMSNorm."""
    meta = F.meta_state_dict(hf)
    pre = f"layers.{layer}."
    out = {f"llama.layers.0.{k[len(pre):]}": v for k, v in meta.items() if k.startswith(pre)}
    out["llama.norm.weight"] = torch.ones(F.DIM)
    out["llama_dim_mapper1.weight"] = 0.1 * torch.randn(F.DIM, dim, generator=g)
    out["llama_dim_mapper2.weight"] = 0.1 * torch.randn(dim, F.DIM, generator=g)
    return out


def reference_sandwich(hf, layer: int, sd: dict, t: torch.Tensor) -> torch.Tensor:
    """mapper1 -> transformers' LlamaDecoderLayer (bidirectional, no RoPE) -> unit RMSNorm -> mapper2."""
    h = t @ sd["llama_dim_mapper1.weight"].T
    b, n, _ = h.shape
    hd = F.DIM // F.HEADS
    out = hf.layers[layer](h, attention_mask=torch.zeros(b, 1, n, n),
                           position_embeddings=(torch.ones(b, n, hd), torch.zeros(b, n, hd)))
    h = out[0] if isinstance(out, tuple) else out
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return h @ sd["llama_dim_mapper2.weight"].T


def optimizer_state(n: int = 3) -> dict:
    return {"state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(2)} for i in range(n)},
            "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": list(range(n))}]}


SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}


# ------------------------------------------------------------------------------------ image

IMAGE_CFG = [str(REPO / "configs/image/fmnist_smollm2.yaml")]
IMAGE_OVR = ["data.img_size=32", "data.in_chans=3", "data.num_classes=10"]


def authors_vit():
    """The authors' ViT (their models/vit.py is timm's VisionTransformer layout), randomised."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, num_classes=10)
    return F.randomize_(vit, seed=1, std=0.05).eval()


def image_checkpoint(path: Path, hf, with_llama: bool = True, edit=None) -> tuple[Path, dict, torch.nn.Module]:
    vit = authors_vit()
    g = torch.Generator().manual_seed(2)
    sd = dict(vit.state_dict())
    if with_llama:
        sd.update(authors_llama_part(hf, LAYER, g, 128))
    if edit is not None:
        edit(sd)
    args = argparse.Namespace(model="vit_llama_mini_patch4_32" if with_llama else "vit_mini_patch4_32",
                              input_size=32, nb_classes=10, lr=5e-4, opt_betas=None, llama_path="/tmp/7B/",
                              device="cuda", distributed=True)
    torch.save({"model": sd, "optimizer": optimizer_state(), "epoch": 299, "model_ema": dict(sd), "scaler": SCALER,
                "lr_scheduler": {"t_initial": 300, "base_values": [5e-4], "noise_range_t": None}, "args": args}, path)
    return path, sd, vit


def image_reference(vit, hf, sd: dict, x: torch.Tensor, with_llama: bool = True) -> torch.Tensor:
    t = vit.patch_embed(x)
    t = torch.cat([vit.cls_token.expand(len(x), -1, -1), t], 1) + vit.pos_embed
    for blk in vit.blocks:
        t = blk(t)
    if with_llama:
        t = reference_sandwich(hf, LAYER, sd, t)
    return vit.head(vit.norm(t)[:, 0])


def _import_image(tmp_path, llama, lm="meta", **kw):
    hf, meta, hf_dir, _ = llama
    tmp_path.mkdir(parents=True, exist_ok=True)
    ckpt, sd, vit = image_checkpoint(tmp_path / "checkpoint.pth", hf, **kw.pop("build", {}))
    src = {"meta": f"{meta}:{LAYER}", "hf": f"{hf_dir}:{LAYER}", None: None}[lm]
    res = import_authors(ckpt, "image", tmp_path / "run", model="vit_mini_patch4_32", lm=src, config=IMAGE_CFG[0],
                         overrides=IMAGE_OVR, verbose=False, **kw)
    return res, sd, vit


@pytest.mark.parametrize("lm", ["meta", "hf"])
def test_image_logits_equal_an_independent_forward(tmp_path, llama, lm):
    import frozenlm
    res, sd, vit = _import_image(tmp_path, llama, lm)
    model, cfg = frozenlm.load_trained(res.run_dir)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ours, ref = model(x), image_reference(vit, llama[0], sd, x)
    assert ours.shape == (3, 10)
    assert torch.allclose(ours, ref, atol=TOL, rtol=0), float((ours - ref).abs().max())
    # the written config is the recipe with the model section the checkpoint implies
    assert cfg.model.lm.variant == "frozen" and cfg.model.lm.layers == [LAYER] and cfg.model.lm.residual == "none"
    assert cfg.model.pretrained_path is None and cfg.run_dir == str(res.run_dir.resolve())
    meta = json.loads((res.step_dir / "meta.json").read_text())
    assert meta["imported"]["authors_epoch"] == 299 and meta["imported"]["authors_args"]["input_size"] == 32
    assert meta["frozen_sources"]["lm_layer"]["digest"] == res.lm["digest"]
    # only trainable tensors are stored: F_L1, F_L2 and the ViT, no LLaMA weights
    from safetensors import safe_open
    with safe_open(str(res.step_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"lm_layer.proj_in.weight", "lm_layer.proj_out.weight", "vit.head.weight"} <= keys
    assert not any(k.startswith("lm_layer.blocks") for k in keys)
    assert torch.equal(f_tensor(res.step_dir, "lm_layer.proj_in.weight"), sd["llama_dim_mapper1.weight"])


def f_tensor(step_dir: Path, key: str) -> torch.Tensor:
    from safetensors.torch import load_file
    return load_file(str(step_dir / "model.safetensors"))[key]


def test_meta_and_hf_sources_give_the_same_digest_and_the_stored_layer_does_too(tmp_path, llama):
    """The q/k conversion: a Meta dir, an HF dir and the stored layer written out are the same block."""
    a, _, _ = _import_image(tmp_path / "a", llama, "meta")
    b, _, _ = _import_image(tmp_path / "b", llama, "hf")
    c, sd, vit = _import_image(tmp_path / "c", llama, None, lm_heads=F.HEADS, lm_norm_eps=EPS)
    assert a.lm["digest"] == b.lm["digest"] == c.lm["digest"] == a.lm["digest_float32"]
    # no --lm: the stored layer became an LM source inside the run, and the run uses it
    lm_dir = c.run_dir / "lm"
    assert (lm_dir / "config.json").is_file() and (lm_dir / "model.safetensors").is_file()
    meta = json.loads((c.step_dir / "meta.json").read_text())
    assert meta["frozen_sources"]["lm_layer"]["source"] == str(lm_dir.resolve())
    assert meta["frozen_sources"]["lm_layer"]["layers"] == [0]
    import frozenlm
    model, _ = frozenlm.load_trained(c.run_dir)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(model(x), image_reference(vit, llama[0], sd, x), atol=TOL, rtol=0)


def test_no_lm_needs_the_head_count_of_a_block_that_is_not_llama_7b(tmp_path, llama):
    with pytest.raises(CheckpointError, match=r"64 wide, not LLaMA-7B's 4096.*--lm-heads"):
        _import_image(tmp_path, llama, None)
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_the_baseline_without_llama_imports_as_variant_none(tmp_path, llama):
    import frozenlm
    res, sd, vit = _import_image(tmp_path, llama, None, build={"with_llama": False})
    model, cfg = frozenlm.load_trained(res.run_dir)
    assert cfg.model.lm.variant == "none" and res.lm == {}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(x), vit(x), atol=TOL, rtol=0)


def test_bf16_storage_of_the_frozen_block_is_recorded(tmp_path, llama):
    import frozenlm
    res, _, _ = _import_image(tmp_path, llama, "meta", frozen_dtype="bfloat16")
    model, cfg = frozenlm.load_trained(res.run_dir)
    assert cfg.model.lm.frozen_dtype == "bfloat16" and res.lm["dtype"] == "bfloat16"
    assert model.lm_layer.blocks.layers[0].attn.q.weight.dtype == torch.bfloat16
    meta = json.loads((res.step_dir / "meta.json").read_text())
    assert meta["frozen_sources"]["lm_layer"]["dtype"] == "bfloat16"
    assert meta["frozen_sources"]["lm_layer"]["digest"] == res.lm["digest"] != res.lm["digest_float32"]


def test_ema_weights_can_be_imported_instead(tmp_path, llama):
    res, _, _ = _import_image(tmp_path, llama, "meta", weights="ema")
    assert json.loads((res.step_dir / "meta.json").read_text())["imported"]["weights"] == "model_ema"


# --------------------------------------------------------------------- key and layer checks

@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("blocks.1.norm1.bias"), r"Missing in the checkpoint \(1\): \['blocks\.1\.norm1\.bias'\]"),
    (lambda sd: sd.update({"blocks.1.extra.weight": torch.ones(3)}),
     r"not used by the model \(1\): \['blocks\.1\.extra\.weight'\]"),
    (lambda sd: sd.pop("llama_dim_mapper2.weight"), r"lacks \['llama_dim_mapper2\.weight'\]"),
    (lambda sd: sd.update({"llama.layers.0.attention.inner_attention.rope.freqs": torch.ones(8)}),
     r"llama\.layers\.0\.attention\.inner_attention\.rope\.freqs"),
    (lambda sd: sd.pop("llama.layers.0.feed_forward.w3.weight"), r"llama\.layers\.0\.feed_forward\.w3\.weight"),
    (lambda sd: sd.update({"blocks.0.mlp.fc1.weight": torch.ones(100, 128)}),
     r"blocks\.0\.mlp\.fc1\.weight has shape \(100, 128\) but the model expects \(512, 128\)"),
    (lambda sd: sd.update({"llama_dim_mapper1.weight": torch.ones(F.DIM, 100)}),
     r"llama_dim_mapper1\.weight has shape \(64, 100\) but lm_layer\.proj_in\.weight is \(64, 128\)"),
    (lambda sd: sd.update({"llama.norm.weight": torch.full((F.DIM,), 1.5)}), r"llama\.norm\.weight is not all ones"),
])
def test_every_key_maps_exactly_once_and_errors_name_the_keys(tmp_path, llama, edit, message):
    with pytest.raises(CheckpointError, match=message):
        _import_image(tmp_path, llama, "meta", build={"edit": edit})
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_different_llama_or_layer_is_refused_with_the_tensors_named(tmp_path, llama):
    hf, meta, _, other = llama
    ckpt, _, _ = image_checkpoint(tmp_path / "c.pth", hf)
    common = dict(model="vit_mini_patch4_32", config=IMAGE_CFG[0], overrides=IMAGE_OVR, verbose=False)
    with pytest.raises(CheckpointError, match=r"is not layer\(s\) \[2\] of .*other.*Differing tensors: "
                                              r"layers\.0\.attn\.k\.weight: max \|difference\|"):
        import_authors(ckpt, "image", tmp_path / "r1", lm=f"{other}:{LAYER}", **common)
    with pytest.raises(CheckpointError, match=r"is not layer\(s\) \[1\] of .*layer 31"):
        import_authors(ckpt, "image", tmp_path / "r2", lm=f"{meta}:1", **common)
    with pytest.raises(CheckpointError, match=r"selects 2 layer\(s\) \[1, 2\], but the checkpoint stores 1"):
        import_authors(ckpt, "image", tmp_path / "r3", lm=f"{meta}:1,2", **common)


def test_wrong_inputs_in_args_and_clashing_overrides_are_refused(tmp_path, llama):
    hf, meta, _, _ = llama
    ckpt, _, _ = image_checkpoint(tmp_path / "c.pth", hf)
    common = dict(model="vit_mini_patch4_32", lm=f"{meta}:{LAYER}", config=IMAGE_CFG[0], verbose=False)
    with pytest.raises(CheckpointError, match=r"args\.input_size=32 but data\.img_size=28.*data\.img_size=32"):
        # the ViT's pos_embed fixes the grid, so pretend a config whose img_size is wrong but patch grid fits
        import_authors(ckpt, "image", tmp_path / "r1", overrides=["data.in_chans=3", "data.num_classes=10",
                                                                  "data.img_size=28", "model.img_size=28"], **common)
    with pytest.raises(ConfigError, match=r"sets .*model\.lm\.source.*\['model\.lm\.source=x'\]"):
        import_authors(ckpt, "image", tmp_path / "r2", overrides=[*IMAGE_OVR, "model.lm.source=x"], **common)
    with pytest.raises(ConfigError, match=r"head has 10 classes but .* data\.num_classes=11"):
        import_authors(ckpt, "image", tmp_path / "r3", overrides=["data.img_size=32", "data.in_chans=3",
                                                                  "data.num_classes=11"], **common)


def test_an_existing_run_is_never_overwritten(tmp_path, llama):
    res, _, _ = _import_image(tmp_path, llama, "meta")
    with pytest.raises(CheckpointError, match=r"already holds checkpoints"):
        import_authors(tmp_path / "checkpoint.pth", "image", res.run_dir, model="vit_mini_patch4_32",
                       lm=f"{llama[1]}:{LAYER}", config=IMAGE_CFG[0], overrides=IMAGE_OVR, verbose=False)


# ------------------------------------------------------------------------------ safe loading

class Evil:
    """Pickles as a call of os.system: loading it unrestricted would run the command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class SubclassedDict(collections.OrderedDict):
    """A state-dict class the formats never use."""


def test_a_checkpoint_needing_another_global_is_refused_without_running_it(tmp_path, llama):
    hf = llama[0]
    _, sd, _ = image_checkpoint(tmp_path / "ok.pth", hf)
    marker = tmp_path / "pwned"
    torch.save({"model": sd, "args": argparse.Namespace(model="x"), "epoch": Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"needs the global posix\.system.*was not unpickled"):
        import_authors(tmp_path / "evil.pth", "image", tmp_path / "r1", model="vit_mini_patch4_32", verbose=False)
    assert not marker.exists()
    torch.save({"model": SubclassedDict(sd), "args": argparse.Namespace(model="x")}, tmp_path / "sub.pth")
    with pytest.raises(CheckpointError, match=r"needs the global \S*SubclassedDict"):
        import_authors(tmp_path / "sub.pth", "image", tmp_path / "r2", model="vit_mini_patch4_32", verbose=False)


def test_files_saved_from_gpus_by_old_torch_or_truncated(tmp_path, llama, monkeypatch):
    """The released files were written on GPUs (storages tagged cuda:0) and maybe by torch < 1.6 (not a zip):
    both load on a CPU-only machine; a truncated download is a one-line error."""
    import torch.serialization as S
    from frozenlm.interop.authors_files import read_authors_checkpoint
    hf = llama[0]
    with monkeypatch.context() as m:
        m.setattr(S, "location_tag", lambda storage: "cuda:0")
        sd = pointcloud_checkpoint(tmp_path / "gpu.pth", hf)
    import zipfile
    with zipfile.ZipFile(tmp_path / "gpu.pth") as z:
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ck = read_authors_checkpoint(tmp_path / "gpu.pth", "pointcloud")
    assert set(ck.state) == set(sd) and ck.state["norm.weight"].device.type == "cpu"  # 'module.' removed
    assert math.isclose(ck.extra["metrics"]["acc"], 83.87, rel_tol=1e-6) and ck.epoch == 300
    torch.save({"base_model": sd, "epoch": 1}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert set(read_authors_checkpoint(tmp_path / "legacy.pth", "pointcloud").state) == set(sd)
    (tmp_path / "cut.pth").write_bytes((tmp_path / "gpu.pth").read_bytes()[:4000])
    with pytest.raises(CheckpointError, match=r"cannot read .*cut\.pth.*truncated download"):
        read_authors_checkpoint(tmp_path / "cut.pth", "pointcloud")


def test_a_checkpoint_of_another_format_gets_a_hint(tmp_path, llama):
    _, sd, _ = image_checkpoint(tmp_path / "ok.pth", llama[0])
    torch.save({"base_model": sd, "optimizer": optimizer_state(), "epoch": 3, "metrics": {}, "best_metrics": {}},
               tmp_path / "pc.pth")
    with pytest.raises(CheckpointError, match=r"no 'model' state dict.*use --task pointcloud"):
        import_authors(tmp_path / "pc.pth", "image", tmp_path / "r", verbose=False)


def test_model_names_and_recipes_follow_the_authors_args():
    from frozenlm.interop.authors_keys import default_recipe, infer_model_name
    assert infer_model_name("image", {"model": "vit_llama_small_patch16_224"}, {}, "f") == "vit_small_patch16_224"
    assert infer_model_name("image", {"model": "vit_base_patch16_224"}, {}, "f") == "vit_base_patch16_224"
    assert infer_model_name("video", {"model": "vit_llama_base_patch16_224"}, {}, "f") == "videomae_base_patch16_224"
    sd = {"cls_token": torch.zeros(1, 1, 384),
          **{f"blocks.blocks.{i}.norm1.weight": torch.ones(384) for i in range(12)}}
    assert infer_model_name("pointcloud", None, sd, "f") == "point_bert"
    assert default_recipe("image", "vit_small_patch16_224", True) == "image/imagenet_vit_s_llama7b.yaml"
    assert default_recipe("video", "videomae_base_patch16_224", False) == "video/ssv2_vit_b.yaml"
    assert default_recipe("pointcloud", "point_bert", True) is None  # the split is not in the file
    for rel in ("image/imagenet_vit_s_llama7b.yaml", "image/imagenet_vit_b.yaml", "video/ssv2_vit_s_llama7b.yaml",
                "video/ssv2_vit_b_llama7b.yaml"):
        assert (REPO / "configs" / rel).is_file(), rel


# ------------------------------------------------------------------------------------ video

VIDEO = dict(dim=128, depth=4, heads=4, patch=8, tubelet=4, frames=8, img=32, classes=12)


def videomae_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    """A random VideoMAE fine-tuning state dict under the authors' names (modeling_finetune_llama.py)."""
    d, v = VIDEO["dim"], VIDEO
    r = lambda *s, std=0.05: std * torch.randn(*s, generator=g)  # noqa: E731
    sd = {"patch_embed.proj.weight": r(d, 3, v["tubelet"], v["patch"], v["patch"]), "patch_embed.proj.bias": r(d),
          "fc_norm.weight": 1 + r(d), "fc_norm.bias": r(d), "head.weight": r(v["classes"], d),
          "head.bias": r(v["classes"])}
    for i in range(v["depth"]):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d), p + "attn.qkv.weight": r(3 * d, d),
                   p + "attn.q_bias": r(d), p + "attn.v_bias": r(d), p + "attn.proj.weight": r(d, d),
                   p + "attn.proj.bias": r(d), p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
                   p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d), p + "mlp.fc2.weight": r(d, 4 * d),
                   p + "mlp.fc2.bias": r(d)})
    return sd


def sinusoid(n: int, d: int) -> torch.Tensor:
    """VideoMAE's get_sinusoid_encoding_table, as written there (numpy, per position and channel)."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for pos in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float).unsqueeze(0)


def videomae_reference(sd: dict, hf, x: torch.Tensor) -> torch.Tensor:
    v, d = VIDEO, VIDEO["dim"]
    t = TF.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                  stride=(v["tubelet"], v["patch"], v["patch"])).flatten(2).transpose(1, 2)
    t = t + sinusoid(t.shape[1], d)
    b, n, _ = t.shape
    for i in range(v["depth"]):
        p = f"blocks.{i}."
        y = TF.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(d), sd[p + "attn.v_bias"]])
        qkv = TF.linear(y, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, v["heads"], -1).permute(2, 0, 3, 1, 4)
        q, k, val = qkv[0] * (d // v["heads"]) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1) @ val
        t = t + TF.linear(a.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = TF.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = TF.linear(TF.gelu(TF.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                      sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + y
    t = reference_sandwich(hf, LAYER, sd, t)
    pooled = TF.layer_norm(t.mean(1), (d,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return TF.linear(pooled, sd["head.weight"], sd["head.bias"])


def video_checkpoint(path: Path, hf) -> dict:
    g = torch.Generator().manual_seed(11)
    sd = {**videomae_state(g), **authors_llama_part(hf, LAYER, g, VIDEO["dim"])}
    args = argparse.Namespace(model="vit_llama_small_patch16_224", input_size=32, num_frames=8, nb_classes=12,
                              tubelet_size=4, use_mean_pooling=True, data_set="SSV2", window_size=(2, 4, 4))
    torch.save({"model": sd, "optimizer": optimizer_state(), "epoch": 39, "scaler": SCALER, "args": args}, path)
    return sd


VIDEO_CFG = str(REPO / "configs/video/shapes_smollm2.yaml")


def test_video_logits_equal_an_independent_videomae_forward(tmp_path, llama):
    import frozenlm
    hf, meta, _, _ = llama
    sd = video_checkpoint(tmp_path / "checkpoint-39.pth", hf)
    res = import_authors(tmp_path / "checkpoint-39.pth", "video", tmp_path / "run", model="video_vit_mini_t4p8_32",
                         lm=f"{meta}:{LAYER}", config=VIDEO_CFG, verbose=False)
    model, cfg = frozenlm.load_trained(res.run_dir)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, ref = model(x), videomae_reference(sd, hf, x)
    assert ours.shape == (2, 12) and torch.allclose(ours, ref, atol=TOL, rtol=0), float((ours - ref).abs().max())
    assert cfg.model.lm.layers == [LAYER] and cfg.model.lm.init == "default"


def test_video_args_the_shapes_cannot_check_are_compared(tmp_path, llama):
    hf, meta, _, _ = llama
    video_checkpoint(tmp_path / "c.pth", hf)
    with pytest.raises(CheckpointError, match=r"args\.num_frames=8 but data\.num_frames=16.*data\.num_frames=8"):
        import_authors(tmp_path / "c.pth", "video", tmp_path / "run", model="video_vit_mini_t4p8_32",
                       lm=f"{meta}:{LAYER}", config=VIDEO_CFG, overrides=["data.num_frames=16"], verbose=False)


# ------------------------------------------------------------------------------ point cloud

PC = dict(dim=192, depth=4, heads=3, enc=128, widths=(32, 64, 128), classes=40)  # point_bert_mini; cls_dim 40
PC_CFG = str(REPO / "configs/pointcloud/shapes_smollm2.yaml")


def pointbert_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    """A random Point-BERT PointTransformer state dict under its own names (models/Point_BERT.py, dvae Encoder)."""
    d, (h1, c1, h2), e = PC["dim"], PC["widths"], PC["enc"]
    r = lambda *s, std=0.05: std * torch.randn(*s, generator=g)  # noqa: E731
    sd = {"cls_token": r(1, 1, d), "cls_pos": r(1, 1, d)}
    for conv, (cin, hid, cout) in (("first_conv", (3, h1, c1)), ("second_conv", (2 * c1, h2, e))):
        p = f"encoder.{conv}."
        sd.update({p + "0.weight": r(hid, cin, 1, std=0.3), p + "0.bias": r(hid), p + "1.weight": 1 + r(hid),
                   p + "1.bias": r(hid), p + "1.running_mean": r(hid), p + "1.running_var": 1 + r(hid).abs(),
                   p + "1.num_batches_tracked": torch.tensor(1000), p + "3.weight": r(cout, hid, 1, std=0.2),
                   p + "3.bias": r(cout)})
    sd.update({"reduce_dim.weight": r(d, e), "reduce_dim.bias": r(d), "pos_embed.0.weight": r(128, 3, std=0.5),
               "pos_embed.0.bias": r(128), "pos_embed.2.weight": r(d, 128), "pos_embed.2.bias": r(d),
               "norm.weight": 1 + r(d), "norm.bias": r(d), "cls_head_finetune.0.weight": r(256, 2 * d),
               "cls_head_finetune.0.bias": r(256), "cls_head_finetune.3.weight": r(PC["classes"], 256),
               "cls_head_finetune.3.bias": r(PC["classes"])})
    for i in range(PC["depth"]):
        p = f"blocks.blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d), p + "attn.qkv.weight": r(3 * d, d),
                   p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d), p + "norm2.weight": 1 + r(d),
                   p + "norm2.bias": r(d), p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d),
                   p + "mlp.fc2.weight": r(d, 4 * d), p + "mlp.fc2.bias": r(d)})
    return sd


def pointbert_reference(sd: dict, hf, groups: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Point-BERT's forward from its state dict (grouping given: it holds no weights)."""
    d, heads = PC["dim"], PC["heads"]

    def conv_bn(x, p):
        x = TF.conv1d(x, sd[p + "0.weight"], sd[p + "0.bias"])
        x = TF.batch_norm(x, sd[p + "1.running_mean"], sd[p + "1.running_var"], sd[p + "1.weight"], sd[p + "1.bias"],
                          False, 0.0, 1e-5).relu()
        return TF.conv1d(x, sd[p + "3.weight"], sd[p + "3.bias"])

    b, g, s, _ = groups.shape
    f = conv_bn(groups.reshape(b * g, s, 3).transpose(1, 2), "encoder.first_conv.")
    f = torch.cat([f.max(2, keepdim=True).values.expand(-1, -1, s), f], 1)
    f = conv_bn(f, "encoder.second_conv.").max(2).values.reshape(b, g, -1)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), TF.linear(f, sd["reduce_dim.weight"], sd["reduce_dim.bias"])], 1)
    pe = TF.linear(TF.gelu(TF.linear(centers, sd["pos_embed.0.weight"], sd["pos_embed.0.bias"])),
                   sd["pos_embed.2.weight"], sd["pos_embed.2.bias"])
    pos = torch.cat([sd["cls_pos"].expand(b, -1, -1), pe], 1)
    n = x.shape[1]
    for i in range(PC["depth"]):
        p = f"blocks.blocks.{i}."
        x = x + pos
        y = TF.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        qkv = TF.linear(y, sd[p + "attn.qkv.weight"]).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1) @ qkv[2]
        x = x + TF.linear(a.transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = TF.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        x = x + TF.linear(TF.gelu(TF.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                          sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    x = reference_sandwich(hf, LAYER, sd, x)
    x = TF.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"])
    h = torch.cat([x[:, 0], x[:, 1:].max(1).values], -1)
    h = TF.linear(h, sd["cls_head_finetune.0.weight"], sd["cls_head_finetune.0.bias"]).relu()
    return TF.linear(h, sd["cls_head_finetune.3.weight"], sd["cls_head_finetune.3.bias"])


def pointcloud_checkpoint(path: Path, hf) -> dict:
    g = torch.Generator().manual_seed(21)
    sd = {**pointbert_state(g), **authors_llama_part(hf, LAYER, g, PC["dim"])}
    acc = {"acc": torch.tensor(83.87)}
    torch.save({"base_model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": optimizer_state(),
                "epoch": 300, "metrics": acc, "best_metrics": acc}, path)
    return sd


def test_pointcloud_logits_equal_an_independent_point_bert_forward(tmp_path, llama):
    import frozenlm
    hf, meta, _, _ = llama
    sd = pointcloud_checkpoint(tmp_path / "ckpt-best.pth", hf)
    res = import_authors(tmp_path / "ckpt-best.pth", "pointcloud", tmp_path / "run", lm=f"{meta}:{LAYER}",
                         config=PC_CFG, verbose=False)
    model, cfg = frozenlm.load_trained(res.run_dir)
    assert cfg.model.name == "point_bert_mini" and cfg.model.num_classes == 40  # the authors' cls_dim: 40
    pts = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        groups, centers = model.group(pts)
        ours, ref = model(pts), pointbert_reference(sd, hf, groups, centers)
    assert torch.allclose(ours, ref, atol=TOL, rtol=0), float((ours - ref).abs().max())
    meta_json = json.loads((res.step_dir / "meta.json").read_text())
    assert math.isclose(meta_json["imported"]["extra"]["best_metrics"]["acc"], 83.87, rel_tol=1e-6)


def test_pointcloud_needs_its_split_named(tmp_path, llama):
    pointcloud_checkpoint(tmp_path / "c.pth", llama[0])
    with pytest.raises(ConfigError, match=r"does not record its ScanObjectNN split.*scanobjectnn_hardest_llama7b"):
        import_authors(tmp_path / "c.pth", "pointcloud", tmp_path / "run", lm=f"{llama[1]}:{LAYER}", verbose=False)


# ---------------------------------------------------------------- the run: eval, resume, fine-tune, CLI

def test_the_import_evaluates_refuses_resume_and_fine_tunes_from_its_weights(tmp_path, llama):
    """`frozenlm eval` reads the import; `resume` refuses it (no training state); `init_from` starts a new run
    from its weights only (lr 0: the trainable weights after one step are exactly the imported ones)."""
    from frozenlm.config import load_config
    from frozenlm.engine import train
    from frozenlm.engine.evaluation import evaluate
    from frozenlm.engine.task import task_schema
    hf, meta, _, _ = llama
    sd = video_checkpoint(tmp_path / "c.pth", hf)
    data = [f"data.root={tmp_path / 'shapes'}", "data.n_train=16", "data.n_val=8", "data.cache=false",
            "progress=false", "num_workers=0"]
    res = import_authors(tmp_path / "c.pth", "video", tmp_path / "run", model="video_vit_mini_t4p8_32",
                         lm=f"{meta}:{LAYER}", config=VIDEO_CFG, overrides=data, verbose=False)
    metrics = evaluate(res.run_dir, ["batch_size=8"])
    assert 0.0 <= metrics["top1"] <= 100.0
    with pytest.raises(CheckpointError, match=r"holds weights but no training state.*init_from="):
        train(load_config(res.run_dir / "config.yaml", ["max_steps=1", "batch_size=8"], schema_for=task_schema))
    new = tmp_path / "finetune"
    train(load_config(res.run_dir / "config.yaml", [f"init_from={res.run_dir}", f"run_dir={new}", "max_steps=1",
                                                    "batch_size=8", "optim.lr=0", "optim.warmup_lr=0",
                                                    "optim.min_lr=0", "eval_every=null"], schema_for=task_schema))
    from safetensors.torch import load_file
    after = load_file(str(next((new / "checkpoints").glob("step_*")) / "model.safetensors"))
    assert torch.equal(after["lm_layer.proj_out.weight"], sd["llama_dim_mapper2.weight"])
    assert torch.equal(after["blocks.3.attn.q_bias"], sd["blocks.3.attn.q_bias"])


def test_cli_import_authors(tmp_path, llama, capsys):
    from frozenlm.cli import main, parse
    hf, meta, _, _ = llama
    pointcloud_checkpoint(tmp_path / "c.pth", hf)
    cmd, a = parse(["import-authors", str(tmp_path / "c.pth"), "--task", "pointcloud", "--lm", f"{meta}:{LAYER}",
                    "--out", str(tmp_path / "run"), "--config", PC_CFG, "data.num_points=256"])
    assert cmd == "import-authors" and a.overrides == ["data.num_points=256"]
    main(["import-authors", str(tmp_path / "c.pth"), "--task", "pointcloud", "--lm", f"{meta}:{LAYER}",
          "--out", str(tmp_path / "run"), "--config", PC_CFG])
    out = capsys.readouterr().out
    assert "step_0000000" in out and "equals the stored layer" in out and "frozenlm eval" in out
    with pytest.raises(SystemExit):  # a bad input: one line, exit code 2
        main(["import-authors", str(tmp_path / "missing.pth"), "--task", "pointcloud", "--out", str(tmp_path / "x")])
    assert "checkpoint not found" in capsys.readouterr().err


def test_analyze_reads_an_imported_image_run(tmp_path, llama):
    from frozenlm.cli import main
    res, _, _ = _import_image(tmp_path, llama, "meta")
    main(["analyze", str(res.run_dir), "n=4", "figures=1", "batch=4", f"out={tmp_path / 'analysis'}"])
    table = (tmp_path / "analysis" / "miou.csv").read_text()
    assert "F_L1" in table and "F_L2" in table
