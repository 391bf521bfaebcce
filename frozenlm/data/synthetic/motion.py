"""Offline driving scenes written in the Argoverse 2 motion-forecasting format.

Each scene is a small lane graph (a 3/4-way intersection with straight, left and right turn
connectors; a 4-lane straight road; or a curved 2-lane road) placed at a random pose in a
"city" frame, plus vehicles that follow lanes with a kinematic (arc-length) model, piecewise
constant accelerations and position noise. The focal agent's future is multimodal by
construction: its manoeuvre (which connector at an intersection, lane keep/change on a straight
road) is drawn from a separate random stream that the observed history does not depend on, so
the same seed with a different manoeuvre gives an identical history and a different future.

Scenes are written with av2's own serializer (`scenario_<id>.parquet`) and map layout
(`log_map_archive_<id>.json`), so training reads them through the real Argoverse 2 loader.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..cache import atomic_dir

GENERATOR_VERSION = 2  # bump when scenes change: caches and scene folders are keyed on it
OBS_STEPS, TOTAL_STEPS, DT = 50, 110, 0.1  # Argoverse 2: 5 s observed + 6 s future at 10 Hz
LANE_WIDTH = 3.6
LAYOUTS = ("intersection", "straight", "curve")


@dataclass
class Lane:
    """One lane segment: centerline (N, 2) in the scene frame and its graph links."""

    id: int
    center: np.ndarray
    is_intersection: bool = False
    successors: list[int] = field(default_factory=list)
    predecessors: list[int] = field(default_factory=list)
    left: Optional[int] = None
    right: Optional[int] = None


class Path2D:
    """A dense polyline parameterised by arc length; linear extrapolation past both ends."""

    def __init__(self, pts: np.ndarray) -> None:
        keep = np.r_[True, np.linalg.norm(np.diff(pts, axis=0), axis=1) > 1e-6]
        self.pts = pts[keep]
        self.s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(self.pts, axis=0), axis=1))]
        self.length = float(self.s[-1])

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (N, 2) and headings (N,) at arc lengths s."""
        s = np.asarray(s, dtype=float)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        seg = self.pts[i + 1] - self.pts[i]
        seg_len = self.s[i + 1] - self.s[i]
        u = seg / seg_len[:, None]
        pos = self.pts[i] + u * (s - self.s[i])[:, None]  # also extrapolates beyond the ends
        return pos, np.arctan2(u[:, 1], u[:, 0])


