"""`frozenlm bench --authors DIR`: the authors' model timed in the same run, ratios at equal precision.

The checkout below is a stand-in with the released layout and interface of ziqipang/LM4VisualEncoding
(image_classification/models/vit_llama.py registering vit_llama_small_patch16_224(num_classes=...), a
model with a `llama` module, relative imports inside the package); its layers are our own tiny ones.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from frozenlm.bench import run as bench_run
from frozenlm.bench.authors import build_authors_model
from frozenlm.bench.run import bench_steps, run_worker, step_configs
from frozenlm.engine.precision import cpu_has_bf16

LLAMA = '''
import torch
from torch import nn

class LLaMATransformer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
    def forward(self, x):
        return x + torch.tanh(self.fc(x))
'''
VIT_LLAMA = '''
from torch import nn
from .llama import LLaMATransformer

class ViTLLaMA(nn.Module):
    def __init__(self, num_classes, dim=384, lm_dim=576):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 16, 16)
        self.blocks = nn.Sequential(nn.Linear(dim, dim))  # their ViT blocks (the bench must time `llama`)
        self.llama = LLaMATransformer(lm_dim)
        for p in self.llama.parameters():
            p.requires_grad = False
        self.llama_dim_mapper1 = nn.Linear(dim, lm_dim, bias=False)
        self.llama_dim_mapper2 = nn.Linear(lm_dim, dim, bias=False)
        self.head = nn.Linear(dim, num_classes)
    def forward(self, x):
        x = self.blocks(self.patch_embed(x).flatten(2).transpose(1, 2))
        x = self.llama_dim_mapper2(self.llama(self.llama_dim_mapper1(x)))
        return self.head(x.mean(1))

def vit_llama_small_patch16_224(pretrained=False, **kwargs):
    return ViTLLaMA(**kwargs)
'''


def _checkout(root: Path, vit_llama: str = VIT_LLAMA) -> Path:
    models = root / "image_classification" / "models"
    models.mkdir(parents=True)
    (models / "__init__.py").write_text("")
    (models / "llama.py").write_text(LLAMA)
    (models / "vit_llama.py").write_text(vit_llama)
    return root


def test_authors_model_is_built_from_the_checkout(tmp_path: Path) -> None:
    model = build_authors_model(_checkout(tmp_path / "repo"), "vit_small_patch16_224", num_classes=7)
    assert model.head.out_features == 7 and not any(p.requires_grad for p in model.llama.parameters())


def test_authors_rows_are_timed_by_the_worker(tmp_path: Path) -> None:
    spec = {"kind": "step", "impl": "authors", "authors_dir": str(_checkout(tmp_path / "repo")),
            "model": "vit_small_patch16_224", "img_size": 32, "lm": "smollm2-135m", "batch": 2, "steps": 1,
            "warmup": 0, "precision": "fp32", "in_dim": 384, "tokens": 8}
    r = run_worker(spec)
    assert "error" not in r, r
    assert r["train_samples_per_s"] > 0 and r["block_fwd_s"] > 0 and r["tokens"] == 5  # 2x2 patches + CLS


def test_step_configs_put_the_authors_first_at_each_precision(tmp_path: Path) -> None:
    root = _checkout(tmp_path / "repo")
    names = [n for n, _ in step_configs("bf16", "cpu", False, str(root))]
    want = ["authors' vit_llama_small_patch16_224 fp32"]
    if cpu_has_bf16():
        want.append("authors' vit_llama_small_patch16_224 bf16 autocast")
    assert names[:len(want)] == want and names[len(want)] == "reference fp32 (eager)"
    assert not any(n.startswith("authors'") for n, _ in step_configs("bf16", "cpu", False, None))


def test_ratios_compare_each_row_with_the_authors_at_the_same_precision(monkeypatch, tmp_path: Path) -> None:
    root = _checkout(tmp_path / "repo")
    speed = {("authors", "fp32"): 1.0, ("authors", "bf16"): 2.0, ("reference", "fp32"): 0.5,
             ("reference", "bf16"): 1.5, ("ours", "bf16"): 3.0}
    monkeypatch.setattr(bench_run, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(bench_run, "run_worker", lambda spec: {
        "train_samples_per_s": speed[spec["impl"], spec["precision"]],
        "infer_samples_per_s": 2 * speed[spec["impl"], spec["precision"]], "peak_mem_bytes": 1, "block_fwd_tflops_per_s": 0.1})
    a = argparse.Namespace(precision="bf16", device="cpu", compile=False, authors=str(root), model="vit_small_patch16_224")
    rows = {r["config"]: r for r in bench_steps(a, {}, 0.0)}
    assert rows["frozenlm (sdpa)"]["train_x_authors"] == pytest.approx(1.5)   # 3.0 vs their bf16 2.0
    assert rows["reference fp32 (eager)"]["train_x_authors"] == pytest.approx(0.5)  # vs their fp32 1.0
    assert rows["reference bf16 autocast"]["infer_x_authors"] == pytest.approx(0.75)


@pytest.mark.parametrize("case,needle", [
    ("nodir", "vit_llama.py; that file does not exist"),
    ("model", "no LLaMA model for --model vit_large_patch16_224"),
    ("import", "importing"),
])
def test_bad_checkouts_are_named(tmp_path: Path, case: str, needle: str) -> None:
    if case == "nodir":
        with pytest.raises(ValueError, match=needle):
            build_authors_model(tmp_path / "missing", "vit_small_patch16_224")
    elif case == "model":
        with pytest.raises(ValueError, match=needle):
            build_authors_model(_checkout(tmp_path / "repo"), "vit_large_patch16_224")
    else:
        root = _checkout(tmp_path / "repo", "import fairscale_not_installed\n" + VIT_LLAMA)
        with pytest.raises(RuntimeError, match="ModuleNotFoundError: No module named 'fairscale_not_installed'"):
            build_authors_model(root, "vit_small_patch16_224")
