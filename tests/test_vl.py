"""2D vision-language: VQA metric/normalisation, retrieval R@K and re-ranking, METER co-attention masks,
MiniLM text encoder from the wheel, easy-VQA loaders, training steps for both heads, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.retrieval import build_easy_vqa_captions, easy_vqa_captions
from frozenlm.data.vqa import (VQADataset, accuracy_scores, build_easy_vqa, easy_vqa_answers, easy_vqa_root,
                               image_transform, normalize_answer, read_easy_vqa, soft_scores, vqa_accuracy)
from frozenlm.models import create_model
from frozenlm.tasks.retrieval import RetrievalTask, itc_itm_loss, recall_at_k, rerank
from frozenlm.engine.optim import param_groups
from frozenlm.tasks.vl_common import TextCollate, meter_lr_mults
from frozenlm.tasks.vqa import VQATask, vqa_loss
from _best import assert_best_checkpoint

VQA_CFG = "configs/vqa/easyvqa_smollm2.yaml"
RET_CFG = "configs/retrieval/easyvqa_captions_smollm2.yaml"
TINY = ["model.fusion_layers=1", "model.text.num_layers=1", "model.hidden=64", "model.heads=2",
        "model.embed_dim=32", "model.lm.variant=none", "num_workers=0", "precision=fp32", "progress=false"]


# --- VQA metric ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,norm", [("Two", "2"), ("the dog.", "dog"), ("yes!", "yes"), ("Dont", "don't"),
                                      ("a red-and-white bus", "red and white bus"), ("3.5", "3.5"),
                                      ("  ten\tapples ", "10 apples"), ("what's that?", "what's that")])
def test_answer_normalisation(raw: str, norm: str) -> None:
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_and_soft_scores_by_hand() -> None:
    gts = ["two"] * 2 + ["3"] * 8
    # "2" matches 2 annotators: leaving out one of them leaves 1 match (1/3), else 2 matches (2/3).
    assert vqa_accuracy("2", gts) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert vqa_accuracy("Three", gts) == pytest.approx(1.0)  # 8 matches: min(1, 7/3) and min(1, 8/3)
    assert vqa_accuracy("3", ["3"] * 3 + ["4"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)  # 0.9
    assert vqa_accuracy("cat", gts) == 0.0
    vocab = ["2", "3", "4"]
    t = soft_scores(gts, {a: i for i, a in enumerate(vocab)})
    torch.testing.assert_close(t, torch.tensor([2 / 3, 1.0, 0.0]))
    s = accuracy_scores(gts, vocab)
    torch.testing.assert_close(s, torch.tensor([0.6, 1.0, 0.0]))


def test_vqa_task_metric_and_loss_by_hand() -> None:
    task = VQATask()
    score = torch.tensor([[0.6, 1.0, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([[2 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]])

    class Fixed(torch.nn.Module):
        def forward(self, *_: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"vqa_logits": torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.0, 3.0]])}  # picks "2", then "4"
    sums = task.eval_batch(Fixed(), {"images": None, "input_ids": None, "attention_mask": None, "score": score,
                                     "target": target}, None)
    assert task.finalize(sums, None)["overall"] == pytest.approx(100 * (0.6 + 1.0) / 2)

    # Per answer type (fixed list per dataset) and the other-image control, by hand.
    class ImageReader(torch.nn.Module):  # answers index 0 for a dark image, 2 for a bright one
        def forward(self, images: torch.Tensor, *_: torch.Tensor) -> dict[str, torch.Tensor]:
            bright = images.flatten(1).mean(1) > 0.5
            return {"vqa_logits": torch.stack([~bright, torch.zeros_like(bright), bright], 1).float()}
    images = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2), torch.ones(3, 2, 2)])
    score3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.3]])
    cfg = load_config(VQA_CFG, ["vqa.image_control=true"])
    batch = {"images": images, "input_ids": None, "attention_mask": None, "score": score3,
             "target": score3, "answer_type": torch.tensor([0, 1, -1])}  # yes/no, color, untyped
    m = task.finalize(task.eval_batch(ImageReader(), batch, cfg), cfg)
    assert m["overall"] == pytest.approx(100 * 2.3 / 3) and m["yes/no"] == 100.0 and m["color"] == 100.0
    assert "shape" not in m  # no shape question in this batch
    # rolled images: (bright, dark, bright) -> picks 2, 0, 2 -> scores 0, 0, 0.3
    assert m["overall_other_image"] == pytest.approx(100 * 0.3 / 3)
    logits = torch.zeros(1, 4)
    assert float(vqa_loss(logits, torch.zeros(1, 4))) == pytest.approx(4 * float(torch.log(torch.tensor(2.0))))


# --- retrieval metric ---------------------------------------------------------------------------
def test_recall_at_k_hand_made_matrix() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],    # relevant 0 ranked 1st
                           [0.9, 0.1, 0.5, 0.3],    # relevant 1 ranked 4th
                           [0.2, 0.8, 0.7, 0.1]])   # relevant {2, 3}: best is 2, ranked 2nd
    hits = recall_at_k(scores, [[0], [1], [2, 3]], ks=(1, 2, 4))
    assert hits == {1: 1, 2: 2, 4: 3}
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(scores, [[0], [], [1]])


def test_rerank_orders_candidates_by_itm_then_the_rest_by_similarity() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.5]])
    itm = {(0, 0): -1.0, (0, 1): 2.0, (0, 3): 0.5}  # top-3 by sim: 0, 1, 3
    out = rerank(sim, 3, lambda r, c: torch.tensor([itm[(int(a), int(b))] for a, b in zip(r, c)]))
    assert out.argsort(dim=1, descending=True)[0].tolist() == [1, 3, 0, 2]


# --- model --------------------------------------------------------------------------------------
def _tiny_meter(lm: dict | None = None, num_answers: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("meter", image={"name": "vit_mini_patch16_64"},
                        text={"source": "minilm-l6", "num_layers": 1, "freeze_embeddings": True},
                        lm=lm, hidden=64, fusion_layers=2, heads=2, num_answers=num_answers, embed_dim=32,
                        dropout=0.0)


@pytest.fixture(scope="module")
def meter() -> torch.nn.Module:
    """One tiny METER with SmolLM2's frozen last block, shared (loading the block dominates test time)."""
    return _tiny_meter({"variant": "frozen", "source": "smollm2-135m"})


