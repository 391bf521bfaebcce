"""Every registered model, timm-style (issue 17): forward, backward, no NaN, frozen parameters get no
gradient and no optimizer state, and gradient checkpointing gives the same gradients.

Each model is built from its factory with small offline settings; its LMLayer(s) are swapped for a
frozen in-memory tiny LLaMA block (tests/_engine_fixtures.py) so no 135M-parameter block is run.
A model added to ``frozenlm.models.list_models()`` without a case here fails ``test_every_model_has_a_case``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

import _engine_fixtures as fx
from frozenlm.config import load_config, make_config
from frozenlm.engine.optim import build_optimizer
from frozenlm.layer import LMLayer
from frozenlm.models import create_model, list_models

B = 2


@dataclass
class Case:
    """A model name, factory arguments that keep it small, and how to feed it."""

    model: str
    kwargs: dict[str, Any]
    batch: Callable[[nn.Module], Any] | None  # None: the motion_batch fixture
    call: Callable[[nn.Module, Any], Any] = lambda m, b: m(b)
    id: str = ""
    #: trainable parameters that this forward does not reach, with the reason
    unused: tuple[str, ...] = ()


def _image(m: nn.Module) -> Tensor:
    pe = m.vit.patch_embed
    return torch.randn(B, pe.proj.in_channels, *pe.img_size)


def _clip(m: nn.Module) -> Tensor:
    pe = m.patch_embed
    return torch.randn(B, 3, pe.num_frames, pe.img_size, pe.img_size)


def _vl_batch(_: nn.Module) -> dict[str, Tensor]:
    mask = torch.ones(B, 8, dtype=torch.long)
    mask[1, 5:] = 0  # one padded text
    return {"images": torch.randn(B, 3, 64, 64), "input_ids": torch.randint(1000, 2000, (B, 8)),
            "attention_mask": mask}


def _meter_call(m: nn.Module, b: dict[str, Tensor]) -> Any:
    # The ITC heads are reached only through embed() (retrieval's candidate pre-selection).
    out = m(**b)
    itc = m.embed(m.encode_image(b["images"]), m.encode_text(b["input_ids"], b["attention_mask"]))
    return [out, *itc]


def _scene_batch(_: nn.Module) -> dict[str, Any]:
    return {"points": torch.randn(B, 128, 6), "situation": torch.randint(1, 20, (B, 6)),
            "question": torch.randint(1, 20, (B, 5)), "situation_text": ["i face the door", "the bed is behind me"],
            "question_text": ["what is on my left", "how many chairs"]}


_METER = dict(image={"name": "vit_mini_patch16_64"}, text={"source": "minilm-l6", "num_layers": 1}, hidden=64,
              fusion_layers=1, heads=2, num_answers=7, embed_dim=16, dropout=0.0)
_SQA3D = dict(vocab_size=20, num_answers=6, dim=32, word_dim=16, heads=2, num_tokens=8, num_seeds=32,
              neighbours=(8, 4), scene_widths=(8, 16, 32), dropout=0.0)
_METER_UNUSED = ("logit_scale",)  # the ITC temperature enters only the retrieval loss

CASES: list[Case] = [
    *[Case(n, {"num_classes": 5}, _image) for n in ("vit_mini_patch14_28", "vit_mini_patch7_28", "vit_tiny_patch7_28",
                                                  "vit_tiny_patch4_28", "vit_mini_patch4_32", "vit_tiny_patch4_32",
                                                  "vit_small_patch4_32", "vit_tiny_patch8_64")],
    *[Case(n, {"num_classes": 5}, _clip) for n in ("video_vit_mini_t2p8_32", "video_vit_mini_t4p8_32")],
    # The paper's 224 px, 16-frame backbones on 8-token clips (ViT-B's 86M parameters cut to 2 blocks).
    Case("videomae_small_patch16_224", {"num_classes": 5, "img_size": 32, "num_frames": 4}, _clip),
    Case("videomae_base_patch16_224", {"num_classes": 5, "img_size": 32, "num_frames": 4, "depth": 2}, _clip),
    Case("point_bert", {"num_classes": 5, "num_group": 16, "group_size": 8, "drop_path_rate": 0.0, "head_dropout": 0.0},
         lambda m: torch.randn(B, 128, 3)),
    Case("point_bert_mini", {"num_classes": 5, "num_group": 8, "group_size": 8, "head_dropout": 0.0},
         lambda m: torch.randn(B, 64, 3)),
    Case("vectornet", {"hidden": 16, "subgraph_depth": 2}, None),
    Case("mmtransformer", {"hidden": 16, "subgraph_depth": 2, "enc_layers": 1, "dec_layers": 1, "heads": 2}, None),
    Case("meter", _METER, _vl_batch, _meter_call, "meter", _METER_UNUSED),
    Case("meter", {**_METER, "freeze_text": True}, _vl_batch, _meter_call, "meter-frozen-text", _METER_UNUSED),
    Case("sqa3d", _SQA3D, _scene_batch, lambda m, b: m(**b), "sqa3d-lstm"),
    Case("sqa3d", {**_SQA3D, "text_encoder": "minilm"}, _scene_batch, lambda m, b: m(**b), "sqa3d-minilm"),
]


@pytest.fixture(scope="module")
def motion_batch(tmp_path_factory) -> dict[str, Tensor]:
    """Two generated driving scenes, vectorised and collated by the motion task (the models' real input)."""
    from frozenlm.engine.task import get_task
    root = tmp_path_factory.mktemp("motion")
    cfg = load_config("configs/motion/synth_vectornet_smollm2.yaml",
                      [f"data.root={root}", "data.num_train=2", "data.num_val=2", "data.max_lanes=4", "data.max_agents=3"])
    task = get_task("motion")
    ds = task.build_dataset(cfg, "train")
    return task.collate_fn(cfg, "train")([ds[0], ds[1]])


def test_every_model_has_a_case() -> None:
    assert sorted({c.model for c in CASES}) == list_models()


def lm_layers(model: nn.Module) -> dict[str, LMLayer]:
    """Every LMLayer of a model, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LMLayer)}


def _build(case: Case) -> nn.Module:
    """The model with each LMLayer replaced by a frozen tiny LLaMA block of the same width."""
    torch.manual_seed(0)
    model = create_model(case.model, lm=None, **case.kwargs)
    layers = lm_layers(model)
    assert layers, f"{case.model} has no LMLayer"
    for i, (path, old) in enumerate(layers.items()):
        parent, _, leaf = path.rpartition(".")
        new = LMLayer(old.in_dim, source="tiny-test", blocks=fx.tiny_blocks(i))
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model.train()


def _floats(out: Any) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _floats(o)]
    return []


def _grads(model: nn.Module, case: Case, batch: Any) -> dict[str, Tensor]:
    """Forward + backward from a fixed RNG state; returns every parameter's gradient (None kept out)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    outs = _floats(case.call(model, batch))
    assert outs, f"{case.model} returned no float tensor"
    for t in outs:
        assert torch.isfinite(t).all(), f"{case.model}: non-finite output"
    sum(t.float().square().mean() for t in outs).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _count_calls(modules: list[nn.Module]) -> list[int]:
    """Counters of each module's forward runs. Wraps ``forward`` itself: checkpointing's recomputation
    in backward does not fire forward hooks."""
    counts = [0] * len(modules)
    for i, m in enumerate(modules):
        def counted(*a: Any, _fwd: Callable = m.forward, _i: int = i, **k: Any) -> Any:
            counts[_i] += 1
            return _fwd(*a, **k)
        m.forward = counted
    return counts


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id or c.model)
def test_model(case: Case, request: pytest.FixtureRequest) -> None:
    model = _build(case)
    batch = case.batch(model) if case.batch is not None else request.getfixturevalue("motion_batch")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    lm_frozen = {f"{path}.blocks.{n}" for path, layer in lm_layers(model).items() for n, _ in layer.blocks.named_parameters()}
    assert lm_frozen and lm_frozen <= frozen, "the tiny LM block must be frozen"

    # forward, backward, no NaN; every trainable parameter is reached, no frozen one is
    grads = _grads(model, case, batch)
    assert not set(grads) & frozen, f"frozen parameters got gradients: {sorted(set(grads) & frozen)[:5]}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(n for n in trainable - set(grads) if not n.startswith(case.unused))
    assert not missing, f"{case.model}: trainable parameters without gradient: {missing[:8]}"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad[:5]}"

    # gradient checkpointing (the LM block always; the backbone where it supports it): same gradients,
    # and the checkpointed modules really run twice (forward, then recomputed in backward)
    watched = [layer.blocks.layers[0] for layer in lm_layers(model).values()]
    for layer in lm_layers(model).values():
        layer.blocks.grad_checkpointing = True
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        backbone = model.vit.blocks if hasattr(model, "vit") else model.blocks
        watched.append(backbone[0])
    calls = _count_calls(watched)
    ckpt_grads = _grads(model, case, batch)
    assert calls == [2] * len(watched), f"checkpointed modules ran {calls} times"
    assert ckpt_grads.keys() == grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(ckpt_grads[n], g, msg=lambda m, n=n: f"{case.model} {n}: {m}")

    # the optimizer the engine builds holds no frozen parameter and keeps no state for one
    opt = build_optimizer(model, make_config({}))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert in_opt == {id(params[n]) for n in trainable}
    before = {n: params[n].detach().clone() for n in frozen}
    opt.step()
    stateful = {id(p) for p in opt.state}
    assert stateful and not stateful & {id(params[n]) for n in frozen}
    assert all(torch.equal(params[n], v) for n, v in before.items()), "a frozen parameter changed"
