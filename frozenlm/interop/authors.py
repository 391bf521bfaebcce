"""``import_authors``: turn a released checkpoint of the paper's authors into a frozenlm run directory.

The result is an ordinary frozenlm checkpoint (``OUT/checkpoints/step_0000000/`` + ``OUT/config.yaml``):
``frozenlm eval OUT``, ``frozenlm analyze OUT`` and ``frozenlm.load_trained(OUT)`` read it, and
``frozenlm train OUT/config.yaml init_from=OUT run_dir=NEW`` fine-tunes from its weights. Its config is
the shipped recipe the authors' model corresponds to (``configs/image/imagenet_vit_s_llama7b.yaml``, ...)
with the model section fixed to what the checkpoint holds, so real data paths are a ``key=value`` away.

What is checked (every failure is a CheckpointError naming the keys, shapes or files):
- the file loads with weights-only unpickling (``authors_files``);
- every key of the state dict maps exactly once (``authors_keys``): missing and leftover keys on either
  side, and every shape;
- the frozen LLaMA layer stored in the checkpoint equals the user's ``--lm`` layer after the q/k row
  conversion (same SHA-256 digest, ``authors_lm``); without ``--lm`` it is written out as an LM source
  (``OUT/lm``) and becomes the frozen block;
- ``llama.norm.weight`` is all ones (frozenlm's block output norm has a fixed unit weight);
- the image size / frame count / class count in the authors' ``args`` match the config.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import Config, ConfigError, load_config
from ..engine import checkpoint as ckpt
from ..engine.rng import seed_all
from ..engine.task import get_task, task_schema
from ..errors import CheckpointError
from ..layer import frozen_param_names
from ..lm.catalog import split_source_spec
from ..lm.load import load_blocks, resolve_layers
from ..models.weights import LoadReport, match_weights
from .authors_files import AuthorsCheckpoint, read_authors_checkpoint
from .authors_keys import (AUTHORS_LAYER, HEAD_KEY, LLAMA_NORM, MAPPERS, SplitState, authors_name, default_recipe,
                           infer_model_name, split_state)
from .authors_lm import canonical_layers, compare_blocks, stored_config, stored_stack, write_lm_dir

__all__ = ["ImportResult", "import_authors", "CONFIGS"]

#: the shipped recipes (a source checkout's configs/ folder)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TASKS = ("image", "video", "pointcloud")


@dataclass
class ImportResult:
    """Where the import wrote the run and what it checked."""

    run_dir: Path
    step_dir: Path
    config: Config
    report: LoadReport
    lm: dict[str, Any] = field(default_factory=dict)  # source, layers, digest, how it was checked

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [f"wrote {self.step_dir} (config: {self.run_dir / 'config.yaml'}, model {self.config.model.name})",
                 f"weights: {self.report.summary()}"]
        if self.lm:
            lines.append(f"frozen LLaMA: {self.lm['check']}; source {self.lm['source']} layers {self.lm['layers']}, "
                         f"digest {self.lm['digest'][:16]}...")
        return "\n".join(lines)


def _yaml_value(v: Any) -> str:
    return json.dumps(v)  # JSON is YAML: paths, null and lists survive the override parser


def _check_out(out: Path) -> None:
    if (out / "checkpoints").exists() and any((out / "checkpoints").iterdir()):
        raise CheckpointError(f"{out} already holds checkpoints; give an empty or new --out directory")
    if (out / "lm").exists():
        raise CheckpointError(f"{out / 'lm'} already exists; give an empty or new --out directory")


def _recipe(task: str, model: str, has_lm: bool, config: str | Path | None) -> Path:
    if config is not None:
        return Path(config).expanduser()
    rel = default_recipe(task, model, has_lm)
    if rel is None:
        hint = (" (the checkpoint does not record its ScanObjectNN split: e.g. --config "
                "configs/pointcloud/scanobjectnn_hardest_llama7b.yaml, _objbg_ or _objonly_)" if task == "pointcloud"
                else "")
        raise ConfigError(f"no shipped recipe corresponds to model {model!r} for task {task!r}: give --config{hint}")
    if not (CONFIGS / rel).is_file():
        raise ConfigError(f"the recipe {rel} is not in {CONFIGS} (frozenlm is not run from a source checkout?): "
                          f"give --config PATH/configs/{rel}")
    return CONFIGS / rel


def _head_rows(task: str, split: SplitState, where: Path) -> int:
    key = HEAD_KEY[task]
    full = next((k for k, a in split.names.items() if a == key), None)
    if full is None:
        raise CheckpointError(f"{where}: no classifier weight {key!r} in the checkpoint (a headless backbone is not "
                              f"one of the authors' released models)")
    return int(split.backbone[full].shape[0])


def _check_args(task: str, ck: AuthorsCheckpoint, cfg: Config) -> None:
    """The authors' args that decide what the model sees, against the config (shapes cannot tell these)."""
    args = ck.args or {}
    pairs = [("input_size", "data.img_size", cfg.model.get("img_size") or cfg.data.get("img_size"))]
    if task == "video":
        pairs.append(("num_frames", "data.num_frames", cfg.model.get("num_frames") or cfg.data.get("num_frames")))
        if args.get("use_mean_pooling") is False:
            raise CheckpointError(f"{ck.path}: args.use_mean_pooling is false; frozenlm's VideoMAE model mean-pools")
    bad = [(a, key, have) for a, key, have in pairs
           if args.get(a) is not None and have is not None and int(args[a]) != int(have)]
    if bad:
        raise CheckpointError(f"{ck.path}: the authors trained this model on other inputs than the config gives: "
                              + "; ".join(f"args.{a}={args[a]} but {key}={have}" for a, key, have in bad)
                              + ". Override the config to match: " + " ".join(f"{key}={args[a]}" for a, key, _ in bad))


