"""`frozenlm train|eval|ablate|analyze|inspect|sources|models ...` — the command-line front end."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence


def _inspect(argv: Sequence[str]) -> None:
    from .lm import describe_source
    p = argparse.ArgumentParser(prog="frozenlm inspect",
                                description="Architecture of a checkpoint and the tensors of one layer "
                                            "(other layers are not read).")
    p.add_argument("source", help="catalog name (smollm2-135m, minilm-l6), .gguf file, Meta or HF directory")
    p.add_argument("--layer", default="-1", help="layer whose tensors to list (default: -1 = last)")
    p.add_argument("--json", action="store_true", help="print JSON")
    a = p.parse_args(argv)
    info = describe_source(a.source, int(a.layer))
    problems = info.get("problems", [])
    if problems:
        # stderr in both modes: --json stdout stays parseable, and a script still sees the file is broken.
        print(f"warning: {len(problems)} tensor(s) of layer {info['layer']} disagree with the config "
              f"(dim={info['dim']}, heads={info['heads']}, kv_heads={info['kv_heads']}, ffn_dim={info['ffn_dim']}); "
              f"loading this layer will fail:", file=sys.stderr)
        for pr in problems:
            print(f"warning:   {pr['message']}", file=sys.stderr)
    if a.json:
        print(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k not in ("tensors", "problems"):
            print(f"{k:>16}: {v}")
    print(f"tensors of layer {info['layer']}:")
    for t in info["tensors"]:
        print(f"  {t['name']:<48} {str(tuple(t['shape'])):<16} {t['dtype']}")
    print(f"{'check':>16}: " + (f"{len(problems)} tensor(s) disagree with the config (see the warnings)"
                                 if problems else "every tensor of this layer matches the config"))


def _sources(argv: Sequence[str]) -> None:
    from .lm.catalog import catalog_table
    argparse.ArgumentParser(prog="frozenlm sources", description="Named offline sources.").parse_args(argv)
    for row in catalog_table():
        print(f"{row['name']:<14} {'installed' if row['installed'] else 'missing  '}  {row['description']}")
    print("any local path also works: a .gguf file, a Meta dir (params.json), or a Hugging Face dir (config.json)")


def _models(argv: Sequence[str]) -> None:
    from .models import list_models
    argparse.ArgumentParser(prog="frozenlm models", description="Registered model names.").parse_args(argv)
    print("\n".join(list_models()))
    print("(plus every timm vit_*/deit_* name, e.g. vit_small_patch16_224)")


COMMANDS = {
    "train": "train CONFIG [key=value ...]",
    "eval": "eval CHECKPOINT [key=value ...]",
    "ablate": "ablate CONFIG --variants none,frozen,mlp,random --seeds 3 [key=value ...]",
    "analyze": "analyze CHECKPOINT [CHECKPOINT ...] [data=cluttered|imagenet_s] [root=DIR] [out=DIR] [n=64]",
    "bench": "bench [--model vit_small_patch16_224] [--lm llama-7b] [--batch 8] [--load] [--ckpt] [--json OUT]",
    "inspect": "inspect SOURCE [--layer N] [--json]",
    "sources": "sources",
    "models": "models",
}


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `frozenlm` console script (also `python -m frozenlm.cli`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "\n".join(f"  frozenlm {u}" for u in COMMANDS.values())
        print(f"usage:\n{usage}", file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            from .engine.train import main_train
            main_train(rest)
        elif cmd == "eval":
            from .engine.train import main_eval
            main_eval(rest)
        elif cmd == "ablate":
            from .ablate import main_ablate
            main_ablate(rest)
        elif cmd == "analyze":
            from .analysis.cli import main_analyze
            main_analyze(rest)
        elif cmd == "bench":
            from .bench.run import main_bench
            main_bench(rest)
        elif cmd == "inspect":
            _inspect(rest)
        elif cmd == "sources":
            _sources(rest)
        else:
            _models(rest)
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError, RuntimeError) as e:
        # Known bad-input errors: one clear line, not a traceback (FROZENLM_DEBUG=1 shows it).
        if os.environ.get("FROZENLM_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"frozenlm {cmd}: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
