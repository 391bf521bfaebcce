"""Motion forecasting data: Argoverse 2 scenarios, Argoverse 1 CSVs and the offline generated scenes.

Every reader produces a :class:`Scene` (world-frame tracks with validity, the focal agent, lane
centerlines); :func:`vectorize` turns it into VectorNet polylines in the focal agent's frame:
origin = focal position at the last observed step, rotated so that the focal heading is +x.

Polyline vector features (F = 9): x_start, y_start, x_end, y_end, t (agents: end-step index /
history; lanes: 0), is_lane, is_focal, is_intersection, is_vehicle.

Skip policy: a malformed scene (no focal track, too short a history/future for the focal agent,
NaN coordinates) raises :class:`MotionDataError` naming the file and the problem. With
`data.skip_invalid: true` the dataset builder skips such scenes instead and warns once with
how many were skipped and the first reason. A file that cannot be read at all (corrupt parquet,
JSON or CSV) follows `data.on_error` (raise | skip, :mod:`frozenlm.data.errors`). Non-focal agents
with fewer than 2 observed steps in the history window are dropped silently (they carry no motion).

Each vectorised split is cached as one safetensors file through :mod:`frozenlm.data.cache`, keyed
on every scene file (name, size, mtime) and every setting that changes its content.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .cache import cache_key, file_fingerprint, load_or_build
from .errors import DataFileError, FilePolicy, on_error_policy

FEATURES = 9
_CACHE_VERSION = 2  # bump when vectorize() or the cache layout changes
VEHICLE_TYPES = {"vehicle", "bus", "av", "agent", "others"}


class MotionDataError(ValueError):
    """A scene cannot be used for forecasting (the message names the file and the problem)."""


@dataclass
class Scene:
    """World-frame scene: tracks (A, T, 2) with NaN where unobserved, `t0` = last observed step."""

    scene_id: str
    positions: np.ndarray  # (A, T, 2)
    valid: np.ndarray  # (A, T) bool
    focal: int  # row of the focal agent
    t0: int
    types: list[str]
    heading: Optional[float] = None  # focal heading at t0 if the format records one (AV2)
    lanes: list[np.ndarray] = field(default_factory=list)  # centerlines (N, 2), direction of travel
    lane_is_intersection: list[bool] = field(default_factory=list)
    source: str = ""


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


# --- Argoverse 2 -----------------------------------------------------------------------------------

def find_av2_scenarios(root: str | Path) -> list[Path]:
    """Scenario folders under root (each holds scenario_<id>.parquet and log_map_archive_<id>.json)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Argoverse 2 split folder not found: {root}")
    dirs = sorted(p.parent for p in root.glob("*/scenario_*.parquet"))
    if not dirs:
        raise FileNotFoundError(f"no scenario_*.parquet files under {root}/<scenario_id>/ "
                                "(expected the Argoverse 2 motion-forecasting layout)")
    return dirs


