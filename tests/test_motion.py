"""Motion forecasting: vectorization, AV2/AV1 readers, generated scenes, models, metrics, the task."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.motion import (MotionDataError, Scene, build_motion_dataset, collate_motion, read_av1_csv,
                                  read_av2_scenario, to_scene, vectorize)
from frozenlm.data.synthetic.motion import OBS_STEPS, generate_scene, write_scene
from frozenlm.engine import evaluate, train
from frozenlm.layer import LMLayer
from frozenlm.models import create_model
from frozenlm.tasks.motion_metrics import forecast_finalize, forecast_sums, wta_loss
from _best import assert_best_checkpoint

CONFIG = "configs/motion/synth_vectornet_smollm2.yaml"


def hand_scene() -> Scene:
    """Focal drives north at 1 m/step from (100, 200); t0 = 19; 5 future steps."""
    T = 25
    pos = np.full((5, T, 2), np.nan)
    valid = np.zeros((5, T), bool)
    t = np.arange(T)
    pos[0] = np.stack([np.full(T, 100.0), 200.0 + t], 1)  # focal
    pos[1] = np.stack([np.full(T, 105.0), 200.0 + t], 1)  # 5 m east of the focal agent = its right
    pos[2] = np.stack([np.full(T, 90.0), 190.0 + 0.5 * t], 1)  # misses step 10
    pos[3] = np.stack([np.full(T, 400.0), 200.0 + t], 1)  # 300 m away
    pos[4, 19] = (101.0, 219.0)  # a single observation: no vector
    valid[:4] = True
    valid[2, 10] = False
    valid[4, 19] = True
    pos[2, 10] = np.nan
    lanes = [np.array([[98.0, 150.0], [98.0, 200.0], [98.0, 250.0], [98.0, 300.0]]),
             np.array([[800.0, 0.0], [900.0, 0.0]])]
    return Scene("hand", pos, valid, 0, 19, ["vehicle", "vehicle", "pedestrian", "vehicle", "vehicle"],
                 lanes=lanes, lane_is_intersection=[True, False])


def test_vectorize_hand_scene_counts_frame_and_rotation() -> None:
    out = vectorize(hand_scene(), history=20, future=5, radius=50.0)
    vec, mask = out["vectors"], out["vector_mask"]
    # focal, the east agent, the agent with a gap, one lane (far agent, 1-step agent, far lane dropped)
    assert vec.shape == (4, 19, 9)
    assert mask.sum(1).tolist() == [19, 19, 17, 3]
    assert int(out["num_agents"]) == 3
    torch.testing.assert_close(out["origin"], torch.tensor([100.0, 219.0], dtype=torch.float64))
    assert math.isclose(float(out["angle"]), math.pi / 2, abs_tol=1e-9)
    # heading north -> +x: the last focal vector ends at the origin and points along +x
    torch.testing.assert_close(vec[0, 18, :4], torch.tensor([-1.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(vec[0, 0, :2], torch.tensor([-19.0, 0.0]), atol=1e-5, rtol=0)
    # the agent 5 m east (the focal agent's right) is at y = -5
    torch.testing.assert_close(vec[1, 18, 2:4], torch.tensor([0.0, -5.0]), atol=1e-5, rtol=0)
    # world (90, 190 + 0.5*19) -> d = (-10, -19.5) -> local (dy, -dx) = (-19.5, 10)
    torch.testing.assert_close(vec[2, 16, 2:4], torch.tensor([-19.5, 10.0]), atol=1e-5, rtol=0)
    # the lane x = 98 runs north: local y = +2 (left), x from -69 to +81
    torch.testing.assert_close(vec[3, 0, :4], torch.tensor([-69.0, 2.0, -19.0, 2.0]), atol=1e-5, rtol=0)
    assert vec[3, :3, 5].eq(1).all() and vec[3, :3, 7].eq(1).all() and vec[3, 3:].eq(0).all()
    assert vec[0, :, 6].eq(1).all() and vec[1:, :, 6].eq(0).all()
    torch.testing.assert_close(vec[0, :, 4], torch.arange(1, 20) / 20.0)
    assert vec[2, :, 8].eq(0).all() and vec[1, :, 8].eq(1).all()  # pedestrian vs vehicle
    torch.testing.assert_close(out["target"], torch.tensor([[float(k), 0.0] for k in range(1, 6)]))


def test_vectorize_caps_and_heading_override() -> None:
    s = hand_scene()
    s.heading = 0.0  # a recorded heading wins over the displacement: no rotation
    out = vectorize(s, history=20, future=5, max_agents=1, max_lanes=0)
    assert out["vectors"].shape[0] == 1
    torch.testing.assert_close(out["target"][0], torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("break_it,match", [
    (lambda s: s.valid.__setitem__((0, 3), False), "too-short history"),
    (lambda s: s.valid.__setitem__((0, 22), False), "future"),
    (lambda s: s.positions.__setitem__((0, 5, 0), np.nan), "NaN"),
])
def test_malformed_focal_track_errors(break_it, match) -> None:
    s = hand_scene()
    break_it(s)
    with pytest.raises(MotionDataError, match=match):
        vectorize(s, history=20, future=5)
    with pytest.raises(MotionDataError, match="needs 25 observed"):
        vectorize(hand_scene(), history=25, future=5)


def _write_av2(folder: Path, focal_id: str = "focal", lane_x: float = 98.0) -> Path:
    """A hand-made AV2 scenario (the hand scene's first two tracks) via av2's serializer, plus a map."""
    from av2.datasets.motion_forecasting.data_schema import (ArgoverseScenario, ObjectState, ObjectType, Track,
                                                             TrackCategory)
    from av2.datasets.motion_forecasting.scenario_serialization import serialize_argoverse_scenario_parquet
    s = hand_scene()
    tracks = []
    for a, (tid, cat) in enumerate([("focal", 3), ("other", 2)]):
        states = [ObjectState(observed=t <= 19, timestep=t, position=tuple(s.positions[a, t]), heading=math.pi / 2,
                              velocity=(0.0, 10.0)) for t in range(25)]
        tracks.append(Track(tid, states, ObjectType.VEHICLE, TrackCategory(cat)))
    sc = ArgoverseScenario("hand", np.arange(25) * 100_000_000, tracks, focal_id, "town", None, None)
    folder.mkdir(parents=True, exist_ok=True)
    serialize_argoverse_scenario_parquet(folder / "scenario_hand.parquet", sc)
    ys = np.linspace(150.0, 300.0, 4)
    seg = {"id": 7, "is_intersection": False, "lane_type": "VEHICLE",
           "left_lane_boundary": [{"x": lane_x - 1.8, "y": float(y), "z": 0.0} for y in ys],
           "right_lane_boundary": [{"x": lane_x + 1.8, "y": float(y), "z": 0.0} for y in ys],
           "left_lane_mark_type": "NONE", "right_lane_mark_type": "NONE", "left_neighbor_id": None,
           "right_neighbor_id": None, "predecessors": [], "successors": []}
    (folder / "log_map_archive_hand.json").write_text(json.dumps(
        {"drivable_areas": {}, "lane_segments": {"7": seg}, "pedestrian_crossings": {}}))
    return folder


def test_av2_round_trip_gives_the_same_tensors(tmp_path: Path) -> None:
    scene = read_av2_scenario(_write_av2(tmp_path / "hand"))
    assert scene.t0 == 19 and scene.positions.shape == (2, 25, 2)
    got = vectorize(scene, history=20, future=5)
    ref = hand_scene()
    ref.positions, ref.valid, ref.types = ref.positions[:2], ref.valid[:2], ref.types[:2]
    ref.heading = math.pi / 2
    ref.lanes = [np.stack([np.full(10, 98.0), np.linspace(150.0, 300.0, 10)], 1)]  # av2: 10 midpoints
    ref.lane_is_intersection = [False]
    want = vectorize(ref, history=20, future=5)
    for k in ("vectors", "vector_mask", "target", "origin", "angle"):
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=0)


def test_av2_missing_focal_track(tmp_path: Path) -> None:
    with pytest.raises(MotionDataError, match="focal track 'ghost' is not among"):
        read_av2_scenario(_write_av2(tmp_path / "bad", focal_id="ghost"))


def test_av1_csv_reader(tmp_path: Path) -> None:
    import pandas as pd
    s = hand_scene()
    rows = []
    for a, (tid, typ) in enumerate([("f", "AGENT"), ("o", "OTHERS"), ("g", "AV")]):
        for t in range(25):
            if s.valid[a, t]:
                rows.append({"TIMESTAMP": 315970000.0 + 0.1 * t, "TRACK_ID": tid, "OBJECT_TYPE": typ,
                             "X": s.positions[a, t, 0], "Y": s.positions[a, t, 1], "CITY_NAME": "PIT"})
    pd.DataFrame(rows).to_csv(tmp_path / "1.csv", index=False)
    scene = read_av1_csv(tmp_path / "1.csv", observed=20, lanes={"PIT": [s.lanes[0]]})
    out = vectorize(scene, history=20, future=5)
    assert out["vector_mask"].sum(1).tolist() == [19, 19, 17, 3]
    torch.testing.assert_close(out["target"], torch.tensor([[float(k), 0.0] for k in range(1, 6)]))
    pd.DataFrame(rows).drop(columns=["OBJECT_TYPE"]).to_csv(tmp_path / "2.csv", index=False)
    with pytest.raises(MotionDataError, match="missing columns"):
        read_av1_csv(tmp_path / "2.csv")
    pd.DataFrame([r for r in rows if r["TRACK_ID"] != "f"]).to_csv(tmp_path / "3.csv", index=False)
    with pytest.raises(MotionDataError, match="exactly one track with OBJECT_TYPE AGENT"):
        read_av1_csv(tmp_path / "3.csv")


def test_generated_scenes_deterministic_and_multimodal(tmp_path: Path) -> None:
    a, b = generate_scene(11), generate_scene(11)
    for ta, tb in zip(a["tracks"], b["tracks"]):
        np.testing.assert_array_equal(ta["pos"], tb["pos"])
    assert generate_scene(12)["tracks"][0]["pos"][0].tolist() != a["tracks"][0]["pos"][0].tolist()
    # Same seed, different manoeuvre: identical history, futures (6 s) that end far apart
    apart = 0
    for seed in range(10):
        ends, hist0 = [], None
        for m in ("straight", "left", "right"):
            try:
                sc = generate_scene(seed, layout="intersection", maneuver=m)
            except ValueError:
                continue  # a T-junction lacks one manoeuvre
            hist = sc["tracks"][0]["pos"][:OBS_STEPS]
            hist0 = hist if hist0 is None else hist0
            np.testing.assert_array_equal(hist, hist0)
            ends.append(vectorize(to_scene(sc), future=60)["target"][-1])
        assert len(ends) >= 2
        apart += min(float((p - q).norm()) for i, p in enumerate(ends) for q in ends[i + 1:]) > 5.0
    assert apart >= 8
    # sampled manoeuvres at intersections: at least two distinct modes, with lateral ends on both sides
    picks = [generate_scene(s, layout="intersection") for s in range(30)]
    assert len({p["maneuver"] for p in picks}) >= 2
    lat: dict[str, list[float]] = {}
    for p in picks:
        lat.setdefault(p["maneuver"], []).append(float(vectorize(to_scene(p))["target"][-1, 1]))
    assert np.mean(lat["left"]) > 2.0 and np.mean(lat["right"]) < -2.0 and abs(np.mean(lat["straight"])) < 1.0
    # written through av2's serializer and read back: identical arrays for the focal track
    d = write_scene(a, tmp_path, "s11")
    back = read_av2_scenario(d)
    np.testing.assert_allclose(back.positions[back.focal], a["tracks"][0]["pos"], atol=1e-9)


def test_metrics_hand_computed_and_av2_parity() -> None:
    from av2.datasets.motion_forecasting.eval import metrics as M
    gt = torch.zeros(1, 4, 2)
    gt[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    modes = torch.zeros(1, 3, 4, 2)
    modes[0, 0] = gt[0] + torch.tensor([0.0, 3.0])  # most probable, 3 m off everywhere
    modes[0, 1] = gt[0]
    modes[0, 1, -1, 1] = 1.0  # exact except the endpoint (1 m)
    modes[0, 2] = gt[0] * 0.5  # ends 2 m short
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    m = forecast_finalize(forecast_sums(modes, logits, gt))
    assert m["minADE_1"] == pytest.approx(3.0) and m["minFDE_1"] == pytest.approx(3.0) and m["MR_1"] == 100.0
    assert m["minFDE_6"] == pytest.approx(1.0) and m["minADE_6"] == pytest.approx(0.25) and m["MR_6"] == 0.0
    assert m["brier_minFDE_6"] == pytest.approx(1.0 + 0.7 ** 2)
    f, g, p = modes[0].double().numpy(), gt[0].double().numpy(), np.array([0.5, 0.3, 0.2])
    assert m["minFDE_6"] == pytest.approx(M.compute_fde(f, g).min())
    assert m["minADE_6"] == pytest.approx(M.compute_ade(f, g)[M.compute_fde(f, g).argmin()])
    assert m["brier_minFDE_6"] == pytest.approx(M.compute_brier_fde(f, g, p)[M.compute_fde(f, g).argmin()])
    # sums are exact across batches: two copies give the same means
    s2 = forecast_sums(modes.repeat(2, 1, 1, 1), logits.repeat(2, 1), gt.repeat(2, 1, 1))
    assert forecast_finalize(s2) == pytest.approx(m)
    # K=6 uses only the 6 most probable of 7 modes: a perfect 7th, least likely mode is ignored
    seven = torch.cat([modes.repeat(1, 2, 1, 1), gt[:, None]], 1)
    lg = torch.cat([torch.zeros(1, 6), torch.full((1, 1), -5.0)], 1)
    assert forecast_finalize(forecast_sums(seven, lg, gt))["minFDE_6"] == pytest.approx(1.0)
    # WTA: regression on the closest mode (mode 1), CE toward it
    loss = wta_loss(modes, logits, gt, cls_weight=1.0)
    reg = torch.nn.functional.smooth_l1_loss(modes[0, 1], gt[0])
    assert float(loss) == pytest.approx(float(reg) - math.log(0.3), rel=1e-5)
    # relaxed WTA: winner weight 1 - r, plus r x the mean over all modes
    per = [float(torch.nn.functional.smooth_l1_loss(modes[0, k], gt[0])) for k in range(3)]
    relaxed = wta_loss(modes, logits, gt, cls_weight=0.0, relax=0.3)
    assert float(relaxed) == pytest.approx(0.7 * per[1] + 0.3 * sum(per) / 3, rel=1e-5)


@pytest.fixture(scope="module")
def smol_blocks():
    """The SmolLM2 last block, loaded once and shared by the models below."""
    return LMLayer(128, "smollm2-135m", variant="frozen").blocks


def _batch_pair(seed: int = 3):
    small = vectorize(to_scene(generate_scene(seed, layout="curve")), max_lanes=6, max_agents=3)
    big = vectorize(to_scene(generate_scene(seed + 100, layout="intersection")), max_lanes=20, max_agents=8)
    assert big["vectors"].shape[0] > small["vectors"].shape[0]
    return small, big


@pytest.mark.parametrize("name", ["vectornet", "mmtransformer"])
def test_padding_never_changes_the_focal_prediction(name: str, smol_blocks) -> None:
    torch.manual_seed(0)
    lm = LMLayer(128, "smollm2-135m", variant="frozen", blocks=smol_blocks, init="default")
    model = create_model(name, lm=lm, future=30).eval()
    small, big = _batch_pair()
    with torch.no_grad():
        alone = model(collate_motion([small]))
        batch = collate_motion([small, big])
        n, v = small["vectors"].shape[:2]
        assert batch["poly_pad"][0].sum() > 0 and batch["vectors"].shape[2] >= v
        # garbage in every padded slot (padded polylines and padded vectors of real polylines)
        junk = torch.randn_like(batch["vectors"]) * 1e3
        batch["vectors"][0] = torch.where(batch["vector_mask"][0, ..., None], batch["vectors"][0], junk[0])
        both = model(batch)
    torch.testing.assert_close(both["traj"][0], alone["traj"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(both["logits"][0], alone["logits"][0], atol=1e-4, rtol=1e-4)
    # and the real polylines do matter (the test can fail)
    batch["vectors"][0, 1, 0, :4] += 5.0
    with torch.no_grad():
        assert not torch.allclose(model(batch)["traj"][0], alone["traj"][0], atol=1e-4)


@pytest.mark.parametrize("name", ["vectornet", "mmtransformer"])
def test_forward_shapes_gradients_and_frozen_block(name: str, smol_blocks) -> None:
    lm = LMLayer(128, "smollm2-135m", variant="frozen", blocks=smol_blocks, init="default")
    model = create_model(name, lm=lm, future=30, modes=6)
    out = model(collate_motion(list(_batch_pair())))
    assert out["traj"].shape == (2, 6, 30, 2) and out["logits"].shape == (2, 6)
    (out["traj"].sum() + out["logits"].sum()).backward()
    assert model.lm_layer.proj_in.weight.grad is not None and model.encoder.layers[0].mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.lm_layer.blocks.parameters())
    with pytest.raises(ValueError, match="position"):
        create_model(name, lm=None, position="middle")


@pytest.mark.parametrize("name", ["vectornet", "mmtransformer"])
def test_models_take_the_feature_layout_as_an_argument(name: str) -> None:
    from frozenlm.data.motion import FEATURES
    from frozenlm.models.vectornet import POLYLINE_FEATURES
    assert POLYLINE_FEATURES == FEATURES  # the default fits frozenlm.data.motion's vectors
    batch = collate_motion(list(_batch_pair()))
    batch["vectors"] = torch.cat([batch["vectors"], torch.ones_like(batch["vectors"][..., :2])], -1)
    wider = create_model(name, lm=None, future=30, in_dim=FEATURES + 2)
    assert wider.encoder.layers[0].mlp[0].in_features == FEATURES + 2
    assert wider(batch)["traj"].shape == (2, 6, 30, 2)
    with pytest.raises(RuntimeError):
        create_model(name, lm=None, future=30)(batch)  # the default width refuses 11-wide vectors


def test_training_steps_lower_the_loss(smol_blocks) -> None:
    torch.manual_seed(0)
    lm = LMLayer(128, "smollm2-135m", variant="frozen", blocks=smol_blocks, init="default")
    model = create_model("vectornet", lm=lm, future=30)
    batch = collate_motion([vectorize(to_scene(generate_scene(s)), max_lanes=10, max_agents=4) for s in range(8)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = wta_loss(out["traj"], out["logits"], batch["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_task_trains_evaluates_and_plots(tmp_path: Path) -> None:
    run = tmp_path / "run"
    over = [f"data.root={tmp_path / 'synth'}", "data.num_train=16", "data.num_val=4", "data.max_lanes=8",
            "batch_size=8", "epochs=1", f"run_dir={run}", "progress=false", "model.lm.variant=mlp"]
    cfg = load_config(CONFIG, over)
    metrics = train(cfg)
    assert {"minADE_6", "minFDE_6", "MR_6", "brier_minFDE_6", "minADE_1", "MR_1", "loss"} <= set(metrics)
    assert metrics["minFDE_6"] <= metrics["minFDE_1"] + 1e-9 and metrics["minADE_6"] > 0
    assert_best_checkpoint(run, "minFDE_6", "min")
    again = evaluate(run)
    assert again["minFDE_6"] == pytest.approx(metrics["minFDE_6"], rel=1e-6)
    # the split was cached as one safetensors file and reloads identically
    ds1 = build_motion_dataset(cfg.data, "val")
    assert len(list((tmp_path / "synth").glob("val_*.safetensors"))) == 1 and len(ds1) == 4
    from frozenlm.cli import main_plot_motion
    main_plot_motion([str(run), "--out", str(tmp_path / "p.png"), "--indices", "0,1"])
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_skip_invalid_policy(tmp_path: Path) -> None:
    root = tmp_path / "av2"
    _write_av2(root / "val" / "good")
    _write_av2(root / "val" / "bad", focal_id="ghost")
    cfg = load_config(CONFIG, [f"data.root={root}", "data.name=av2", "data.future=5"]).data
    with pytest.raises(MotionDataError, match="skip_invalid"):
        build_motion_dataset(cfg, "val")
    cfg.skip_invalid = True
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        ds = build_motion_dataset(cfg, "val")
    assert len(ds) == 1 and build_motion_dataset(cfg, "train") is None
