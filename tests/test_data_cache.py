"""frozenlm.data.cache: content keys (file lists + settings), atomic writes, one builder per node."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from frozenlm.config import load_config
from frozenlm.data.motion import MotionDataError, build_motion_dataset
from frozenlm.data.pointcloud import read_modelnet_txt

TESTS = Path(__file__).parent
MOTION_CONFIG = "configs/motion/synth_vectornet_smollm2.yaml"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))


# ----------------------------------------------------------------------------- keys

def test_key_covers_files_and_settings(tmp_path: Path) -> None:
    from frozenlm.data.cache import cache_key
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("1,2,3\n")
    b.write_text("4,5,6\n")
    base = cache_key({"n": 1}, [a, b], tmp_path)
    assert cache_key({"n": 1}, [b, a], tmp_path) == base  # order of the listing does not matter
    assert cache_key({"n": 2}, [a, b], tmp_path) != base  # a setting
    assert cache_key({"n": 1}, [a], tmp_path) != base  # a file removed
    c = tmp_path / "c.txt"
    c.write_text("7,8,9\n")
    assert cache_key({"n": 1}, [a, b, c], tmp_path) != base  # a file added
    b.write_text("4,5,6,7\n")
    assert cache_key({"n": 1}, [a, b], tmp_path) != base  # a file changed (size)
    b.write_text("4,5,6\n")
    st = b.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key({"n": 1}, [a, b], tmp_path) != base  # same bytes, rewritten later (mtime)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        cache_key({}, [tmp_path / "nope.txt"])


def test_av2_cache_follows_scenario_files_and_skip_invalid(tmp_path: Path) -> None:
    from test_motion import _write_av2
    root = tmp_path / "av2"
    _write_av2(root / "val" / "one")
    cfg = load_config(MOTION_CONFIG, [f"data.root={root}", "data.name=av2", "data.future=5"]).data
    assert len(build_motion_dataset(cfg, "val")) == 1
    _write_av2(root / "val" / "two", lane_x=90.0)  # a scenario added
    two = build_motion_dataset(cfg, "val")
    assert len(two) == 2
    _write_av2(root / "val" / "bad", focal_id="ghost")
    cfg.skip_invalid = True
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        assert len(build_motion_dataset(cfg, "val")) == 2
    cfg.skip_invalid = False  # a setting changed: the skipping cache must not be reused
    with pytest.raises(MotionDataError, match="skip_invalid"):
        build_motion_dataset(cfg, "val")
    for f in (root / "val" / "bad").iterdir():  # a scenario removed
        f.unlink()
    (root / "val" / "bad").rmdir()
    for f in (root / "val" / "two").iterdir():
        f.unlink()
    (root / "val" / "two").rmdir()
    assert len(build_motion_dataset(cfg, "val")) == 1


def test_av1_cache_follows_csv_files(tmp_path: Path) -> None:
    import pandas as pd
    from test_motion import hand_scene
    s = hand_scene()
    rows = [{"TIMESTAMP": 315970000.0 + 0.1 * t, "TRACK_ID": tid, "OBJECT_TYPE": typ, "X": s.positions[a, t, 0],
             "Y": s.positions[a, t, 1], "CITY_NAME": "PIT"}
            for a, (tid, typ) in enumerate([("f", "AGENT"), ("o", "OTHERS")]) for t in range(25) if s.valid[a, t]]
    split = tmp_path / "av1" / "val"
    split.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(split / "1.csv", index=False)
    cfg = load_config(MOTION_CONFIG, [f"data.root={tmp_path / 'av1'}", "data.name=av1", "data.future=5"]).data
    first = build_motion_dataset(cfg, "val")
    moved = [{**r, "X": r["X"] + 1.0} if r["TRACK_ID"] == "o" else r for r in rows]
    pd.DataFrame(moved).to_csv(split / "1.csv", index=False)  # same name, new content
    again = build_motion_dataset(cfg, "val")
    assert not torch.equal(first[0]["vectors"], again[0]["vectors"])
    pd.DataFrame(rows).to_csv(split / "2.csv", index=False)
    assert len(build_motion_dataset(cfg, "val")) == 2


def test_modelnet_cache_follows_file_content(tmp_path: Path) -> None:
    from test_pointcloud import _write_modelnet_txt
    root = tmp_path / "mn"
    _write_modelnet_txt(root)
    first = read_modelnet_txt(root, "train", num_points=32, progress=False)
    f = root / "bed" / "bed_0002.txt"
    arr = np.loadtxt(f, delimiter=",")
    np.savetxt(f, arr[::-1], delimiter=",", fmt="%.6f")  # same size, other points first
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = read_modelnet_txt(root, "train", num_points=32, progress=False)
    assert torch.equal(again.points[0], first.points[0]) and not torch.equal(again.points[1], first.points[1])


class _Section(dict):
    """A config section as the builders see it (``.get`` and attribute access)."""

    __getattr__ = dict.__getitem__


def _write_vqav2(root: Path, answers: list[list[str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        qs = [{"question_id": i, "image_id": i, "question": "what?"} for i in range(len(answers))]
        anns = [{"question_id": i, "answers": [{"answer": a} for a in ans], "answer_type": "other"}
                for i, ans in enumerate(answers)]
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": qs}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": anns}))


def test_vqav2_vocabulary_follows_annotations_and_settings(tmp_path: Path) -> None:
    from frozenlm.data.vqa import build_vqav2
    root = tmp_path / "vqa"
    _write_vqav2(root, [["red"] * 10, ["blue"] * 6 + ["red"] * 4])
    cfg = _Section(root=str(root), img_size=32, min_answer_count=1, num_answers=2)
    assert build_vqav2(cfg, "val").vocab == ["red", "blue"]
    assert build_vqav2(_Section(cfg, num_answers=1), "val").vocab == ["red"]  # a setting changed
    _write_vqav2(root, [["green"] * 10, ["blue"] * 6 + ["green"] * 4])  # the annotations changed
    assert build_vqav2(cfg, "val").vocab == ["green", "blue"]


# ----------------------------------------------------------------------------- atomic writes

def test_failed_write_leaves_no_cache_file(tmp_path: Path) -> None:
    from frozenlm.data.cache import atomic_write, load_or_build
    path = tmp_path / "c" / "x.npz"

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"PK\x03\x04 half a zip")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert not path.exists() and list(path.parent.iterdir()) == []
    built = []
    got = load_or_build(path, lambda: built.append(1) or np.arange(3),
                        lambda a, tmp: np.savez(tmp, a=a), lambda p: np.load(p)["a"])
    assert got.tolist() == [0, 1, 2] and built == [1]
    again = load_or_build(path, lambda: pytest.fail("rebuilt"), lambda a, tmp: None, lambda p: np.load(p)["a"])
    assert again.tolist() == [0, 1, 2]


def test_process_killed_mid_write_leaves_no_corrupt_cache(tmp_path: Path) -> None:
    from test_pointcloud import _write_modelnet_txt
    root = tmp_path / "mn"
    _write_modelnet_txt(root)
    # The child dies (no cleanup, no exception handling) halfway through writing the cache.
    script = textwrap.dedent(f"""
        import os, numpy as np
        def dying_savez(file, **arrays):
            with open(file, "wb") as f:
                f.write(b"PK\\x03\\x04" + bytes(100))
                f.flush()
            os._exit(3)
        np.savez = dying_savez
        from frozenlm.data.pointcloud import read_modelnet_txt
        read_modelnet_txt({str(root)!r}, "train", num_points=32, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert not [p for p in root.glob("*.npz") if not p.name.startswith(".")]  # no cache at a name that is read
    ds = read_modelnet_txt(root, "train", num_points=32, progress=False)  # parses again, correctly
    ref = read_modelnet_txt(root, "train", num_points=32, progress=False, cache=False)
    assert torch.equal(ds.points, ref.points) and torch.equal(ds.labels, ref.labels)


def test_unwritable_folder_builds_in_memory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from frozenlm.data.cache import load_or_build
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    got = load_or_build(blocker / "sub" / "x.json", lambda: [1, 2], lambda v, tmp: tmp.write_text(json.dumps(v)),
                        lambda p: json.loads(p.read_text()))
    assert got == [1, 2] and "could not write" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two ranks

def test_two_gloo_ranks_build_each_generated_set_once(tmp_path: Path) -> None:
    import tarfile
    from PIL import Image
    from test_pointcloud import _write_modelnet_txt
    out, data = tmp_path / "out", tmp_path / "data"
    _write_modelnet_txt(data / "mn")  # user files whose parsed form is cached
    (data / "shards").mkdir(parents=True)
    for i in range(2):
        png = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(png)
        with tarfile.open(data / "shards" / f"s{i}.tar", "w") as tf:
            tf.add(png, arcname=f"c{i}/{i}.png")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(TESTS / "_data_cache_ddp_script.py"), str(tmp_path / "data"), str(out)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for name in ("rooms3d", "shapes", "motion_synth", "moving_shapes", "modelnet"):
        assert ranks[0]["builds"][name] + ranks[1]["builds"][name] == 1, (name, ranks)
        assert ranks[0]["digest"][name] == ranks[1]["digest"][name], name
    assert ranks[0]["builds"]["tarshards"] + ranks[1]["builds"]["tarshards"] == 2  # two shards, scanned once each
    assert ranks[0]["digest"]["tarshards"] == ranks[1]["digest"]["tarshards"]
    leftovers = [p for p in (tmp_path / "data").rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
