"""Vectorised scenes as a dataset: collate, the safetensors split cache and ``build_motion_dataset``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..cache import cache_key, file_fingerprint, load_or_build
from ..errors import FilePolicy, on_error_policy
from .readers import (CityLanes, find_av1_csvs, find_av2_scenarios, load_lane_polylines, read_av1_csv,
                      read_av2_scenario)
from .scene import MotionDataError, Scene
from .vectorize import FEATURES, vectorize

_CACHE_VERSION = 2  # bump when vectorize() or the cache layout changes


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
    "av2" (data.root/<split>/<scenario_id>/...), or "av1" (data.root/<split>/data/*.csv as the
    forecasting_<split>_v1.1.tar.gz archives extract, or data.root/<split>/*.csv; data.lanes_file
    for map polylines). The vectorized split is cached as one safetensors file,
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
        from ..synthetic.motion import GENERATOR_VERSION, generate_split
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
        if name == "av1" and split == "test" and (split_dir.parent / "test_obs").is_dir():
            raise ValueError(f"{split_dir.parent / 'test_obs'}: Argoverse 1's test split holds only the 2 s "
                             "history (no futures), so it cannot be scored here; evaluate on val "
                             "(eval_split=val)")
        return None
    if name == "av2":
        dirs = find_av2_scenarios(split_dir)
        files = [f for d in dirs for f in sorted(d.iterdir()) if f.is_file()]
        read: Callable[[Any], Scene] = read_av2_scenario
    elif name == "av1":
        lanes_file = Path(cfg.lanes_file).expanduser() if cfg.get("lanes_file") else None
        lanes = None if lanes_file is None else {c: CityLanes(v) for c, v in load_lane_polylines(lanes_file).items()}
        if lanes is None:  # the AV1 map API is not on PyPI: lanes come only from a user-exported file
            warnings.warn(f"data.lanes_file is not set: the Argoverse 1 scenes of {split_dir} get no lane "
                          "polylines (agents only), unlike the paper's VectorNet, which reads the HD map; "
                          "export the centerlines to JSON {city: [[[x, y], ...], ...]} (docs/motion.md)")
        dirs = files = find_av1_csvs(split_dir)
        settings["observed"] = int(cfg.get("observed", 20))
        settings["lanes_file"] = None if lanes_file is None else [str(lanes_file.resolve()),
                                                                   *file_fingerprint([lanes_file])[0][1:]]
        read = lambda p: read_av1_csv(p, settings["observed"], lanes, kw["radius"])  # noqa: E731
    else:
        raise ValueError(f"data.name must be synth, av2 or av1, got {name!r}")
    key = cache_key({**settings, "folder": str(split_dir.resolve())}, files, split_dir)
    cache_dir = Path(cfg.get("cache_dir") or split_dir.parent / ".frozenlm_cache").expanduser()
    return load_or_build(cache_dir / f"{split}_{key}.safetensors",
                         lambda: MotionDataset(*_vectorize_all(dirs, read, kw, skip, f"{name} {split}", policy)),
                         _cache_save, _cache_load)