def test_padded_text_tokens_change_nothing(meter: torch.nn.Module) -> None:
    m = meter.eval()
    tok = TextCollate("minilm-l6", 32).tokenizer()
    enc = tok(["what color is the shape?", "is there a red circle in the image?"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert (mask == 0).any()  # the first question is already padded
    extra = 7
    ids2 = torch.cat([ids, torch.full((2, extra), 4242)], 1)  # padding with arbitrary token ids
    mask2 = torch.cat([mask, torch.zeros(2, extra, dtype=mask.dtype)], 1)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = m(x, ids, mask), m(x, ids2, mask2)
        single = m(x[:1], ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])  # no padding at all
    for k in ("vqa_logits", "itm_logits", "image_tokens"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["vqa_logits"][:1], single["vqa_logits"], atol=1e-5, rtol=1e-5)
    # Unmasked, the same extra tokens do change the answer: the mask is what protects it.
    with torch.no_grad():
        c = m(x, ids2, torch.ones_like(mask2))
    assert not torch.allclose(a["vqa_logits"], c["vqa_logits"], atol=1e-4)


def test_shapes_gradients_and_frozen_block(meter: torch.nn.Module) -> None:
    m = meter
    m.zero_grad(set_to_none=True)
    col = TextCollate("minilm-l6", 16)
    enc = col.tokenize(["is there a circle?", "what shape is it?", "a blue circle"])
    out = m(torch.randn(3, 3, 64, 64), enc["input_ids"], enc["attention_mask"])
    assert out["vqa_logits"].shape == (3, 5) and out["itm_logits"].shape == (3, 2)
    assert out["image_tokens"].shape == (3, 17, 64)  # 16 patches + CLS, fusion width
    (out["vqa_logits"].sum() + out["itm_logits"].sum()).backward()
    assert all(p.grad is None for p in m.lm_layer.blocks.parameters())  # frozen, but...
    assert m.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # ...gradients flow through it
    assert m.lm_layer.proj_in.weight.grad.abs().sum() > 0
    assert m.text_encoder.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in m.lm_layer.blocks.parameters())


def test_frozen_text_encoder_is_held_out_of_checkpoints_and_a_trainable_one_is_saved() -> None:
    from frozenlm.engine.checkpoint import model_state_to_save
    from frozenlm.layer import frozen_param_names, frozen_sources
    torch.manual_seed(0)
    frozen = create_model("meter", image={"name": "vit_mini_patch16_64"}, text={"source": "minilm-l6", "num_layers": 1},
                          lm=None, hidden=64, fusion_layers=1, heads=2, embed_dim=32, freeze_text=True)
    text_keys = {k for k in frozen.state_dict() if k.startswith("text_encoder.")}
    assert text_keys and frozen_param_names(frozen) == text_keys
    assert not text_keys & set(model_state_to_save(frozen))
    assert list(frozen_sources(frozen)) == ["text_encoder"] and frozen_sources(frozen)["text_encoder"]["source"] == "minilm-l6"
    col = TextCollate("minilm-l6", 16).tokenize(["a blue circle", "is it red?"])
    frozen.train()(torch.randn(2, 3, 64, 64), col["input_ids"], col["attention_mask"])["itm_logits"].sum().backward()
    assert all(p.grad is None for p in frozen.text_encoder.parameters()) and frozen.text_proj.weight.grad is not None
    trainable = _tiny_meter()
    assert frozen_param_names(trainable) == set()
    assert any(k.startswith("text_encoder.encoder.") for k in model_state_to_save(trainable))