def _line(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a + (b - a) * t


def _bezier(a: np.ndarray, c: np.ndarray, b: np.ndarray, n: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t ** 2 * b


def _right(d: np.ndarray) -> np.ndarray:
    return np.array([d[1], -d[0]])


class _Graph:
    """Lane segments plus routes (lists of lane ids an agent can drive end to end)."""

    def __init__(self) -> None:
        self.lanes: dict[int, Lane] = {}
        self.routes: list[dict[str, Any]] = []

    def chain(self, pts: np.ndarray, seg_len: float, inter: bool = False) -> list[int]:
        """Split a polyline into linked segments of about seg_len metres; returns their ids."""
        path = Path2D(pts)
        n = max(1, int(round(path.length / seg_len)))
        ids = []
        for k in range(n):
            s = np.linspace(path.length * k / n, path.length * (k + 1) / n, 6)
            lid = len(self.lanes) + 1
            self.lanes[lid] = Lane(lid, path.at(s)[0], inter)
            if ids:
                self.link(ids[-1], lid)
            ids.append(lid)
        return ids

    def link(self, a: int, b: int) -> None:
        self.lanes[a].successors.append(b)
        self.lanes[b].predecessors.append(a)

    def route_path(self, ids: list[int]) -> Path2D:
        return Path2D(np.concatenate([self.lanes[i].center for i in ids]))


def _intersection(rng: np.random.Generator) -> _Graph:
    g = _Graph()
    half, arm = 10.0, 100.0
    arms = [0, 1, 2, 3]
    if rng.random() < 0.35:
        arms.remove(int(rng.integers(4)))  # a T-junction
    inc, out, dirs = {}, {}, {}
    for a in arms:
        u = np.array([np.cos(a * np.pi / 2), np.sin(a * np.pi / 2)])  # outward
        dirs[a] = u
        off_in, off_out = _right(-u) * LANE_WIDTH / 2, _right(u) * LANE_WIDTH / 2
        inc[a] = g.chain(_line(u * (half + arm) + off_in, u * half + off_in, 30), 25.0)
        out[a] = g.chain(_line(u * half + off_out, u * (half + arm) + off_out, 30), 25.0)
    for a in arms:
        for b in arms:
            if a == b:
                continue
            d_in, u_b = -dirs[a], dirs[b]
            p0, p1 = g.lanes[inc[a][-1]].center[-1], g.lanes[out[b][0]].center[0]
            cross = d_in[0] * u_b[1] - d_in[1] * u_b[0]
            if abs(cross) < 1e-6:
                maneuver, pts = "straight", _line(p0, p1, 12)
            else:
                # control point: where the incoming and outgoing lane lines meet
                t = ((p1 - p0)[0] * u_b[1] - (p1 - p0)[1] * u_b[0]) / cross
                maneuver = "left" if cross > 0 else "right"
                pts = _bezier(p0, p0 + d_in * t, p1)
            conn = g.chain(pts, 100.0, inter=True)
            g.link(inc[a][-1], conn[0])
            g.link(conn[-1], out[b][0])
            g.routes.append({"ids": inc[a] + conn + out[b], "entry": a, "maneuver": maneuver})
    for r in g.routes:  # exact entry point of the connector along the route
        r["s_entry"] = g.route_path(inc[r["entry"]]).length
    return g


def _straight(rng: np.random.Generator) -> _Graph:
    g = _Graph()
    L = 300.0
    lanes = {}
    for direction, sign in (("east", 1.0), ("west", -1.0)):
        for k in range(2):  # k=0 inner lane, k=1 outer lane (right-hand traffic)
            y = -sign * LANE_WIDTH * (k + 0.5)
            a, b = np.array([-sign * L / 2, y]), np.array([sign * L / 2, y])
            lanes[direction, k] = g.chain(_line(a, b, 60), 30.0)
    for direction in ("east", "west"):
        inner, outer = lanes[direction, 0], lanes[direction, 1]
        for i, j in zip(inner, outer):
            g.lanes[i].right, g.lanes[j].left = j, i
        for k in (0, 1):
            g.routes.append({"ids": lanes[direction, k], "lane": k, "direction": direction,
                             "maneuver": "keep", "other": lanes[direction, 1 - k]})
    return g


def _curve(rng: np.random.Generator) -> _Graph:
    g = _Graph()
    radius, angle = rng.uniform(25.0, 80.0), rng.uniform(0.4, 1.6) * rng.choice([-1, 1])
    lead = 120.0
    # center line of the road: straight lead-in along +x, an arc, a straight lead-out
    s1 = _line(np.array([-lead, 0.0]), np.array([0.0, 0.0]), 40)
    c = np.array([0.0, np.sign(angle) * radius])
    th = np.linspace(0.0, abs(angle), 30)
    arc = c + radius * np.stack([np.sin(th), -np.sign(angle) * np.cos(th)], 1)
    end_dir = np.array([np.cos(angle), np.sin(angle)])
    s3 = _line(arc[-1], arc[-1] + end_dir * lead, 40)
    road = Path2D(np.concatenate([s1, arc[1:], s3[1:]]))
    s = np.linspace(0.0, road.length, 300)
    pos, head = road.at(s)
    normal = np.stack([np.sin(head), -np.cos(head)], 1)  # right of travel
    fwd = pos + normal * LANE_WIDTH / 2
    bwd = (pos - normal * LANE_WIDTH / 2)[::-1]
    for pts in (fwd, bwd):
        g.routes.append({"ids": g.chain(pts, 25.0), "maneuver": "keep"})
    return g


def _speed_profile(rng: np.random.Generator, v0: float, vmax: float = 16.0) -> np.ndarray:
    """Speeds (TOTAL_STEPS,) with piecewise constant accelerations in [-1.5, 1.5] m/s^2."""
    v = np.empty(TOTAL_STEPS)
    cur, acc, next_change = v0, 0.0, 0
    for t in range(TOTAL_STEPS):
        if t >= next_change:
            acc, next_change = rng.uniform(-1.5, 1.5), t + int(rng.integers(10, 30))
        cur = float(np.clip(cur + acc * DT, 1.0, vmax))
        v[t] = cur
    return v


def _drive(path: Path2D, v: np.ndarray, s_t0: float, cap: Optional[tuple[float, float]] = None,
           lateral: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Integrate arc length so that s(OBS_STEPS-1) = s_t0; `cap` = (s_from, v_cap) applies only after t0.

    The speed cap (slowing for a turn) and the lateral offset (a lane change) act after the last
    observed step only, so the observed history never reveals the manoeuvre.
    """
    t0 = OBS_STEPS - 1
    s = np.empty(TOTAL_STEPS)
    s[t0] = s_t0
    for t in range(t0 - 1, -1, -1):
        s[t] = s[t + 1] - v[t + 1] * DT
    cur = v[t0]
    for t in range(t0 + 1, TOTAL_STEPS):
        target = v[t]
        if cap is not None and s[t - 1] > cap[0] - 15.0:
            target = min(target, cap[1])
        cur = float(np.clip(target, cur - 3.0 * DT, cur + 1.5 * DT))  # bounded deceleration/acceleration
        s[t] = s[t - 1] + cur * DT
    pos, head = path.at(s)
    if lateral is not None:
        pos = pos + np.stack([np.sin(head), -np.cos(head)], 1) * lateral[:, None]
    return pos, head


def _lane_change(rng: np.random.Generator, direction: float) -> np.ndarray:
    """Lateral offset (right positive) ramping to one lane width over ~3 s, starting after t0."""
    lat = np.zeros(TOTAL_STEPS)
    start = OBS_STEPS + int(rng.integers(0, 10))
    dur = int(rng.integers(25, 40))
    x = np.clip((np.arange(TOTAL_STEPS) - start) / dur, 0.0, 1.0)
    lat[:] = direction * LANE_WIDTH * (3 * x ** 2 - 2 * x ** 3)  # smooth step
    return lat


def generate_scene(seed: int, layout: Optional[str] = None, maneuver: Optional[str] = None) -> dict[str, Any]:
    """One scene as plain arrays (scene frame already moved to a random city pose).

    Returns {"lanes": {id: Lane}, "tracks": [{id, type, category, pos (T,2), heading (T,), valid (T,)}],
    "focal": track id, "layout", "maneuver"}. `layout`/`maneuver` force a choice (tests); the
    history depends only on `seed` and `layout`, never on `maneuver`.
    """
    rng = np.random.default_rng([int(seed), 0])
    mrng = np.random.default_rng([int(seed), 1])  # the manoeuvre stream: independent of the history
    layout = layout or str(rng.choice(LAYOUTS, p=[0.5, 0.25, 0.25]))
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    g = {"intersection": _intersection, "straight": _straight, "curve": _curve}[layout](rng)
    tracks = []

    # focal agent
    if layout == "intersection":
        entry = int(rng.choice(sorted({r["entry"] for r in g.routes})))
        options = [r for r in g.routes if r["entry"] == entry]
        names = [r["maneuver"] for r in options]
        chosen = maneuver or str(mrng.choice(names))
        if chosen not in names:
            raise ValueError(f"maneuver {chosen!r} not available here ({names})")
        route = options[names.index(chosen)]
        path = g.route_path(route["ids"])
        v = _speed_profile(rng, rng.uniform(5.0, 12.0), vmax=14.0)
        s_t0 = route["s_entry"] - rng.uniform(2.0, 15.0)
        v_turn = rng.uniform(5.0, 8.0)  # drawn for every manoeuvre so later draws do not depend on it
        cap = (route["s_entry"], v_turn) if chosen != "straight" else None
        pos, head = _drive(path, v, s_t0, cap)
    else:
        route = g.routes[int(rng.integers(len(g.routes)))]
        path = g.route_path(route["ids"])
        v = _speed_profile(rng, rng.uniform(5.0, 13.0))
        s_t0 = path.length * rng.uniform(0.45, 0.55)
        lat = None
        chosen = maneuver or "keep"
        if layout == "straight":
            allowed = ["keep", "right" if route["lane"] == 0 else "left"]
            chosen = maneuver or str(mrng.choice(allowed))
            if chosen not in allowed:
                raise ValueError(f"maneuver {chosen!r} not available here ({allowed})")
            if chosen != "keep":
                lat = _lane_change(mrng, 1.0 if chosen == "right" else -1.0)
        elif chosen != "keep":
            raise ValueError(f"maneuver {chosen!r} not available on a curve (only 'keep')")
        pos, head = _drive(path, v, s_t0, lateral=lat)
    focal_xy = pos[OBS_STEPS - 1]
    tracks.append({"id": "focal", "type": "vehicle", "category": 3, "pos": pos, "heading": head,
                   "valid": np.ones(TOTAL_STEPS, bool)})

    # other agents: random routes, placed near the focal agent at t0
    n_other = int(rng.integers(2, 9))
    for k in range(n_other):
        r = g.routes[int(rng.integers(len(g.routes)))]
        p = g.route_path(r["ids"])
        s_grid = np.linspace(0.0, p.length, 200)
        near = np.nonzero(np.linalg.norm(p.at(s_grid)[0] - focal_xy, axis=1) < 50.0)[0]
        if len(near) == 0:
            continue
        s0 = s_grid[int(rng.choice(near))]
        kind = str(rng.choice(["vehicle", "vehicle", "vehicle", "bus", "cyclist"]))
        vmax = 7.0 if kind == "cyclist" else 14.0
        vel = _speed_profile(rng, rng.uniform(2.0, vmax * 0.8), vmax=vmax)
        opos, ohead = _drive(p, vel, s0)
        valid = np.ones(TOTAL_STEPS, bool)
        if rng.random() < 0.3:  # appears late or disappears early: partial tracks, as in real data
            if rng.random() < 0.5:
                valid[: int(rng.integers(5, 40))] = False
            else:
                valid[int(rng.integers(60, 100)):] = False
        tracks.append({"id": f"agent_{k}", "type": kind, "category": 2 if k < 2 else 1, "pos": opos,
                       "heading": ohead, "valid": valid})

    # noise, then a random pose in the city frame (so normalisation matters)
    theta, shift = rng.uniform(-np.pi, np.pi), rng.uniform(-2000.0, 2000.0, 2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    for tr in tracks:
        tr["pos"] = (tr["pos"] + rng.normal(0.0, 0.03, tr["pos"].shape)) @ rot.T + shift
        tr["heading"] = np.arctan2(np.sin(tr["heading"] + theta), np.cos(tr["heading"] + theta))
    for lane in g.lanes.values():
        lane.center = lane.center @ rot.T + shift
    return {"lanes": g.lanes, "tracks": tracks, "focal": "focal", "layout": layout, "maneuver": chosen}


def _polyline_json(pts: np.ndarray) -> list[dict[str, float]]:
    return [{"x": float(x), "y": float(y), "z": 0.0} for x, y in pts]


def map_json(lanes: dict[int, Lane]) -> dict[str, Any]:
    """The Argoverse 2 vector-map JSON (lane segments with left/right boundaries) for these lanes."""
    segs = {}
    for lane in lanes.values():
        d = np.gradient(lane.center, axis=0)
        n = np.stack([d[:, 1], -d[:, 0]], 1) / np.linalg.norm(d, axis=1, keepdims=True)  # right normal
        segs[str(lane.id)] = {
            "id": lane.id, "is_intersection": bool(lane.is_intersection), "lane_type": "VEHICLE",
            "left_lane_boundary": _polyline_json(lane.center - n * LANE_WIDTH / 2),
            "right_lane_boundary": _polyline_json(lane.center + n * LANE_WIDTH / 2),
            "left_lane_mark_type": "DASHED_WHITE", "right_lane_mark_type": "SOLID_WHITE",
            "left_neighbor_id": lane.left, "right_neighbor_id": lane.right,
            "predecessors": list(lane.predecessors), "successors": list(lane.successors),
        }
    return {"drivable_areas": {}, "lane_segments": segs, "pedestrian_crossings": {}}


def write_scene(scene: dict[str, Any], out_dir: str | Path, scenario_id: str) -> Path:
    """Write one scene as an Argoverse 2 scenario folder (parquet via av2's serializer + map JSON);
    the folder appears complete or not at all (:func:`frozenlm.data.cache.atomic_dir`)."""
    d = Path(out_dir) / scenario_id
    atomic_dir(d, lambda tmp: _write_scene_files(scene, tmp, scenario_id))
    return d


def _write_scene_files(scene: dict[str, Any], d: Path, scenario_id: str) -> None:
    from av2.datasets.motion_forecasting.data_schema import (ArgoverseScenario, ObjectState, ObjectType, Track,
                                                             TrackCategory)
    from av2.datasets.motion_forecasting.scenario_serialization import serialize_argoverse_scenario_parquet
    tracks = []
    for tr in scene["tracks"]:
        vel = np.gradient(tr["pos"], DT, axis=0)
        states = [ObjectState(observed=t < OBS_STEPS, timestep=t, position=(float(tr["pos"][t, 0]), float(tr["pos"][t, 1])),
                              heading=float(tr["heading"][t]), velocity=(float(vel[t, 0]), float(vel[t, 1])))
                  for t in range(TOTAL_STEPS) if tr["valid"][t]]
        tracks.append(Track(track_id=tr["id"], object_states=states, object_type=ObjectType(tr["type"]),
                            category=TrackCategory(tr["category"])))
    scenario = ArgoverseScenario(scenario_id=scenario_id, timestamps_ns=np.arange(TOTAL_STEPS, dtype=np.int64) * 100_000_000,
                                 tracks=tracks, focal_track_id=scene["focal"], city_name="synthtown", map_id=None,
                                 slice_id=None)
    serialize_argoverse_scenario_parquet(d / f"scenario_{scenario_id}.parquet", scenario)
    (d / f"log_map_archive_{scenario_id}.json").write_text(json.dumps(map_json(scene["lanes"])))
    (d / "meta.json").write_text(json.dumps({"layout": scene["layout"], "maneuver": scene["maneuver"]}))


def generate_split(out_dir: str | Path, n: int, seed: int, progress: bool = True) -> list[Path]:
    """Write scenes seed*1_000_000 + 0..n-1 under out_dir (skipping ones already written; a folder
    left incomplete by a run from before scene writes were atomic is written again)."""
    from tqdm import tqdm
    out = Path(out_dir)
    dirs = []
    for i in tqdm(range(n), desc=f"generating {out.name}", disable=not progress, leave=False):
        sid = f"synth_{seed:03d}_{i:06d}"
        d = out / sid
        if not (d / "meta.json").exists():  # meta.json is written last
            shutil.rmtree(d, ignore_errors=True)
            write_scene(generate_scene(seed * 1_000_000 + i), out, sid)
        dirs.append(d)
    return dirs