def _lm_source(task: str, split: SplitState, lm: str | None, out: Path, where: Path, heads: int | None,
               norm_eps: float | None) -> tuple[str, list[int], list[dict], Any, bool]:
    """(source, layer indices, canonical stored layers, BlockConfig, written) for the model's frozen block."""
    k = len(split.llama)
    authors = list(range(AUTHORS_LAYER[task] - k + 1, AUTHORS_LAYER[task] + 1))
    if lm is None:
        cfg = stored_config(split, heads, norm_eps, where)
        layers = canonical_layers(split, cfg, where, "the stored layer's shapes")
        prov = {"checkpoint": str(where), "layers_of_llama_7b": authors,
                "note": "LLaMA layer(s) stored inside an authors' checkpoint (ziqipang/LM4VisualEncoding), "
                        "written by frozenlm import-authors; q/k rows in Hugging Face order"}
        write_lm_dir(out / "lm", stored_stack(layers, cfg, list(range(k))), cfg, prov)
        return str((out / "lm").resolve()), list(range(k)), layers, cfg, True
    src = split_source_spec(lm)[0]
    try:
        reader, idx = resolve_layers(lm, authors)
    except CheckpointError as e:
        raise CheckpointError(f"--lm {lm}: {e} (the authors' {task} code freezes LLaMA-7B layer "
                              f"{AUTHORS_LAYER[task]})") from None
    if len(idx) != k:
        raise CheckpointError(f"--lm {lm} selects {len(idx)} layer(s) {idx}, but the checkpoint stores {k} "
                              f"(llama.layers.0..{k - 1})")
    cfg = reader.config
    if cfg.family != "llama":
        raise CheckpointError(f"--lm {lm} is a {cfg.family} model; the authors' checkpoints hold a LLaMA layer")
    layers = canonical_layers(split, cfg, where, f"the config of {src}")
    p = Path(src).expanduser()
    return (str(p.resolve()) if p.exists() else src), idx, layers, cfg, False


def _our_overrides(task: str, name: str, classes: int, split: SplitState, out: Path, source: str | None,
                   layers: list[int] | None, frozen_dtype: str | None) -> dict[str, Any]:
    ours: dict[str, Any] = {"model.name": name, "model.pretrained_path": None, "model.num_classes": classes,
                            "run_dir": str(out.resolve()), "model.lm.variant": "frozen" if split.has_lm else "none"}
    if split.has_lm:  # the authors' sandwich: no residual, bidirectional, no RoPE (models/llama.py)
        ours.update({"model.lm.source": source, "model.lm.layers": layers, "model.lm.frozen_dtype": frozen_dtype,
                     "model.lm.residual": "none", "model.lm.mask": "none", "model.lm.rope": "none"})
    if task == "image":
        ours["model.position"] = "tail"  # after the last ViT block, before the final norm (vit_llama.py)
    return ours