def test_param_groups_give_adapters_10x_the_image_encoder(meter: torch.nn.Module) -> None:
    cfg = load_config(VQA_CFG)
    m = meter
    groups = param_groups(m, cfg, meter_lr_mults(cfg))
    mult = {n: g["lr_mult"] for g in groups for n in g["param_names"]}
    assert mult["lm_layer.proj_in.weight"] == 10 * mult["image_encoder.blocks.0.attn.qkv.weight"]
    assert mult["text_encoder.encoder.layer.0.attention.self.query.weight"] == pytest.approx(0.1)
    assert "text_encoder.embeddings.word_embeddings.weight" not in mult  # frozen in the offline default
    with pytest.raises(ValueError, match="unknown groups"):
        meter_lr_mults(load_config(VQA_CFG, ["+model.lr_mult.adapters=3"]))


def test_text_encoder_is_minilm_from_the_wheel_offline() -> None:
    from safetensors import safe_open
    from frozenlm.models.text import build_text_encoder, resolve_text_dir
    d = resolve_text_dir("minilm-l6")
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    enc = build_text_encoder("minilm-l6").eval()
    assert enc.config.hidden_size == 384 and len(enc.encoder.layer) == 6
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("encoder.layer.5.output.dense.weight"))
        torch.testing.assert_close(enc.encoder.layer[5].output.dense.weight, f.get_tensor(key))
    tok = TextCollate("minilm-l6", 32)
    e = tok.tokenize(["a blue circle", "a small blue round shape", "the stock market fell sharply today"])
    with torch.no_grad():
        h = enc(**e).last_hidden_state
    m = e["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)  # the model's mean pooling
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2  # a real pretrained sentence encoder


# --- data ---------------------------------------------------------------------------------------
def test_easy_vqa_counts_match_the_package() -> None:
    import easy_vqa
    for split, getq, getim in (("train", easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
                               ("test", easy_vqa.get_test_questions, easy_vqa.get_test_image_paths)):
        qs, images = read_easy_vqa(split)
        texts, answers, ids = getq()
        assert len(qs) == len(texts) and [q[0] for q in qs] == texts and [q[1] for q in qs] == answers
        assert len(images) == len(getim())
    assert (len(read_easy_vqa("train")[0]), len(read_easy_vqa("test")[0])) == (38575, 9673)
    assert easy_vqa_answers() == easy_vqa.get_answers() and len(easy_vqa_answers()) == 13
    cfg = load_config(VQA_CFG, ["data.subset_train=null", "data.subset_val=null"])
    ds = build_easy_vqa(cfg.data, "val")
    assert len(ds) == 9673
    item = ds[0]
    assert item["image"].shape == (3, 64, 64)
    kinds = {q[1]: ds.answer_types[r["answer_type_idx"]] for q, r in zip(read_easy_vqa("test")[0], ds.records)}
    assert kinds["yes"] == kinds["no"] == "yes/no" and kinds["circle"] == "shape" and kinds["blue"] == "color"
    assert all(r["answer_type_idx"] >= 0 for r in ds.records)
    ans = easy_vqa_answers().index(read_easy_vqa("test")[0][0][1])
    expected = torch.zeros(13)
    expected[ans] = 1.0  # one answer = 10 agreeing annotators: soft target 1 and accuracy 1
    torch.testing.assert_close(item["target"], expected)
    torch.testing.assert_close(item["score"], expected)


def test_easy_vqa_captions_and_split() -> None:
    qs, _ = read_easy_vqa("train")
    caps = easy_vqa_captions(qs)
    assert caps[0] == "a blue rectangle"  # image 0: "what is the blue shape?" -> rectangle
    assert len(caps) == 3542 and len(set(caps.values())) == 24  # 8 colours x 3 shapes; 458 images unnamed
    for q, a, i in qs[:3000]:  # every QA pair of a captioned image agrees with its caption
        if i in caps and a not in ("yes", "no"):
            assert a in caps[i].split(), (q, a, caps[i])
    cfg = load_config(RET_CFG, ["data.unique_texts=false"])
    ds = build_easy_vqa_captions(cfg.data, "test")
    assert len(ds) == 300 and len(ds.texts) == 300
    # relevance by caption string: every image is relevant to all texts with its caption
    t0 = ds.texts[0]
    assert ds.image_texts[0] == [j for j, t in enumerate(ds.texts) if t == t0]
    # the offline default's bank holds each distinct caption once; relevance is unchanged
    uniq = build_easy_vqa_captions(load_config(RET_CFG).data, "test")
    assert len(uniq) == 300 and sorted(uniq.texts) == sorted(set(ds.texts)) and len(uniq.texts) <= 24
    for i in range(len(ds)):
        assert len(uniq.image_texts[i]) == 1 and uniq.texts[uniq.image_texts[i][0]] == ds.captions[i][0]


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    tf = image_transform(64, (0.5,) * 3, (0.5,) * 3, False)
    img = tmp_path / "a.png"
    from PIL import Image
    Image.new("RGB", (8, 8)).save(img)
    with pytest.raises(KeyError, match="'purple' is not in the answer vocabulary"):
        VQADataset([{"image": img, "question": "what color?", "answers": ["purple"]}], ["red"], tf, strict_answers=True)
    with pytest.raises(ValueError, match="empty or non-string question"):
        VQADataset([{"image": img, "question": "  ", "answers": ["red"]}], ["red"], tf)
    ds = VQADataset([{"image": tmp_path / "missing.png", "question": "what?", "answers": ["red"]}], ["red"], tf)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ds[0]
    with pytest.raises(ValueError, match="num_answers"):
        VQATask().build_dataset(load_config(VQA_CFG, ["model.num_answers=12"]), "val")
    m = _tiny_meter(None)
    with pytest.raises(ValueError, match="no tokens"):
        m(torch.randn(1, 3, 64, 64), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_model("meter", text={"source": str(tmp_path)})


# --- training -----------------------------------------------------------------------------------
def _batch(task, cfg, split: str, n: int) -> dict:
    ds = task.build_dataset(cfg, split)
    return task.collate_fn(cfg, split)([ds[i] for i in range(n)])


def test_training_steps_lower_both_losses() -> None:
    vcfg = load_config(VQA_CFG, TINY + ["data.subset_train=64"])
    rcfg = load_config(RET_CFG, TINY + ["data.subset_train=64"])
    for task, cfg, fn in ((VQATask(), vcfg, lambda t, m, b: t.train_step_loss(m, b, vcfg)),
                          (RetrievalTask(), rcfg, None)):
        torch.manual_seed(0)
        m = task.build_model(cfg)
        b = _batch(task, cfg, "train", 16)
        opt = torch.optim.AdamW(param_groups(m, cfg, meter_lr_mults(cfg)), lr=1e-3)
        losses = []
        for _ in range(8):
            if fn is not None:
                loss = fn(task, m, b)
                parts = [loss]
            else:
                parts = list(itc_itm_loss(m, b))  # ITC and ITM must each go down
                loss = sum(parts)
            losses.append([float(p.detach()) for p in parts])
            opt.zero_grad()
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = 1e-3 * g["lr_mult"]
            opt.step()
        for j in range(len(losses[0])):
            assert losses[-1][j] < losses[0][j], (type(task).__name__, j, losses)


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny retrieval model trained through the engine (run dir, final metrics)."""
    from frozenlm.engine import train
    run = tmp_path_factory.mktemp("vl") / "ret"
    return run, train(load_config(RET_CFG, TINY + ["data.subset_train=64", "data.subset_val=24", "batch_size=16",
                                                   "eval_batch_size=10", "retrieval.k_candidates=5",
                                                   f"run_dir={run}"]))


def test_vqa_and_retrieval_train_and_evaluate_through_the_engine(tmp_path: Path, retrieval_run) -> None:
    from frozenlm.engine import evaluate, train
    v = train(load_config(VQA_CFG, TINY + ["data.subset_train=64", "data.subset_val=32", "batch_size=16",
                                           f"run_dir={tmp_path / 'vqa'}"]))
    assert set(v) >= {"overall", "loss"} and 0.0 <= v["overall"] <= 100.0
    ret, r = retrieval_run
    assert [k for k in r if k != "train_loss"][:4] == ["rsum", "IR@1", "IR@5", "IR@10"]
    assert all(0 <= r[k] <= 100 for k in ("IR@1", "TR@10")) and r["IR@1"] <= r["IR@5"] <= r["IR@10"]
    assert_best_checkpoint(tmp_path / "vqa", "overall", "max")
    assert_best_checkpoint(ret, "rsum", "max")
    again = evaluate(ret)  # a fresh task object: the whole ranking is rebuilt
    assert again["IR@5"] == pytest.approx(r["IR@5"]) and again["TR@1"] == pytest.approx(r["TR@1"])
    assert json.loads((tmp_path / "vqa" / "metrics.json").read_text())["final"]["overall"] == pytest.approx(v["overall"])
    from frozenlm.cli import main_analyze
    res = main_analyze([str(tmp_path / "vqa"), f"out={tmp_path / 'an'}", "n=8", "figures=1", "batch=8"])
    assert set(res["vqa"]) == {"fused/mag", "fused/freq"}  # baseline: no sandwich stages
    assert all(0.0 <= x <= 1.0 for x in res["vqa"].values()) and (tmp_path / "an" / "vqa" / "overlay_000.png").is_file()


def test_retrieval_evaluates_on_two_gloo_processes_as_on_one(tmp_path: Path, retrieval_run) -> None:
    """Each rank encodes half the images and half the ITM re-scoring chunks; the ranking is the same."""
    import os
    import subprocess
    import sys
    from frozenlm.engine import evaluate
    run, trained = retrieval_run
    over = ["retrieval.fusion_batch=16"]  # 24 images x 5 candidates = 8 chunks per direction, spread over ranks
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(tests / "_eval_ddp_script.py"), str(run), str(tmp_path), *over]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    one = evaluate(run, over)
    assert r0 == r1 == one
    assert one == pytest.approx({k: trained[k] for k in one})  # one ITM chunk at the end of training: same ranking


def test_vl_analysis_stages_and_shape_masks(meter: torch.nn.Module) -> None:
    from frozenlm.analysis.vl import capture_vl_stages, shape_masks
    img = torch.full((1, 3, 64, 64), 0.9)
    img[:, 0, 16:32, 8:40] = 0.1  # a dark-red rectangle on a light background
    masks = shape_masks((img - 0.5) / 0.5)
    assert int(masks.sum()) == 16 * 32 and int(masks[0, 20, 10]) == 1 and int(masks[0, 0, 0]) == 0
    enc = TextCollate("minilm-l6", 16).tokenize(["what shape is it?"])
    stages, out = capture_vl_stages(meter.eval(), (img - 0.5) / 0.5, enc["input_ids"], enc["attention_mask"])
    assert list(stages) == ["fused", "F_L1", "attn_half", "block", "F_L2"]
    assert stages["F_L1"].shape == (1, 17, 576) and stages["fused"].shape == (1, 17, 64)
    torch.testing.assert_close(stages["F_L2"], out["image_tokens"])  # what the pooler reads


def test_clip_image_tower_loads_from_openai_clip_layout(tmp_path: Path) -> None:
    """An OpenAI-CLIP / open_clip checkpoint (keys visual.*, text tower alongside) loads into a timm CLIP ViT."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer
    from frozenlm.models.weights import load_backbone_weights

    def tower() -> VisionTransformer:  # CLIP-style: pre-norm, no patch bias, no classifier
        return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, pre_norm=True,
                                 num_classes=0)
    torch.manual_seed(0)
    src = tower()
    for p_ in src.parameters():
        torch.nn.init.normal_(p_, std=0.5)
    s = src.state_dict()
    sd = {"visual.class_embedding": s["cls_token"][0, 0], "visual.positional_embedding": s["pos_embed"][0],
          "visual.conv1.weight": s["patch_embed.proj.weight"], "visual.proj": torch.randn(32, 16),
          "token_embedding.weight": torch.randn(10, 32), "ln_final.weight": torch.ones(32)}  # text tower: ignored
    for a, b in (("ln_pre", "norm_pre"), ("ln_post", "norm")):
        sd.update({f"visual.{a}.{w}": s[f"{b}.{w}"] for w in ("weight", "bias")})
    for i in range(2):
        pairs = (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.in_proj_", "attn.qkv."), ("attn.out_proj.", "attn.proj."),
                 ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."))
        for a, b in pairs:
            for w in ("weight", "bias"):
                sep = "" if a.endswith(("_", ".")) else "."
                sd[f"visual.transformer.resblocks.{i}.{a}{sep}{w}"] = s[f"blocks.{i}.{b}{'' if b.endswith('.') else '.'}{w}"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "clip.safetensors"))
    dst = tower()
    load_backbone_weights(dst, tmp_path / "clip.safetensors")
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0, msg=k)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst.forward_features(x), src.eval().forward_features(x))
