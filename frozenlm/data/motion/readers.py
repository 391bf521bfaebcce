"""Readers of Argoverse 2 scenario folders and Argoverse 1 forecasting CSVs -> :class:`Scene`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import DataFileError
from .scene import MotionDataError, Scene

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


def find_av1_csvs(split_dir: str | Path) -> list[Path]:
    """The sequence CSVs of one Argoverse 1 split folder, sorted.

    ``forecasting_train_v1.1.tar.gz`` extracts to ``train/data/<seq>.csv`` (and val, test_obs alike), so
    ``split_dir/data/*.csv`` is read when ``split_dir`` holds no CSV itself; a folder with both is refused
    rather than read twice or half."""
    split_dir = Path(split_dir)
    flat, nested = sorted(split_dir.glob("*.csv")), sorted((split_dir / "data").glob("*.csv"))
    if flat and nested:
        raise FileNotFoundError(f"{split_dir} holds *.csv files itself and in data/; keep one of the two "
                                "(the released archives extract to <split>/data/<seq>.csv)")
    if not flat and not nested:
        raise FileNotFoundError(f"no *.csv files in {split_dir} or {split_dir / 'data'} (Argoverse 1 forecasting "
                                "layout: forecasting_<split>_v1.1.tar.gz extracts to <split>/data/<seq>.csv)")
    return flat or nested


class CityLanes:
    """One city's lane centerlines with every point stacked, so that the lanes near a scene are found with
    one vectorised distance computation rather than a Python loop over a whole city's map (a scene of
    a 20,000-lane city: 0.34 s read + vectorised without this, most of it in that loop)."""

    def __init__(self, lines: Sequence[Any]) -> None:
        self.lines = [np.asarray(c, float)[:, :2] for c in lines]
        self.points = np.concatenate(self.lines) if self.lines else np.zeros((0, 2))
        self.owner = np.repeat(np.arange(len(self.lines)), [len(c) for c in self.lines])

    def near(self, center: np.ndarray, radius: float) -> list[np.ndarray]:
        """The centerlines with a point within ``radius`` of ``center``, in file order."""
        d = np.linalg.norm(self.points - np.asarray(center, float), axis=1)
        return [self.lines[i] for i in np.unique(self.owner[d <= radius])]


def read_av1_csv(path: str | Path, observed: int = 20,
                 lanes: Optional[Mapping[str, Sequence[np.ndarray] | CityLanes]] = None,
                 lane_radius: Optional[float] = None) -> Scene:
    """Argoverse 1 forecasting CSV (2 s history + 3 s future at 10 Hz); the focal track is OBJECT_TYPE AGENT.

    `lanes`: optional {city name: [centerline (N, 2), ...] or :class:`CityLanes`} the user exported from
    the AV1 map (see :func:`load_lane_polylines`); AV1's map API is not on PyPI, so lanes are not read here.
    `lane_radius`: keep only the centerlines with a point within it of the focal agent's last observed
    position (what :func:`vectorize` keeps for the same radius, in the same order), else all of the city's.
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
        city_lanes = lanes[city]
        if lane_radius is None:
            scene.lanes = city_lanes.lines if isinstance(city_lanes, CityLanes) else \
                [np.asarray(c, float)[:, :2] for c in city_lanes]
        else:
            index = city_lanes if isinstance(city_lanes, CityLanes) else CityLanes(city_lanes)
            # a hair wider than vectorize's test, which then decides exactly (rotation moves no distance)
            scene.lanes = index.near(pos[row[focal_ids[0]], observed - 1], float(lane_radius) + 1e-6)
        scene.lane_is_intersection = [False] * len(scene.lanes)
    return scene


def load_lane_polylines(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Lane centerlines a user exported: JSON {city: [[[x, y], ...], ...]}."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"lane polyline file not found: {p} (JSON {{city: [[[x, y], ...], ...]}})")
    data = json.loads(p.read_text())
    return {city: [np.asarray(c, float) for c in lines] for city, lines in data.items()}