def read_av2_scenario(folder: str | Path) -> Scene:
    """Read one AV2 scenario folder with av2's own loaders (scenario parquet + vector map JSON)."""
    from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
    from av2.map.map_api import ArgoverseStaticMap
    folder = Path(folder)
    pq = sorted(folder.glob("scenario_*.parquet"))
    maps = sorted(folder.glob("log_map_archive_*.json"))
    if not pq:
        raise MotionDataError(f"{folder}: no scenario_*.parquet file")
    try:
        sc = load_argoverse_scenario_parquet(pq[0])
    except Exception as e:  # noqa: BLE001 - pyarrow and av2 raise many types on a corrupt file
        raise DataFileError(f"{pq[0]}: cannot read the scenario ({type(e).__name__}: {e})", pq[0]) from None
    n_t = len(sc.timestamps_ns)
    ids = [t.track_id for t in sc.tracks]
    if sc.focal_track_id not in ids:
        raise MotionDataError(f"{pq[0]}: focal track {sc.focal_track_id!r} is not among its {len(ids)} tracks")
    pos = np.full((len(ids), n_t, 2), np.nan)
    valid = np.zeros((len(ids), n_t), bool)
    observed = 0
    heading = None
    focal = ids.index(sc.focal_track_id)
    for a, tr in enumerate(sc.tracks):
        for st in tr.object_states:
            if 0 <= st.timestep < n_t:
                pos[a, st.timestep] = st.position
                valid[a, st.timestep] = True
                if st.observed:
                    observed = max(observed, st.timestep + 1)
    t0 = observed - 1
    if t0 < 1:
        raise MotionDataError(f"{pq[0]}: no observed steps (the 'observed' column is all False)")
    for st in sc.tracks[focal].object_states:
        if st.timestep == t0:
            heading = float(st.heading)
    scene = Scene(str(sc.scenario_id), pos, valid, focal, t0, [t.object_type.value for t in sc.tracks],
                  heading=heading, source=str(pq[0]))
    if maps:
        try:
            static_map = ArgoverseStaticMap.from_json(maps[0])
        except Exception as e:  # noqa: BLE001 - json and av2 raise many types on a corrupt file
            raise DataFileError(f"{maps[0]}: cannot read the map ({type(e).__name__}: {e})", maps[0]) from None
        for lid in sorted(static_map.vector_lane_segments):
            scene.lanes.append(static_map.get_lane_segment_centerline(lid)[:, :2])
            scene.lane_is_intersection.append(bool(static_map.lane_is_in_intersection(lid)))
    return scene


# --- Argoverse 1 -----------------------------------------------------------------------------------

AV1_COLUMNS = ("TIMESTAMP", "TRACK_ID", "OBJECT_TYPE", "X", "Y", "CITY_NAME")


def read_av1_csv(path: str | Path, observed: int = 20,
                 lanes: Optional[dict[str, list[np.ndarray]]] = None) -> Scene:
    """Argoverse 1 forecasting CSV (2 s history + 3 s future at 10 Hz); the focal track is OBJECT_TYPE AGENT.

    `lanes`: optional {city name: [centerline (N, 2), ...]} the user exported from the AV1 map
    (see :func:`load_lane_polylines`); AV1's map API is not on PyPI, so lanes are not read here.
    """
    import pandas as pd
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - pandas raises many types on a corrupt file
        raise DataFileError(f"{path}: cannot read the CSV ({type(e).__name__}: {e})", path) from None
    missing = [c for c in AV1_COLUMNS if c not in df.columns]
    if missing:
        raise MotionDataError(f"{path}: missing columns {missing} (an Argoverse 1 CSV has {list(AV1_COLUMNS)})")
    times = np.sort(df["TIMESTAMP"].unique())
    t_index = {t: i for i, t in enumerate(times)}
    track_ids = list(dict.fromkeys(df["TRACK_ID"].tolist()))
    row = {t: i for i, t in enumerate(track_ids)}
    pos = np.full((len(track_ids), len(times), 2), np.nan)
    valid = np.zeros((len(track_ids), len(times)), bool)
    ti = df["TIMESTAMP"].map(t_index).to_numpy()
    ri = df["TRACK_ID"].map(row).to_numpy()
    pos[ri, ti] = df[["X", "Y"]].to_numpy(float)
    valid[ri, ti] = True
    types = [""] * len(track_ids)
    for tid, typ in zip(df["TRACK_ID"], df["OBJECT_TYPE"]):
        types[row[tid]] = str(typ)
    focal_ids = df.loc[df["OBJECT_TYPE"] == "AGENT", "TRACK_ID"].unique()
    if len(focal_ids) != 1:
        raise MotionDataError(f"{path}: expected exactly one track with OBJECT_TYPE AGENT, found {len(focal_ids)}")
    scene = Scene(path.stem, pos, valid, row[focal_ids[0]], observed - 1, types, source=str(path))
    city = str(df["CITY_NAME"].iloc[0])
    if lanes is not None:
        if city not in lanes:
            raise MotionDataError(f"{path}: city {city!r} not in the lane file (has {sorted(lanes)})")
        scene.lanes = [np.asarray(c, float)[:, :2] for c in lanes[city]]
        scene.lane_is_intersection = [False] * len(scene.lanes)
    return scene


