"""YAML configs: `_base_` inheritance, engine defaults, and `key=value` command-line overrides.

Merge order (later wins): ``DEFAULTS`` <- ``_base_`` files (in order) <- the file <- overrides.
Only a ``yaml.SafeLoader`` is used, so a config can never execute code.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from .errors import ConfigError

__all__ = ["Config", "ConfigError", "DEFAULTS", "KeySchema", "load_config", "make_config", "apply_overrides",
           "deep_merge", "check_keys", "check_types", "engine_schema", "section", "validate_config"]

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
        "schedule": "cosine",  # cosine (warmup, then cosine to min_lr) | step (x gamma at each milestone epoch)
        "milestones": [],  # step schedule: epochs at which the LR is multiplied by gamma
        "gamma": 0.1,
        "lr_mult": {},  # {name pattern: multiplier}; prefix or substring of the parameter name
        "no_decay_lr_mult": 1.0,  # extra LR multiplier for parameters without weight decay
        "no_weight_decay": ["pos_embed", "cls_token", "dist_token"],
    },
    "ema": {"decay": None, "eval": False},
    "eval_every": 1,  # epochs; 0 = only at the end; null = never evaluate (no validation set is built)
    "eval_split": "val",
    "save_every_steps": None,
    "keep_last": 2,
    "best_metric": None,  # validation metric that picks checkpoints/best; null = the task's primary metric
    "best_mode": None,  # max | min; null = the task's direction (required when best_metric is another metric)
    "log_every": 20,
    "progress": True,
    "resume": "auto",  # auto | null | path to a checkpoint (or run dir)
    "init_from": None,  # a frozenlm checkpoint whose weights (only: no optimizer, step or RNG) start a new run
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


def _read_yaml(path: Path, seen: tuple[Path, ...], files: list | None = None) -> dict[str, Any]:
    """Read one file and resolve its ``_base_`` chain (paths relative to the file); ``files``
    collects (path, the file's own keys) for every file of the chain."""
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
        merged = deep_merge(merged, _read_yaml(path.parent / base, (*seen, path), files))
    if files is not None:
        files.append((path, data))
    return deep_merge(merged, data)


def _dotted_keys(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, Mapping):
            keys.extend(_dotted_keys(v, full + "."))
    return keys


class KeySchema:
    """The dotted keys a config may hold, as a tree.

    A node without children is a leaf: any value (a mapping too) is accepted there. A node with
    children accepts only those, plus any key when it has a ``*`` child (an open mapping such as
    ``optim.lr_mult``). Keys are names only, never defaults: for many keys "absent" and "null"
    mean different things to the code that reads them.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self.tree: dict[str, Any] = {}
        self.add(keys)

    def add(self, keys: Iterable[str]) -> "KeySchema":
        """Declare more dotted keys (``a.b``; ``a.*`` opens the mapping ``a``)."""
        for key in keys:
            node = self.tree
            for part in key.split("."):
                node = node.setdefault(part, {})
        return self

    def allows(self, key: str) -> bool:
        """Whether the dotted ``key`` may appear in a config."""
        node = self.tree
        for part in key.split("."):
            if not node:  # a leaf: anything below it is the value's own business
                return True
            if part in node:
                node = node[part]
            elif "*" in node:
                return True
            else:
                return False
        return True

    def keys(self) -> list[str]:
        """Every declared dotted key (for did-you-mean suggestions)."""
        out: list[str] = []

        def walk(node: dict, prefix: str) -> None:
            for k, v in node.items():
                if k != "*":
                    out.append(prefix + k)
                    walk(v, prefix + k + ".")
        walk(self.tree, "")
        return out


def section(prefix: str, *names: str) -> tuple[str, ...]:
    """Dotted keys ``prefix.name`` for each name (a task's declaration of one config section)."""
    return tuple(f"{prefix}.{n}" for n in names)


def engine_schema() -> KeySchema:
    """The engine's own keys (every key of ``DEFAULTS``); ``optim.lr_mult`` is an open mapping."""
    return KeySchema(_dotted_keys(DEFAULTS)).add(["optim.lr_mult.*"])


def check_keys(data: Mapping[str, Any], schema: KeySchema) -> list[str]:
    """Dotted keys of ``data`` that ``schema`` does not allow (the outermost unknown key of each branch)."""
    bad: list[str] = []

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            full = f"{prefix}{k}"
            if not schema.allows(full):
                bad.append(full)
            elif isinstance(v, Mapping):
                walk(v, full + ".")
    walk(data, "")
    return bad


def unknown_keys_message(bad: Sequence[str], schema: KeySchema, where: str, task: Any = None) -> str:
    """One error text for unknown keys, with close matches for each."""
    known = schema.keys()
    lines = []
    for key in bad:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        lines.append(f"  {key}" + (f"  (did you mean: {', '.join(close)}?)" if close else ""))
    owner = f"task {task!r}" if task else "the engine"
    return (f"{where}: unknown config key{'s' if len(bad) > 1 else ''}, read by neither the engine nor {owner}:\n"
            + "\n".join(lines) + "\nRemove or rename them (a key nobody reads would be silently ignored).")


# Engine keys whose default is not null but that may be set to null on purpose.
_NULLABLE = {"resume", "eval_every", "repeated_aug", "progress"}


def check_types(cfg: Mapping[str, Any]) -> None:
    """Refuse engine values of the wrong kind (``optim=5``, ``optim.lr=abc``) with the key named,
    before they turn into an AttributeError or a TypeError deep inside torch."""
    def kind(v: Any) -> str:
        if isinstance(v, bool):
            return "a boolean (true/false)"
        if isinstance(v, (int, float)):
            return "a number"
        if isinstance(v, str):
            return "a string"
        if isinstance(v, (list, tuple)):
            return "a list"
        if isinstance(v, Mapping):
            return "a mapping (a section of keys)"
        return type(v).__name__

    def walk(default: Mapping[str, Any], value: Mapping[str, Any], prefix: str) -> None:
        for k, d in default.items():
            if k not in value:
                continue
            full, v = f"{prefix}{k}", value[k]
            if d is None or (v is None and full in _NULLABLE):
                continue
            if isinstance(d, Mapping) and isinstance(v, Mapping):
                if d:  # an empty default is an open mapping
                    walk(d, v, full + ".")
                continue
            if kind(d) != kind(v):
                raise ConfigError(f"config key {full} must be {kind(d)} (default {d!r}), got {v!r}")
    walk(DEFAULTS, cfg, "")


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], schema: KeySchema | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (value parsed as safe YAML).

    A key must already be in ``data`` or be declared by ``schema``. ``+key=value`` adds any key;
    it is meant for tasks that declare no schema (user tasks), since a declared key needs no ``+``.
    """
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
        declared = schema is not None and schema.allows(key)
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            if part not in node or node[part] is None:
                if not (add or declared):
                    _unknown(key, data, schema)
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is {node[part]!r}, not a section "
                                  f"of keys, so it has no {parts[i + 1]!r}")
            node = node[part]
        if parts[-1] not in node and not (add or declared):
            _unknown(key, data, schema)
        node[parts[-1]] = value
    return data


def _unknown(key: str, data: Mapping[str, Any], schema: KeySchema | None = None) -> None:
    known = set(_dotted_keys(data)) | set(schema.keys() if schema is not None else ())
    close = difflib.get_close_matches(key, sorted(known), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    extra = "" if schema is not None else f" (write +{key}=... to add a new key)"
    raise ConfigError(f"unknown config key {key!r}.{hint}{extra}")


def validate_config(cfg: Config, world_size: int = 1) -> None:
    """Clear errors for engine settings that cannot work (before any expensive work starts)."""
    if not cfg.get("task"):
        raise ConfigError("config has no `task:` (e.g. task: image)")
    for key in ("batch_size", "accum_steps", "keep_last", "log_every"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    bs, acc = cfg.batch_size, cfg.accum_steps
    if bs % (world_size * acc):
        raise ConfigError(f"batch_size {bs} (global) must be divisible by world_size x accum_steps = "
                          f"{world_size} x {acc} = {world_size * acc}")
    if not (isinstance(cfg.epochs, (int, float)) and cfg.epochs > 0):
        raise ConfigError(f"epochs must be > 0, got {cfg.epochs!r}")
    if cfg.max_steps is not None and (not isinstance(cfg.max_steps, int) or cfg.max_steps < 1):
        raise ConfigError(f"max_steps must be a positive integer or null, got {cfg.max_steps!r}")
    if cfg.save_every_steps is not None and (not isinstance(cfg.save_every_steps, int) or cfg.save_every_steps < 1):
        raise ConfigError(f"save_every_steps must be a positive integer or null, got {cfg.save_every_steps!r}")
    if cfg.best_mode not in ("max", "min", None):
        raise ConfigError(f"best_mode must be max, min or null (the task's direction), got {cfg.best_mode!r}")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {cfg.num_workers}")


SchemaFor = Callable[[Any], "KeySchema | None"]


def make_config(data: Mapping[str, Any], overrides: Iterable[str] = (), name: str | None = None,
                schema: KeySchema | None = None) -> Config:
    """Build a :class:`Config` from a dict: merge ``DEFAULTS`` under it, then apply overrides
    (checked against ``schema`` when given) and check the engine values' types."""
    merged = deep_merge(DEFAULTS, data)
    merged = apply_overrides(merged, overrides, schema)
    if merged.get("name") is None and name is not None:
        merged["name"] = name
    check_types(merged)
    return Config(merged)


def load_config(path: str | Path, overrides: Iterable[str] = (), schema_for: SchemaFor | None = None) -> Config:
    """Load a YAML config with its ``_base_`` chain, engine defaults and ``key=value`` overrides.

    With ``schema_for`` (task name -> :class:`KeySchema`, as ``frozenlm.engine.task.task_schema``
    gives), every file of the chain and every override is checked: an unknown key is an error that
    names the file, the key and the closest known keys.
    """
    path = Path(path)
    files: list[tuple[Path, dict[str, Any]]] = []
    data = _read_yaml(path, (), files)
    overrides = list(overrides)
    task = next((o.split("=", 1)[1].strip() for o in overrides if o.lstrip("+").split("=", 1)[0].strip() == "task"),
                data.get("task"))  # `task=...` on the command line picks the schema the files must meet
    schema = schema_for(task) if schema_for is not None else None
    if schema is not None:
        for file, own in files:
            bad = check_keys(own, schema)
            if bad:
                raise ConfigError(unknown_keys_message(bad, schema, str(file), task))
    return make_config(data, overrides, name=path.stem, schema=schema)
