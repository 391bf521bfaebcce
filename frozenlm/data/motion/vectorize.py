"""Scene -> VectorNet polylines in the focal agent's frame (the feature layout models read, see FEATURES)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .scene import MotionDataError, Scene

#: Width of a polyline vector (layout in the package docstring); models take it as ``in_dim``.
FEATURES = 9
VEHICLE_TYPES = {"vehicle", "bus", "av", "agent", "others"}


def _check_focal(scene: Scene, history: int, future: int) -> None:
    where = scene.source or scene.scene_id
    f = scene.focal
    lo, hi = scene.t0 - history + 1, scene.t0 + future
    if lo < 0 or hi >= scene.positions.shape[1]:
        raise MotionDataError(f"{where}: needs {history} observed + {future} future steps around step {scene.t0}, "
                              f"but the scene has {scene.positions.shape[1]} steps (lower data.history/data.future)")
    window = scene.valid[f, lo:hi + 1]
    if not window.all():
        missing = (np.nonzero(~window)[0] + lo).tolist()
        raise MotionDataError(f"{where}: focal track is missing steps {missing[:8]} of the {history}-step history + "
                              f"{future}-step future window (too-short history or future)")
    if not np.isfinite(scene.positions[f, lo:hi + 1]).all():
        raise MotionDataError(f"{where}: focal track has NaN/inf coordinates in steps {lo}..{hi}")


def focal_frame(scene: Scene) -> tuple[np.ndarray, float]:
    """Origin (2,) and heading angle of the focal agent at t0.

    The recorded heading is used when the format has one (AV2); otherwise the direction of the
    displacement over the last 5 steps (or fewer, if the agent barely moved), as VectorNet does.
    """
    p = scene.positions[scene.focal]
    origin = p[scene.t0].astype(np.float64)
    if scene.heading is not None and np.isfinite(scene.heading):
        return origin, float(scene.heading)
    for back in (5, 1):
        d = origin - p[max(0, scene.t0 - back)]
        if np.linalg.norm(d) > 0.2:
            return origin, float(np.arctan2(d[1], d[0]))
    return origin, 0.0


def to_frame(xy: np.ndarray, origin: np.ndarray, angle: float) -> np.ndarray:
    """World (..., 2) -> focal frame: translate by -origin, rotate by -angle."""
    c, s = np.cos(angle), np.sin(angle)
    d = xy - origin
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def vectorize(scene: Scene, history: int = 20, future: int = 30, radius: float = 50.0, max_agents: int = 8,
              max_lanes: int = 16) -> dict[str, Tensor]:
    """Scene -> polylines in the focal frame.

    Returns vectors (P, V, F) float32, vector_mask (P, V) bool (True = real vector), target
    (future, 2), origin (2,) float64, angle () float64, num_agents () int. Polylines: the focal
    agent first, then other agents by distance at t0, then lanes by distance; agents need >= 2
    observed steps in the window and must be within `radius` at their last observed step; lanes
    need a centerline point within `radius`. V = max(history - 1, longest lane - 1).
    """
    _check_focal(scene, history, future)
    origin, angle = focal_frame(scene)
    lo, t0 = scene.t0 - history + 1, scene.t0
    pos = to_frame(np.nan_to_num(scene.positions[:, lo:t0 + 1]), origin, angle)  # (A, H, 2)
    val = scene.valid[:, lo:t0 + 1] & np.isfinite(scene.positions[:, lo:t0 + 1]).all(-1)
    agents = []
    for a in range(len(pos)):
        if val[a].sum() < 2:
            continue
        last = pos[a][np.nonzero(val[a])[0][-1]]
        dist = float(np.linalg.norm(last))
        if a != scene.focal and dist > radius:
            continue
        agents.append((a != scene.focal, dist, a))
    agents = [a for *_, a in sorted(agents)][:max_agents]
    polys: list[np.ndarray] = []
    for a in agents:
        steps = np.nonzero(val[a, :-1] & val[a, 1:])[0]  # vectors between consecutive observed steps
        v = np.zeros((len(steps), FEATURES), np.float32)
        v[:, 0:2], v[:, 2:4] = pos[a, steps], pos[a, steps + 1]
        v[:, 4] = (steps + 1) / history
        v[:, 6] = float(a == scene.focal)
        v[:, 8] = float(scene.types[a].lower() in VEHICLE_TYPES)
        polys.append(v)
    lanes = []
    for i, c in enumerate(scene.lanes):
        if len(c) < 2 or not np.isfinite(c).all():
            continue
        local = to_frame(np.asarray(c, np.float64), origin, angle)
        d = float(np.linalg.norm(local, axis=1).min())
        if d <= radius:
            lanes.append((d, i, local))
    for _, i, local in sorted(lanes, key=lambda x: (x[0], x[1]))[:max_lanes]:
        v = np.zeros((len(local) - 1, FEATURES), np.float32)
        v[:, 0:2], v[:, 2:4] = local[:-1], local[1:]
        v[:, 5] = 1.0
        v[:, 7] = float(scene.lane_is_intersection[i]) if scene.lane_is_intersection else 0.0
        polys.append(v)
    n_vec = max(len(p) for p in polys)
    vectors = np.zeros((len(polys), n_vec, FEATURES), np.float32)
    mask = np.zeros((len(polys), n_vec), bool)
    for k, p in enumerate(polys):
        vectors[k, :len(p)], mask[k, :len(p)] = p, True
    target = to_frame(scene.positions[scene.focal, t0 + 1:t0 + future + 1], origin, angle)
    return {"vectors": torch.from_numpy(vectors), "vector_mask": torch.from_numpy(mask),
            "target": torch.from_numpy(target.astype(np.float32)),
            "origin": torch.from_numpy(origin), "angle": torch.tensor(angle, dtype=torch.float64),
            "num_agents": torch.tensor(len(agents))}
