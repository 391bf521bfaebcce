"""One measurement in a fresh process (so peak memory belongs to it alone).

Run as `python -m frozenlm.bench.worker SPEC.json OUT.json`; the parent (frozenlm.bench.run)
builds the spec. Kinds: "matmul", "step" (a training/inference step of a model or of the LM
sandwich alone), "load" (build LM block(s) from a checkpoint), "ckpt" (checkpoint size).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .flops import block_flops, sandwich_flops, vit_flops
from .memory import PeakMemory, max_rss_bytes, rss_bytes
from .reference import reference_load_layer, reference_sandwich_like
from .synth import SHAPES, dir_bytes


def lm_config(lm: str) -> Any:
    """BlockConfig of a shape preset or of any source (catalog name, file, directory)."""
    from ..lm.config import BlockConfig
    from ..lm.load import source_config
    if lm in SHAPES:
        return BlockConfig(family="llama", **{k: v for k, v in SHAPES[lm].items() if k != "vocab"})
    return source_config(lm)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def build_lm_layer(spec: dict[str, Any], in_dim: int) -> nn.Module:
    """Our LMLayer with random weights of the requested architecture and fast-path flags."""
    from ..layer import LMLayer
    from ..lm.block import init_random_
    from ..lm.stack import BlockStack
    cfg = lm_config(spec["lm"])
    torch.manual_seed(0)
    stack = BlockStack(cfg, spec.get("n_blocks", 1), layer_indices=[cfg.n_layers - 1])
    init_random_(stack)
    if spec.get("frozen_dtype"):
        stack.to(getattr(torch, spec["frozen_dtype"]))
    layer = LMLayer(in_dim, variant="frozen", blocks=stack, attn=spec.get("attn", "sdpa"),
                    grad_checkpointing=spec.get("grad_checkpointing", False), compile=spec.get("compile", False))
    layer.source = f"synthetic:{spec['lm']}"
    return layer


def _maybe_reference(lm: nn.Module, ours: bool) -> nn.Module:
    """`lm` itself, or the eager reference with its weights (after checking they agree)."""
    if ours:
        return lm
    ref = reference_sandwich_like(lm)
    x = torch.randn(1, 16, lm.in_dim)
    with torch.no_grad():
        err = (ref(x) - lm(x)).abs().max().item()
    if err > 1e-3:
        raise RuntimeError(f"reference and frozenlm sandwiches disagree (max abs diff {err:.2e})")
    return ref


def build(spec: dict[str, Any]) -> tuple[nn.Module, nn.Module, Callable[[int], torch.Tensor], dict[str, float]]:
    """(model, the LM part, input maker, analytic FLOPs) for a step spec."""
    from ..models import create_model
    ours = spec["impl"] == "ours"
    in_dim = spec.get("in_dim", 384)
    cfg = lm_config(spec["lm"])
    if spec["impl"] == "authors":  # their ViTLLaMA as released: timed as a whole, its `llama` as the block
        from .authors import build_authors_model
        model = lm = build_authors_model(spec["authors_dir"], spec["model"], spec.get("num_classes", 1000))
        with torch.device("meta"):  # shapes only, for the token count and FLOPs: no memory in this row's peak
            vit = create_model(spec["model"], lm=None, num_classes=spec.get("num_classes", 1000),
                               img_size=spec["img_size"]).vit
        n = vit.patch_embed.num_patches + vit.num_prefix_tokens
        s = spec["img_size"]
        make_x = lambda b: torch.randn(b, 3, s, s)  # noqa: E731
        vit_f = {"fwd": vit_flops(vit, 1), "train": vit_flops(vit, 1, train=True)}
        in_dim = vit.embed_dim
    elif spec["model"] == "block":  # the sandwich alone on `tokens` tokens (e.g. a 1568-token video clip)
        n = spec["tokens"]
        lm = _maybe_reference(build_lm_layer(spec, in_dim), ours)
        model: nn.Module = lm
        make_x = lambda b: torch.randn(b, n, in_dim)  # noqa: E731
        vit_f = {"fwd": 0.0, "train": 0.0}
    else:
        model = create_model(spec["model"], lm=None, num_classes=spec.get("num_classes", 1000),
                             img_size=spec["img_size"])
        vit = model.vit
        model.set_grad_checkpointing(spec.get("vit_checkpointing", False))
        in_dim = vit.embed_dim
        lm = model.lm_layer = _maybe_reference(build_lm_layer(spec, in_dim), ours)
        if not ours:
            for blk in vit.blocks:  # timm's eager attention path, as in the released code
                blk.attn.fused_attn = False
        n = vit.patch_embed.num_patches + vit.num_prefix_tokens
        s = spec["img_size"]
        make_x = lambda b: torch.randn(b, 3, s, s)  # noqa: E731
        vit_f = {"fwd": vit_flops(vit, 1), "train": vit_flops(vit, 1, train=True)}
    nb = spec.get("n_blocks", 1)
    flops = {"tokens": n,
             "lm_fwd": sandwich_flops(in_dim, cfg, n, 1, nb),
             "lm_train": sandwich_flops(in_dim, cfg, n, 1, nb, train=True, frozen=True),
             "block_fwd": nb * block_flops(cfg, n, 1).forward}
    flops["step_fwd"] = vit_f["fwd"] + flops["lm_fwd"]
    flops["step_train"] = vit_f["train"] + flops["lm_train"]
    return model, lm, make_x, flops


def measure_step(spec: dict[str, Any]) -> dict[str, Any]:
    """Training-step and inference throughput, FLOP/s and peak memory of one configuration."""
    device = torch.device(spec.get("device", "cpu"))
    precision = spec.get("precision", "fp32")
    model, lm, make_x, flops = build(spec)
    model.to(device)
    b = spec["batch"]
    x = make_x(b).to(device)
    y = torch.randint(0, 10, (b,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_step() -> None:
        with amp:
            out = model(x)
        out = out.float()
        loss = nn.functional.cross_entropy(out, y) if out.dim() == 2 else out.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    with PeakMemory(device) as pm:
        t_train = _timed(train_step, device, spec.get("warmup", 1), spec["steps"])
    model.eval()
    def infer() -> None:
        with amp:
            model(x)

    with torch.no_grad():
        t_inf = _timed(infer, device, 1, spec["steps"])
        # ours holds its LM block(s) in `.blocks`; the reference and the authors' ViTLLaMA in `.llama`
        # (the authors' model also has `.blocks`: its ViT blocks, which must not be timed as the LM block)
        blocks = lm.blocks if spec["impl"] == "ours" else lm.llama
        h = torch.randn(b, flops["tokens"], lm_config(spec["lm"]).dim, device=device)
        with amp:
            t_blk = _timed(lambda: blocks(h), device, 1, spec["steps"])
    train_s, inf_s, blk_s = min(t_train), min(t_inf), min(t_blk)
    return {"train_s_per_step": train_s, "train_samples_per_s": b / train_s,
            "infer_samples_per_s": b / inf_s, "block_fwd_s": blk_s,
            "step_train_flops": b * flops["step_train"], "lm_train_flops": b * flops["lm_train"],
            "train_tflops_per_s": b * flops["step_train"] / train_s / 1e12,
            "block_fwd_tflops_per_s": b * flops["block_fwd"] / blk_s / 1e12,
            "peak_mem_bytes": pm.peak, "step_mem_bytes": pm.delta, "tokens": flops["tokens"],
            "all_train_s": t_train}


def measure_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """Best achieved FLOP/s over square n x n matmuls and the LLaMA-7B FFN shape (the practical peak)."""
    device = torch.device(spec.get("device", "cpu"))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    n = spec.get("n", 4096)
    shapes = [(n, n, n), (2 * n, n, max(n, 11008 * n // 4096))]  # (M, K, N): tokens x d_lm -> FFN width
    best: dict[str, Any] = {"tflops_per_s": 0.0}
    for m, k, nn_ in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, nn_, device=device, dtype=dtype)
        t = min(_timed(lambda: a @ b, device, 1, spec.get("steps", 3)))
        rate = 2 * m * k * nn_ / t / 1e12
        if rate > best["tflops_per_s"]:
            best = {"tflops_per_s": rate, "shape": [m, k, nn_]}
    return {**best, "n": n, "dtype": str(dtype)}


def measure_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and peak RSS to get one layer of a checkpoint into memory (ours vs whole-file)."""
    base = rss_bytes()
    t = time.perf_counter()
    if spec["impl"] == "ours":
        from ..lm.load import load_blocks
        dtype = getattr(torch, spec.get("dtype") or "float32")
        stack = load_blocks(spec["path"], [spec["layer"]], dtype=dtype)
        nbytes = sum(p.numel() * p.element_size() for p in stack.parameters())
    else:
        blk = reference_load_layer(spec["path"], spec["layer"])
        nbytes = sum(p.numel() * p.element_size() for p in blk.parameters())
    secs = time.perf_counter() - t
    return {"load_s": secs, "peak_rss_bytes": max_rss_bytes(), "peak_rss_growth_bytes": max_rss_bytes() - base,
            "layer_bytes": nbytes}


