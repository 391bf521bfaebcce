"""YAML configs: `_base_` inheritance, engine defaults, and `key=value` command-line overrides.

Merge order (later wins): ``DEFAULTS`` <- ``_base_`` files (in order) <- the file <- overrides.
Only a ``yaml.SafeLoader`` is used, so a config can never execute code.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

__all__ = ["Config", "ConfigError", "DEFAULTS", "load_config", "make_config", "apply_overrides", "deep_merge"]

#: Engine keys every config has; tasks add their own ``model`` / ``data`` sections on top.
DEFAULTS: dict[str, Any] = {
    "name": None,  # filled with the config file's stem; used for the default run_dir
    "task": None,
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda
    "run_dir": None,  # default: runs/<name>/<timestamp>
    "epochs": 1,
    "max_steps": None,  # hard cap on optimizer steps (smoke tests); the LR schedule still uses `epochs`
    "batch_size": 64,  # GLOBAL batch per optimizer step (all ranks, all accumulation micro-steps)
    "eval_batch_size": None,  # global; defaults to batch_size
    "accum_steps": 1,
    "repeated_aug": 1,  # DeiT's repeated augmentation (3 in the ImageNet recipe)
    "num_workers": 2,
    "precision": "auto",  # auto | fp32 | bf16 | fp16 (fp16 only on CUDA); auto = bf16 where it is fast
    "optim": {
        "name": "adamw",
        "lr": 5.0e-4,
        "lr_scale_batch": None,  # DeiT rule: lr = lr * batch_size / lr_scale_batch
        "weight_decay": 0.05,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "warmup_epochs": 0,
        "warmup_lr": 1.0e-6,
        "min_lr": 1.0e-5,
        "clip_grad": None,
        "lr_mult": {},  # {name pattern: multiplier}; prefix or substring of the parameter name
        "no_decay_lr_mult": 1.0,  # extra LR multiplier for parameters without weight decay
        "no_weight_decay": ["pos_embed", "cls_token", "dist_token"],
    },
    "ema": {"decay": None, "eval": False},
    "eval_every": 1,  # epochs; 0/null = only at the end
    "eval_split": "val",
    "save_every_steps": None,
    "keep_last": 2,
    "best_metric": None,  # validation metric that picks checkpoints/best; null = the task's primary metric
    "best_mode": None,  # max | min; null = the task's direction (required when best_metric is another metric)
    "log_every": 20,
    "progress": True,
    "resume": "auto",  # auto | null | path to a checkpoint (or run dir)
    "distributed": {"backend": "auto", "find_unused_parameters": False},
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``, a common trap)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no object construction


class ConfigError(ValueError):
    """A config file or override is invalid."""


class Config(dict):
    """A dict with attribute access (``cfg.optim.lr``); nested dicts become ``Config`` too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in list(self.items()):
            dict.__setitem__(self, key, _wrap(value))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}; keys: {sorted(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, _wrap(value))

    def __deepcopy__(self, memo: dict) -> "Config":
        return Config(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists, safe for YAML/JSON."""
        return _unwrap(self)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (reloadable with :func:`load_config`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _wrap(value: Any) -> Any:
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return Config(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``top`` over ``base`` (dicts merge, everything else is replaced)."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Read one file and resolve its ``_base_`` chain (paths relative to the file)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"_base_ cycle: {chain}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = _yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML in {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = deep_merge(merged, _read_yaml(path.parent / base, (*seen, path)))
    return deep_merge(merged, data)


def _dotted_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, Mapping):
            keys.extend(_dotted_keys(v, full + "."))
    return keys


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as safe YAML); ``+key=value`` adds a key."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"malformed override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed override {item!r}: empty key")
        try:
            value = _yaml_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse value of override {item!r}: {e}") from e
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                if not add:
                    _unknown(key, data)
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = node[part]
        if parts[-1] not in node and not add:
            _unknown(key, data)
        node[parts[-1]] = value
    return data


def _unknown(key: str, data: Mapping[str, Any]) -> None:
    close = difflib.get_close_matches(key, _dotted_keys(data), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key {key!r}.{hint} (write +{key}=... to add a new key)")


def make_config(data: Mapping[str, Any], overrides: Iterable[str] = (), name: str | None = None) -> Config:
    """Build a :class:`Config` from a dict: merge ``DEFAULTS`` under it, then apply overrides."""
    merged = deep_merge(DEFAULTS, data)
    merged = apply_overrides(merged, overrides)
    if merged.get("name") is None and name is not None:
        merged["name"] = name
    return Config(merged)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config with its ``_base_`` chain, engine defaults and ``key=value`` overrides."""
    path = Path(path)
    return make_config(_read_yaml(path, ()), overrides, name=path.stem)
