"""Offline SQA3D-style data: generated 3D rooms, an agent situation and situated questions.

A room is a 5 m x 5 m floor with 3-8 trimesh objects (box, ball, cylinder, cone, chair, table) of
distinct (colour, kind), small or large. Every object and the floor are point-sampled with colour
(xyz + rgb in [0, 1], z up). The agent stands on the floor at ``xy`` facing ``theta`` (radians,
counter-clockwise from +x); a templated text describes the situation. Questions of SQA3D's six
types (What / Is / How / Can / Which / Others) are answered from the geometry in the agent's frame:
forward ``f = (cos t, sin t)``, left ``l = (-sin t, cos t)``; an object is on the left when its
offset has ``d.l > 0`` and in front when ``d.f > 0``, so turning the agent by 180 degrees swaps
left/right and front/behind. Scene i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from ..cache import cache_key, load_or_build

__all__ = ["KINDS", "COLORS", "QUESTION_TYPES", "TEMPLATES", "RoomObject", "Agent", "agent_frame", "direction_of",
           "answer", "question_text", "make_room", "sample_room_points", "generate_rooms", "load_or_generate_rooms"]

KINDS = ("box", "ball", "cylinder", "cone", "chair", "table")
COLORS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.25, 0.9),
          "yellow": (0.95, 0.85, 0.1), "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.08)}
QUESTION_TYPES = ("What", "Is", "How", "Can", "Which", "Others")  # SQA3D's breakdown
RELATIONS = {"left": "on my left", "right": "on my right", "front": "in front of me", "behind": "behind me"}
#: template name -> (question type, text with {obj}/{side}/{rel}/{kinds} slots)
TEMPLATES = {
    "closest_on_side": ("What", "what is the closest object {rel}?"),
    "is_rel": ("Is", "is the {obj} {rel}?"),
    "count_rel": ("How", "how many {kinds} are {rel}?"),
    "reach_straight": ("Can", "can I reach the {obj} by walking straight?"),
    "closest": ("Which", "which object is closest to me?"),
    "farthest": ("Which", "which object is farthest from me?"),
    "where": ("Others", "where is the {obj} relative to me?"),
}
HALF = 2.5          # half side of the floor, metres
AGENT_HALF_WIDTH = 0.2  # "reach by walking straight": the object's footprint must meet this corridor
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}
_VERSION = 1  # bump when the generator changes, so stale caches are not reused


@dataclass(frozen=True)
class RoomObject:
    """An object on the floor: footprint centre ``xy`` and footprint ``radius`` (metres)."""
    kind: str
    color: str
    size: str
    xy: tuple[float, float]
    radius: float
    height: float

    @property
    def name(self) -> str:
        """How texts refer to it, e.g. "red box" ((colour, kind) is unique within a room)."""
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Agent:
    """The situation: position on the floor and facing angle (radians, CCW from +x)."""
    xy: tuple[float, float]
    theta: float

    def turned(self, degrees: float) -> "Agent":
        """The same agent turned in place by ``degrees`` (counter-clockwise)."""
        return Agent(self.xy, self.theta + math.radians(degrees))


def agent_frame(obj: RoomObject, agent: Agent) -> tuple[float, float]:
    """(forward, left) coordinates of the object's centre in the agent's frame."""
    dx, dy = obj.xy[0] - agent.xy[0], obj.xy[1] - agent.xy[1]
    c, s = math.cos(agent.theta), math.sin(agent.theta)
    return dx * c + dy * s, -dx * s + dy * c


def _dist(obj: RoomObject, agent: Agent) -> float:
    return math.hypot(obj.xy[0] - agent.xy[0], obj.xy[1] - agent.xy[1])


def _in_rel(obj: RoomObject, agent: Agent, rel: str) -> bool:
    fwd, left = agent_frame(obj, agent)
    return {"left": left > 0, "right": left < 0, "front": fwd > 0, "behind": fwd < 0}[rel]


def direction_of(obj: RoomObject, agent: Agent) -> str:
    """The dominant direction: front (within 45 degrees of forward), left, behind or right."""
    fwd, left = agent_frame(obj, agent)
    ang = math.degrees(math.atan2(left, fwd))
    if abs(ang) <= 45:
        return "front"
    if abs(ang) >= 135:
        return "behind"
    return "left" if ang > 0 else "right"


def _plural(kind: str) -> str:
    return kind + "es" if kind.endswith("x") else kind + "s"


def question_text(template: str, **args: str) -> str:
    """The question string of ``template`` filled with ``args`` (obj, rel, kind)."""
    if template not in TEMPLATES:
        raise KeyError(f"unknown question template {template!r}; known: {sorted(TEMPLATES)}")
    slots = {"obj": args.get("obj", ""), "rel": RELATIONS.get(args.get("rel", ""), ""),
             "kinds": _plural(args.get("kind", ""))}
    return TEMPLATES[template][1].format(**slots)


def answer(objects: list[RoomObject], agent: Agent, template: str, **args: str) -> str:
    """The ground-truth answer of a question, computed from the geometry (see the module docstring)."""
    by_name = {o.name: o for o in objects}
    if template in ("is_rel", "reach_straight", "where") and args.get("obj") not in by_name:
        raise KeyError(f"question {template!r} names {args.get('obj')!r}, which is not in the room")
    if template == "closest_on_side":
        side = [o for o in objects if _in_rel(o, agent, args["rel"])]
        return min(side, key=lambda o: _dist(o, agent)).kind if side else "nothing"
    if template == "is_rel":
        return "yes" if _in_rel(by_name[args["obj"]], agent, args["rel"]) else "no"
    if template == "count_rel":
        return str(sum(o.kind == args["kind"] and _in_rel(o, agent, args["rel"]) for o in objects))
    if template == "reach_straight":
        obj = by_name[args["obj"]]
        fwd, left = agent_frame(obj, agent)
        return "yes" if fwd > 0 and abs(left) <= obj.radius + AGENT_HALF_WIDTH else "no"
    if template == "closest":
        return min(objects, key=lambda o: _dist(o, agent)).name
    if template == "farthest":
        return max(objects, key=lambda o: _dist(o, agent)).name
    if template == "where":
        return direction_of(by_name[args["obj"]], agent)
    raise KeyError(f"unknown question template {template!r}; known: {sorted(TEMPLATES)}")


def situation_text(objects: list[RoomObject], agent: Agent) -> str:
    """"I am standing next to the <nearest object> and facing the <object most straight ahead>." """
    near = min(objects, key=lambda o: _dist(o, agent))
    ahead = min(objects, key=lambda o: abs(math.atan2(agent_frame(o, agent)[1], agent_frame(o, agent)[0])))
    return f"i am standing next to the {near.name} and facing the {ahead.name}."


def make_room(rng: np.random.Generator, min_objects: int = 3, max_objects: int = 8
              ) -> tuple[list[RoomObject], Agent]:
    """Random objects (distinct colour+kind, non-overlapping) and an agent facing one of them."""
    n = int(rng.integers(min_objects, max_objects + 1))
    combos = [(k, c) for k in KINDS for c in COLORS]
    objects: list[RoomObject] = []
    for ci in rng.permutation(len(combos)):
        if len(objects) == n:
            break
        kind, color = combos[ci]
        size = "large" if rng.random() < 0.5 else "small"
        radius = float(rng.uniform(0.35, 0.5) if size == "large" else rng.uniform(0.18, 0.28))
        for _ in range(50):  # rejection sampling of a free spot
            xy = rng.uniform(-HALF + radius, HALF - radius, 2)
            if all(math.dist(xy, o.xy) > radius + o.radius + 0.3 for o in objects):
                height = radius * 2 if kind in ("ball", "box") else float(rng.uniform(1.5, 2.5)) * radius
                objects.append(RoomObject(kind, color, size, (float(xy[0]), float(xy[1])), radius, float(height)))
                break
    while True:
        xy = rng.uniform(-HALF + 0.3, HALF - 0.3, 2)
        if all(math.dist(xy, o.xy) > o.radius + 0.4 for o in objects):
            break
    target = objects[int(rng.integers(len(objects)))]
    theta = math.atan2(target.xy[1] - xy[1], target.xy[0] - xy[0]) + float(rng.uniform(-0.4, 0.4))
    return objects, Agent((float(xy[0]), float(xy[1])), theta)


def _mesh(obj: RoomObject) -> Any:
    import trimesh
    r, h = obj.radius, obj.height
    c = trimesh.creation
    if obj.kind == "box":
        m = c.box(extents=(1.4 * r, 1.4 * r, h))
        m.apply_translation((0, 0, h / 2))
    elif obj.kind == "ball":
        m = c.icosphere(subdivisions=2, radius=r)
        m.apply_translation((0, 0, r))
    elif obj.kind == "cylinder":
        m = c.cylinder(radius=r, height=h, sections=20)
        m.apply_translation((0, 0, h / 2))
    elif obj.kind == "cone":
        m = c.cone(radius=r, height=h, sections=20)
    else:  # chair / table: a top on four legs (a chair also has a back)
        top_z = h * (0.5 if obj.kind == "chair" else 0.9)
        parts = [c.box(extents=(1.4 * r, 1.4 * r, 0.06))]
        parts[0].apply_translation((0, 0, top_z))
        for sx in (-0.6, 0.6):
            for sy in (-0.6, 0.6):
                leg = c.box(extents=(0.05, 0.05, top_z))
                leg.apply_translation((sx * r, sy * r, top_z / 2))
                parts.append(leg)
        if obj.kind == "chair":
            back = c.box(extents=(0.06, 1.4 * r, h - top_z))
            back.apply_translation((-0.7 * r, 0, top_z + (h - top_z) / 2))
            parts.append(back)
        m = trimesh.util.concatenate(parts)
    m.apply_translation((obj.xy[0], obj.xy[1], 0))
    return m


def sample_room_points(objects: list[RoomObject], rng: np.random.Generator, num_points: int = 1024,
                       floor_fraction: float = 0.2, color_noise: float = 0.03) -> np.ndarray:
    """(num_points, 6) float32 xyz+rgb: a grey floor plus an equal share of surface points per object."""
    import trimesh
    n_floor = int(num_points * floor_fraction)
    share = np.full(len(objects), (num_points - n_floor) // len(objects))
    share[: (num_points - n_floor) % len(objects)] += 1
    parts = [np.concatenate([np.c_[rng.uniform(-HALF, HALF, (n_floor, 2)), np.zeros(n_floor)],
                             np.full((n_floor, 3), 0.5)], 1)]
    for obj, k in zip(objects, share):
        xyz, _ = trimesh.sample.sample_surface(_mesh(obj), int(k), seed=rng)
        parts.append(np.concatenate([xyz, np.tile(COLORS[obj.color], (int(k), 1))], 1))
    pts = np.concatenate(parts)
    pts[:, 3:] = np.clip(pts[:, 3:] + rng.normal(0, color_noise, (len(pts), 3)), 0, 1)
    return pts[rng.permutation(len(pts))].astype(np.float32)


def _ask(objects: list[RoomObject], agent: Agent, template: str, rng: np.random.Generator) -> dict[str, Any]:
    args: dict[str, str] = {}
    if template in ("closest_on_side",):
        args["rel"] = ("left", "right")[int(rng.integers(2))]
    if template in ("is_rel", "count_rel"):
        args["rel"] = tuple(RELATIONS)[int(rng.integers(4))]
    if template in ("is_rel", "reach_straight", "where"):
        args["obj"] = objects[int(rng.integers(len(objects)))].name
    if template == "count_rel":
        args["kind"] = KINDS[int(rng.integers(len(KINDS)))]
    return {"type": TEMPLATES[template][0], "template": template, "args": args,
            "question": question_text(template, **args), "answer": answer(objects, agent, template, **args)}


def make_scene(rng: np.random.Generator, num_points: int = 1024, min_objects: int = 3,
               max_objects: int = 8) -> tuple[np.ndarray, dict[str, Any]]:
    """One scene: points (num_points, 6) and a record with objects, agent, situation and one
    question per template."""
    objects, agent = make_room(rng, min_objects, max_objects)
    points = sample_room_points(objects, rng, num_points)
    qs = [_ask(objects, agent, t, rng) for t in TEMPLATES]
    rec = {"objects": [asdict(o) for o in objects], "position": list(agent.xy), "theta": agent.theta,
           "situation": situation_text(objects, agent), "questions": qs}
    return points, json.loads(json.dumps(rec))  # the JSON form (lists, not tuples), as the cache holds it


def generate_rooms(num_scenes: int, split: str = "train", seed: int = 0, num_points: int = 1024,
                   min_objects: int = 3, max_objects: int = 8, progress: bool = True
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(points (S, P, 6) float32, scene records); scene i uses ``default_rng([seed, split_id, i])``."""
    if split not in _SPLIT_ID:
        raise ValueError(f"rooms3d split must be one of {sorted(_SPLIT_ID)}, got {split!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"rooms3d needs 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    pts = np.empty((num_scenes, num_points, 6), dtype=np.float32)
    recs = []
    for i in tqdm(range(num_scenes), desc=f"generating rooms3d/{split}", disable=not progress, leave=False):
        pts[i], rec = make_scene(np.random.default_rng([seed, _SPLIT_ID[split], i]), num_points,
                                 min_objects, max_objects)
        recs.append(rec)
    return pts, recs


def load_or_generate_rooms(cache_dir: Optional[str | Path], num_scenes: int, split: str = "train", seed: int = 0,
                           num_points: int = 1024, min_objects: int = 3, max_objects: int = 8,
                           progress: bool = True) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """:func:`generate_rooms`, cached as ``cache_dir/rooms3d_<split>_<hash>.npz`` (arrays and a JSON
    string, no pickle) through :func:`frozenlm.data.cache.load_or_build` (atomic; one builder per
    node under torch.distributed); the hash covers every argument and the generator version."""
    args = (num_scenes, split, seed, num_points, min_objects, max_objects)
    if cache_dir is None:
        return generate_rooms(*args, progress=progress)
    key = cache_key({"what": "rooms3d", "v": _VERSION, "args": args})
    path = Path(cache_dir).expanduser() / f"rooms3d_{split}_{key}.npz"

    def save(obj: tuple[np.ndarray, list[dict[str, Any]]], tmp: Path) -> None:
        np.savez(tmp, points=obj[0], scenes=np.array(json.dumps(obj[1])))

    def load(p: Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
        with np.load(p, allow_pickle=False) as f:
            return f["points"], json.loads(str(f["scenes"]))

    return load_or_build(path, lambda: generate_rooms(*args, progress=progress), save, load)