def measure_ckpt(spec: dict[str, Any]) -> dict[str, Any]:
    """Bytes on disk of a trained-model checkpoint: ours (trainable weights only) vs torch.save(all)."""
    from ..engine.checkpoint import save_checkpoint
    from ..models import create_model
    model = create_model(spec["model"], lm=None, num_classes=spec.get("num_classes", 1000), img_size=spec["img_size"])
    model.lm_layer = build_lm_layer(spec, model.vit.embed_dim)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params)
    for p in params:  # one step so the optimizer state (2 moments per weight) exists, as in training
        p.grad = torch.zeros_like(p)
    opt.step()
    with tempfile.TemporaryDirectory() as d:
        ours = save_checkpoint(Path(d) / "ours", 1, model, {"optimizer": opt.state_dict()}, {})
        ours_model = (ours / "model.safetensors").stat().st_size
        ours_total = dir_bytes(ours)
        torch.save(model.state_dict(), Path(d) / "reference.pth")
        ref = (Path(d) / "reference.pth").stat().st_size
    return {"ours_model_bytes": ours_model, "ours_dir_bytes": ours_total, "reference_bytes": ref}


KINDS = {"step": measure_step, "matmul": measure_matmul, "load": measure_load, "ckpt": measure_ckpt}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    out = KINDS[spec["kind"]](spec)
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