def _load_weights(model: torch.nn.Module, task: str, split: SplitState, where: Path) -> LoadReport:
    """Load the backbone and F_L1/F_L2 into ``model``; every key on both sides accounted for."""
    clean, report = match_weights(model, split.backbone, where, (), "is it the same model size?", split.names)
    own, frozen = model.state_dict(), frozen_param_names(model)
    lm_trainable = sorted(k for k in own if k.startswith("lm_layer.") and k not in frozen)
    bad = []
    for k, v in split.mappers.items():
        if k not in own:
            report.unexpected.append(authors_name(task, k))
        elif tuple(v.shape) != tuple(own[k].shape):
            bad.append(f"{authors_name(task, k)} has shape {tuple(v.shape)} but {k} is {tuple(own[k].shape)}")
        else:
            clean[k] = v
    if bad:
        raise CheckpointError(f"{where}: shape mismatch: " + "; ".join(bad))
    missing = [authors_name(task, k) for k in report.missing] + [authors_name(task, k) for k in lm_trainable
                                                                  if k not in split.mappers]
    if missing or report.unexpected:
        raise CheckpointError(f"{where}: the checkpoint does not match frozenlm's {model.__class__.__name__} key for "
                              f"key. Missing in the checkpoint ({len(missing)}): {missing[:12]}; not used by the "
                              f"model ({len(report.unexpected)}): {sorted(report.unexpected)[:12]}")
    result = model.load_state_dict(clean, strict=False)
    left = sorted(set(result.missing_keys) - frozen - {k for k in own if k.endswith("num_batches_tracked")})
    if left or result.unexpected_keys:
        raise CheckpointError(f"internal: keys not loaded {left}, unexpected {result.unexpected_keys}")
    report.loaded = sorted(clean)
    for j, names in enumerate(split.llama_names):
        report.dropped.append(f"llama.layers.{j}.* ({len(names)} tensors of the frozen LLaMA layer: compared with "
                              f"the source, not stored)")
    if split.llama_norm is not None:
        report.dropped.append(f"{LLAMA_NORM} (all ones: frozenlm's unit RMSNorm)")
    return report