def load_lane_polylines(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Lane centerlines a user exported: JSON {city: [[[x, y], ...], ...]}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"lane polyline file not found: {p} (JSON {{city: [[[x, y], ...], ...]}})")
    data = json.loads(p.read_text())
    return {city: [np.asarray(c, float) for c in lines] for city, lines in data.items()}


# --- datasets --------------------------------------------------------------------------------------

class MotionDataset(Dataset):
    """Vectorized scenes held in memory (a list of dicts of tensors)."""

    def __init__(self, samples: list[dict[str, Tensor]], ids: Sequence[str] = ()) -> None:
        self.samples, self.ids = samples, list(ids)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.samples[i]


def collate_motion(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad polylines and vectors to the batch maximum.

    Adds poly_pad (B, P) bool, True = padded polyline (the LMLayer/attention padding mask).
    """
    b = len(items)
    p = max(it["vectors"].shape[0] for it in items)
    v = max(it["vectors"].shape[1] for it in items)
    vectors = torch.zeros(b, p, v, FEATURES)
    vmask = torch.zeros(b, p, v, dtype=torch.bool)
    pad = torch.ones(b, p, dtype=torch.bool)
    for i, it in enumerate(items):
        n, m = it["vectors"].shape[:2]
        vectors[i, :n, :m] = it["vectors"]
        vmask[i, :n, :m] = it["vector_mask"]
        pad[i, :n] = False
    out = {"vectors": vectors, "vector_mask": vmask, "poly_pad": pad}
    for k in ("target", "origin", "angle", "num_agents"):
        out[k] = torch.stack([it[k] for it in items])
    return out


def _vectorize_all(paths: Iterable[Any], read: Callable[[Any], Scene], kw: dict[str, Any], skip: bool,
                   desc: str, policy: Optional[FilePolicy] = None) -> tuple[list[dict[str, Tensor]], list[str]]:
    from tqdm import tqdm
    policy = policy or FilePolicy()
    samples, ids, skipped = [], [], []
    paths = list(paths)
    for p in tqdm(paths, desc=desc, leave=False, disable=len(paths) < 50):
        try:
            scene = policy.call(lambda: read(p))
            if scene is None:
                continue
            samples.append(vectorize(scene, **kw))
            ids.append(scene.scene_id)
        except MotionDataError as e:
            if not skip:
                raise MotionDataError(f"{e} (set data.skip_invalid=true to skip such scenes)") from None
            skipped.append(str(e))
    policy.summary(len(paths), desc)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(paths)} scenes ({desc}); first: {skipped[0]}")
    if not samples:
        raise MotionDataError(f"no usable scenes ({desc})")
    return samples, ids


def _cache_load(path: Path) -> MotionDataset:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        blob = {k: f.get_tensor(k) for k in f.keys()}
        ids = json.loads(f.metadata()["ids"])
    n = blob["offsets"].numel() - 1
    samples = []
    for i in range(n):
        a, b = int(blob["offsets"][i]), int(blob["offsets"][i + 1])
        samples.append({"vectors": blob["vectors"][a:b, :int(blob["n_vec"][i])],
                        "vector_mask": blob["vector_mask"][a:b, :int(blob["n_vec"][i])],
                        **{k: blob[k][i] for k in ("target", "origin", "angle", "num_agents")}})
    return MotionDataset(samples, ids)


def _cache_save(ds: MotionDataset, path: Path) -> None:
    # One flat tensor file (polylines concatenated, padded to the widest) loads in a fraction of a second.
    width = max(s["vectors"].shape[1] for s in ds.samples)
    counts = [s["vectors"].shape[0] for s in ds.samples]
    total = sum(counts)
    vectors = torch.zeros(total, width, FEATURES)
    mask = torch.zeros(total, width, dtype=torch.bool)
    a = 0
    for s in ds.samples:
        n, m = s["vectors"].shape[:2]
        vectors[a:a + n, :m], mask[a:a + n, :m] = s["vectors"], s["vector_mask"]
        a += n
    from safetensors.torch import save_file
    blob = {"vectors": vectors, "vector_mask": mask,
            "offsets": torch.tensor([0] + [int(c) for c in np.cumsum(counts)]),
            "n_vec": torch.tensor([s["vectors"].shape[1] for s in ds.samples])}
    for k in ("target", "origin", "angle", "num_agents"):
        blob[k] = torch.stack([s[k] for s in ds.samples])
    save_file(blob, str(path), metadata={"ids": json.dumps(ds.ids)})


def _vec_kwargs(cfg: Any) -> dict[str, Any]:
    return {k: cfg.get(k, d) for k, d in (("history", 20), ("future", 30), ("radius", 50.0), ("max_agents", 8),
                                          ("max_lanes", 16))}


def build_motion_dataset(cfg: Any, split: str) -> Optional[MotionDataset]:
    """Dataset for `split` from the config's data section.

    data.name: "synth" (offline generated AV2-format scenes under data.root, made once),
    "av2" (data.root/<split>/<scenario_id>/...), or "av1" (data.root/<split>/*.csv, with
    data.lanes_file for map polylines). The vectorized split is cached as one safetensors file,
    keyed on the scene files (name, size, mtime) and every setting that changes its content
    (vectorisation, data.skip_invalid, data.on_error, data.observed, the lane file).
    """
    name = cfg.get("name", "synth")
    kw = _vec_kwargs(cfg)
    skip = bool(cfg.get("skip_invalid", False))
    policy = on_error_policy(cfg)
    settings = {"what": "motion", "version": _CACHE_VERSION, "name": name, "split": split, "vectorize": kw,
                "skip_invalid": skip, "on_error": policy.mode}
    if name == "synth":
        from .motion_synth import GENERATOR_VERSION, generate_split
        n = {"train": cfg.get("num_train", 2000), "val": cfg.get("num_val", 400), "test": cfg.get("num_val", 400)}
        if split not in n:
            return None
        root = Path(cfg.get("root") or "~/.cache/frozenlm/motion_synth").expanduser()
        seed = int(cfg.get("synth_seed", 0)) * 10 + {"train": 0, "val": 1, "test": 2}[split]
        # Generated scenes are a pure function of (n, seed, generator version): the key needs no file list.
        key = cache_key({**settings, "n": int(n[split]), "seed": seed, "generator": GENERATOR_VERSION})

        def build_synth() -> MotionDataset:
            dirs = generate_split(root / f"{split}_s{seed}_v{GENERATOR_VERSION}", int(n[split]), seed)
            return MotionDataset(*_vectorize_all(dirs, read_av2_scenario, kw, skip, f"reading synth {split}",
                                                 policy))
        return load_or_build(root / f"{split}_{key}.safetensors", build_synth, _cache_save, _cache_load)
    if not cfg.get("root"):
        raise ValueError(f"data.root must point at the {name} data (folders train/ val/ ...)")
    split_dir = Path(cfg.root).expanduser() / split
    if not split_dir.exists():
        return None
    if name == "av2":
        dirs = find_av2_scenarios(split_dir)
        files = [f for d in dirs for f in sorted(d.iterdir()) if f.is_file()]
        read: Callable[[Any], Scene] = read_av2_scenario
    elif name == "av1":
        lanes_file = Path(cfg.lanes_file).expanduser() if cfg.get("lanes_file") else None
        lanes = load_lane_polylines(lanes_file) if lanes_file is not None else None
        dirs = files = sorted(split_dir.glob("*.csv"))
        if not files:
            raise FileNotFoundError(f"no *.csv files in {split_dir} (Argoverse 1 forecasting layout)")
        settings["observed"] = int(cfg.get("observed", 20))
        settings["lanes_file"] = None if lanes_file is None else [str(lanes_file.resolve()),
                                                                   *file_fingerprint([lanes_file])[0][1:]]
        read = lambda p: read_av1_csv(p, settings["observed"], lanes)  # noqa: E731
    else:
        raise ValueError(f"data.name must be synth, av2 or av1, got {name!r}")
    key = cache_key({**settings, "folder": str(split_dir.resolve())}, files, split_dir)
    cache_dir = Path(cfg.get("cache_dir") or split_dir.parent / ".frozenlm_cache").expanduser()
    return load_or_build(cache_dir / f"{split}_{key}.safetensors",
                         lambda: MotionDataset(*_vectorize_all(dirs, read, kw, skip, f"{name} {split}", policy)),
                         _cache_save, _cache_load)
