"""The world-frame scene every motion reader produces, and the error for a scene that cannot be used."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ...errors import DataFileError
from ..synthetic.motion import OBS_STEPS


class MotionDataError(DataFileError):
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


def to_scene(scene: dict[str, Any], scene_id: str = "synth") -> Scene:
    """A scene of :func:`frozenlm.data.synthetic.motion.generate_scene` as a :class:`Scene`, without the
    file round trip (lanes are the raw centerlines, not av2's boundary-midpoint resampling)."""
    tracks = scene["tracks"]
    pos = np.stack([np.where(t["valid"][:, None], t["pos"], np.nan) for t in tracks])
    valid = np.stack([t["valid"] for t in tracks])
    focal = [t["id"] for t in tracks].index(scene["focal"])
    lanes = [scene["lanes"][k] for k in sorted(scene["lanes"])]
    return Scene(scene_id, pos, valid, focal, OBS_STEPS - 1, [t["type"] for t in tracks],
                 heading=float(tracks[focal]["heading"][OBS_STEPS - 1]), lanes=[ln.center for ln in lanes],
                 lane_is_intersection=[ln.is_intersection for ln in lanes])