def _check_unit_norm(split: SplitState, dim: int, where: Path) -> None:
    w = split.llama_norm
    if w is None:
        return
    if tuple(w.shape) != (dim,):
        raise CheckpointError(f"{where}: {LLAMA_NORM} has shape {tuple(w.shape)}, the LLaMA layer is {dim} wide")
    if not torch.equal(w.float(), torch.ones(dim)):
        raise CheckpointError(f"{where}: {LLAMA_NORM} is not all ones (max |w - 1| = "
                              f"{float((w.float() - 1).abs().max()):.3g}); frozenlm's norm after the LM block has a "
                              f"fixed unit weight as in the paper, so this model cannot be reproduced")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _version() -> str:
    try:
        return importlib.metadata.version("frozenlm")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def import_authors(checkpoint: str | Path, task: str, out: str | Path, *, model: str | None = None,
                   lm: str | None = None, config: str | Path | None = None, overrides: Sequence[str] = (),
                   frozen_dtype: str | None = None, weights: str = "model", lm_heads: int | None = None,
                   lm_norm_eps: float | None = None, verbose: bool = True) -> ImportResult:
    """Import an authors' ``checkpoint`` of ``task`` ('image', 'video', 'pointcloud') into the run dir ``out``.

    model: frozenlm model name (default: from the checkpoint's ``args.model`` or shapes).
    lm: the LLaMA source and layer(s), e.g. ``~/llama-7b:31`` (default layer: the authors', 31 for image and
        point cloud, 15 for video); its layer must equal the stored one. None: the stored layer is written to
        ``out/lm`` and used (``lm_heads`` / ``lm_norm_eps`` are needed only if it is not 4096 wide).
    config: the recipe to start from (default: the shipped one for the model; required for point clouds);
        ``overrides`` (``key=value``) apply to it, e.g. data paths.
    frozen_dtype: storage dtype of the frozen block (default float32, as the checkpoint stores it).
    weights: 'model' (default, what the authors evaluate) or 'ema'.
    """
    if task not in TASKS:
        raise ConfigError(f"--task must be one of {TASKS}, got {task!r}")
    if frozen_dtype not in (None, "float32", "bfloat16"):
        raise ConfigError(f"frozen dtype must be float32 or bfloat16, got {frozen_dtype!r}")
    out = Path(out).expanduser()
    _check_out(out)
    ck = read_authors_checkpoint(checkpoint, task, weights)
    where = ck.path
    split = split_state(ck.state, task, where)
    name = model or infer_model_name(task, ck.args, ck.state, where)
    recipe = _recipe(task, name, split.has_lm, config)
    classes = _head_rows(task, split, where)
    created_out = not out.exists()
    try:
        source = layers = canon = lm_cfg = None
        written = False
        if split.has_lm:
            source, layers, canon, lm_cfg, written = _lm_source(task, split, lm, out, where, lm_heads, lm_norm_eps)
            _check_unit_norm(split, lm_cfg.dim, where)
        elif lm is not None:
            raise CheckpointError(f"{where} is a baseline without a LLaMA layer (no llama_dim_mapper*/llama.* keys); "
                                  f"leave out --lm")
        ours = _our_overrides(task, name, classes, split, out, source, layers, frozen_dtype)
        clash = [o for o in overrides if o.split("=", 1)[0].lstrip("+").strip() in ours]
        if clash:
            raise ConfigError(f"import-authors sets {sorted(ours)} from the checkpoint itself; these overrides would "
                              f"change them: {clash} (use --model, --lm, --frozen-dtype)")
        cfg = load_config(recipe, [*overrides, *(f"{k}={_yaml_value(v)}" for k, v in ours.items())],
                          schema_for=task_schema)
        if cfg.task != task:
            raise ConfigError(f"--config {recipe} is a config of task {cfg.task!r}, not {task!r}")
        if task != "pointcloud" and int(cfg.data.num_classes) != classes:
            raise ConfigError(f"the checkpoint's head has {classes} classes but {recipe} has data.num_classes="
                              f"{cfg.data.num_classes}; add data.num_classes={classes}")
        _check_args(task, ck, cfg)
        seed_all(cfg.seed)
        net = get_task(task).build_model(cfg)
        report = _load_weights(net, task, split, where)
        lm_info: dict[str, Any] = {}
        if split.has_lm:
            blocks = net.lm_layer.blocks
            stored = stored_stack(canon, lm_cfg, layers)
            fp32 = blocks if all(p.dtype == torch.float32 for p in blocks.parameters()) else \
                load_blocks(source, layers, dtype=torch.float32)
            hint = (f"The authors' {task} code freezes LLaMA-7B (v1) layer {AUTHORS_LAYER[task]}, read from Meta's "
                    f"consolidated.00.pth: check the path and the layer suffix (--lm /path/to/llama-7b:"
                    f"{AUTHORS_LAYER[task]}); a bfloat16 copy of LLaMA also differs.")
            digest = compare_blocks(stored, fp32, where, f"layer(s) {layers} of {source}", hint)
            # `digest` is what the run's meta.json records (of the block in its storage dtype); the
            # comparison was made in float32
            lm_info = {"source": source, "layers": layers, "digest": net.lm_layer.frozen_digest(),
                       "digest_float32": digest, "dtype": frozen_dtype or "float32",
                       "check": ("the stored layer, written to " + source) if written
                       else "equals the stored layer (same SHA-256 after the q/k row conversion)"}
        meta = {"config": cfg.to_dict(), "epoch": None, "frozenlm_version": _version(),
                "torch_version": torch.__version__, "metrics": {}, "best": None,
                "imported": {"format": ck.format.spec, "checkpoint": str(where), "sha256": _sha256(where),
                             "weights": ck.weights_key, "authors_epoch": ck.epoch, "authors_args": ck.args,
                             "recipe": str(recipe), "lm": lm_info, "extra": ck.extra,
                             "report": {"loaded": len(report.loaded), "dropped": report.dropped}}}
        state = {"step": 0, "imported": True, "note": "imported from an authors' checkpoint: weights only, no "
                 "training state; fine-tune with init_from=THIS_RUN and a new run_dir"}
        step_dir = ckpt.save_checkpoint(out / "checkpoints", 0, net, state, meta, keep_last=1)
        cfg.save(out / "config.yaml")
    except BaseException:
        if not (out / "checkpoints").exists():  # nothing usable was written: leave no half-made LM source
            shutil.rmtree(out / "lm", ignore_errors=True)
        if created_out and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    result = ImportResult(out, step_dir, cfg, report, lm_info)
    if verbose:
        print(result.summary(), file=sys.stderr, flush=True)
    return result
