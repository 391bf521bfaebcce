"""Motion forecasting data: Argoverse 2 scenarios, Argoverse 1 CSVs and the offline generated scenes.

Every reader produces a :class:`Scene` (world-frame tracks with validity, the focal agent, lane
centerlines); :func:`vectorize` turns it into VectorNet polylines in the focal agent's frame:
origin = focal position at the last observed step, rotated so that the focal heading is +x.

Polyline vector features (:data:`FEATURES` = 9): x_start, y_start, x_end, y_end, t (agents: end-step
index / history; lanes: 0), is_lane, is_focal, is_intersection, is_vehicle.

Files: ``scene.py`` (Scene, errors), ``readers.py`` (AV2, AV1; the split folders as the archives
extract), ``vectorize.py`` (polylines), ``dataset.py`` (dataset, collate, cache, ``build_motion_dataset``);
generated scenes come from :mod:`frozenlm.data.synthetic.motion`.

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

from .dataset import MotionDataset, build_motion_dataset, collate_motion
from .readers import (CityLanes, find_av1_csvs, find_av2_scenarios, load_lane_polylines, read_av1_csv,
                      read_av2_scenario)
from .scene import MotionDataError, Scene, to_scene
from .vectorize import FEATURES, focal_frame, to_frame, vectorize

__all__ = ["CityLanes", "FEATURES", "MotionDataError", "MotionDataset", "Scene", "build_motion_dataset",
           "collate_motion", "find_av1_csvs", "find_av2_scenarios", "focal_frame", "load_lane_polylines",
           "read_av1_csv", "read_av2_scenario", "to_frame", "to_scene", "vectorize"]
