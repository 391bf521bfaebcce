"""`frozenlm train|eval|ablate|sweep|analyze|bench|inspect|plot-motion|sources|models|import-authors|convert-modelnet`:
the command-line front end.

All argument parsing and exit codes live here; every command calls a library function, so the same
work is available from Python. `parse(argv)` only parses (the docs test checks every command the
docs show with it); `main(argv)` parses and runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

COMMANDS = {
    "train": "train CONFIG [key=value ...]",
    "eval": "eval CHECKPOINT [key=value ...]",
    "ablate": "ablate CONFIG --variants none,frozen,mlp,random --seeds 3 [key=value ...]",
    "sweep": "sweep CONFIG --layers all|0:30:3 | --blocks 1,2,4 | --sources a,b --seeds 2 [key=value ...]",
    "analyze": "analyze CHECKPOINT [CHECKPOINT ...] [data=cluttered|imagenet_s] [root=DIR] [out=DIR] [n=64]",
    "bench": "bench [--model vit_small_patch16_224] [--lm llama-7b] [--batch 8] [--authors DIR] [--load] [--ckpt] [--json OUT]",
    "inspect": "inspect SOURCE [--layer N] [--json]",
    "plot-motion": "plot-motion RUN --out FILE [--split val] [--indices 0,1,2]",
    "sources": "sources",
    "models": "models",
    "import-authors": "import-authors CKPT --task image|video|pointcloud [--model NAME] [--lm LLAMA_DIR:31] --out DIR",
    "convert-modelnet": "convert-modelnet DAT OUT [--shape-names FILE]",
}


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises instead of exiting, so `parse` can be used as a checker."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(f"{self.prog}: {message}")


def _train_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm train", description="Train a config (YAML + key=value overrides).")
    p.add_argument("config", help="config YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3")
    return p


def _eval_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm eval", description="Evaluate a checkpoint with its saved config.")
    p.add_argument("checkpoint", help="run dir, checkpoints dir, step dir, a file inside one, or a latest/best pointer")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval_split=test")
    return p


def _ablate_parser() -> argparse.ArgumentParser:
    from .ablate import AXES
    p = _Parser(prog="frozenlm ablate", description="Run a grid of runs and tabulate mean ± std.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    for a, key in AXES.items():
        sep = ";" if a == "layers" else ","
        p.add_argument(f"--{a}", default=None, help=f"'{sep}'-separated values for {key}")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--metric", default="top1")
    p.add_argument("--also", default="", help="','-separated further metrics for summary.md (e.g. per answer type)")
    p.add_argument("--out", default=None, help="output dir (default runs/ablate/<config name>)")
    p.add_argument("--jobs", type=int, default=1, help="grid points trained at once, one process each")
    return p


def _sweep_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm sweep", description="Train one run per LM layer, block count or LM source (x seeds), "
                "plus baseline and random-block controls; tabulate and plot the metric against the choice.")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--layers", default=None, help="all | START:STOP[:STEP] | 3,7,11: one frozen block per layer")
    p.add_argument("--blocks", default=None, help="','-separated block counts, e.g. 1,2,4")
    p.add_argument("--placement", default="last", choices=["last", "spread"],
                   help="for --blocks: the last k layers (contiguous) or k spread from first to last")
    p.add_argument("--sources", default=None, help="','-separated LM sources, each at the config's model.lm.layers")
    p.add_argument("--controls", default="none,random", help="','-separated control variants ('' for none)")
    p.add_argument("--seeds", type=int, default=2, help="number of seeds (0..N-1)")
    p.add_argument("--metric", default=None, help="default: the task's primary metric")
    p.add_argument("--out", default=None, help="output dir (default runs/sweep/<config name>; runs are shared between sweeps there)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    return p


def _analyze_parser() -> argparse.ArgumentParser:
    from .analysis.analyze import __doc__ as doc
    p = _Parser(prog="frozenlm analyze", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="+", help="checkpoints, then key=value options")
    return p


def _bench_parser() -> argparse.ArgumentParser:
    import torch
    from .bench.run import __doc__ as doc
    p = _Parser(prog="frozenlm bench", description=(doc or "").splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224",
                   help="timm ViT name, or 'block' for the LM sandwich alone on --tokens tokens")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--tokens", type=int, default=1568, help="tokens per sample with --model block (1568 = a video clip)")
    p.add_argument("--in-dim", type=int, default=384, help="visual token width with --model block")
    p.add_argument("--lm", default="llama-7b", help="shape preset (llama-7b, llama-13b) or any LM source")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (the best is reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 for frozenlm's configurations")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile of the block")
    p.add_argument("--no-reference", action="store_true", help="skip the eager reference")
    p.add_argument("--authors", default=None, metavar="DIR",
                   help="a checkout of ziqipang/LM4VisualEncoding: also time the authors' vit_llama_* model")
    p.add_argument("--no-step", action="store_true", help="skip the step benchmark")
    p.add_argument("--load", action="store_true", help="measure building a layer from a 13.5 GB 7B-shaped checkpoint")
    p.add_argument("--load-dir", default=None, help="an existing Meta checkpoint dir for --load (default: synthetic)")
    p.add_argument("--layer", type=int, default=31, help="layer read by --load")
    p.add_argument("--tmp", default=None, help="where synthetic checkpoints are written (needs ~14 GB)")
    p.add_argument("--ckpt", action="store_true", help="measure the size of a trained-model checkpoint")
    p.add_argument("--matmul-n", type=int, default=4096, help="size of the square matmul timed as the peak")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    return p


def _inspect_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm inspect",
                description="Architecture of a checkpoint and the tensors of one layer (other layers are not read).")
    p.add_argument("source", help="catalog name (smollm2-135m, minilm-l6), .gguf file, Meta or HF directory")
    p.add_argument("--layer", default="-1", help="layer whose tensors to list (default: -1 = last)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _int_list(text: str) -> list[int]:
    return [int(i) for i in text.split(",") if i.strip()]


def _plot_motion_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm plot-motion", description="PNG of a motion run's predicted and true trajectories.")
    p.add_argument("run", help="run dir or checkpoint dir of a motion run")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--split", default="val")
    p.add_argument("--indices", default="0,1,2,3,4,5", type=_int_list, help="','-separated scenes, one panel each")
    return p


def _import_authors_parser() -> argparse.ArgumentParser:
    from .interop.authors import TASKS
    p = _Parser(prog="frozenlm import-authors",
                description="Turn a checkpoint released by the paper's authors (ziqipang/LM4VisualEncoding) into a "
                            "frozenlm run directory that eval, analyze, load_trained and init_from= accept.")
    p.add_argument("checkpoint", help="the authors' .pth file (DeiT, VideoMAE or Point-BERT format)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, e.g. data.root=/data/imagenet")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--out", required=True, help="run directory to create (must hold no checkpoints yet)")
    p.add_argument("--model", default=None, help="frozenlm model name (default: from the checkpoint's args / shapes)")
    p.add_argument("--lm", default=None, help="LLaMA-7B source and layer, e.g. ~/llama-7b:31 (video: :15); it "
                                              "must equal the stored layer. Default: the stored layer, written to OUT/lm")
    p.add_argument("--config", default=None, help="recipe to start from (default: the shipped one for the model; "
                                                  "required for point clouds, whose split the file does not record)")
    p.add_argument("--frozen-dtype", default=None, choices=("float32", "bfloat16"),
                   help="storage dtype of the frozen block (default float32, as the checkpoint stores it)")
    p.add_argument("--weights", default="model", choices=("model", "ema"), help="the trained weights or model_ema")
    p.add_argument("--lm-heads", type=int, default=None, help="heads of a stored layer that is not 4096 wide")
    p.add_argument("--lm-norm-eps", type=float, default=None, help="RMSNorm eps of a stored layer not 4096 wide")
    return p


def _plain_parser(name: str, description: str) -> Callable[[], argparse.ArgumentParser]:
    return lambda: _Parser(prog=f"frozenlm {name}", description=description)


def _convert_modelnet_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="frozenlm convert-modelnet",
                description="Convert Point-BERT's modelnet40_*_fps.dat (a pickle, read with a numpy-only "
                            "restricted unpickler) into the .npz that data.name=modelnet40_fps reads.")
    p.add_argument("dat", help="Point-BERT's modelnet40_{train,test}_8192pts_fps.dat")
    p.add_argument("out", help="output .npz, e.g. modelnet40_train_8192pts_fps.npz next to it")
    p.add_argument("--shape-names", default=None,
                   help="class names file (default: modelnet40_shape_names.txt next to DAT, else the standard 40)")
    return p


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "train": _train_parser, "eval": _eval_parser, "ablate": _ablate_parser, "sweep": _sweep_parser, "analyze": _analyze_parser,
    "bench": _bench_parser, "inspect": _inspect_parser, "plot-motion": _plot_motion_parser,
    "sources": _plain_parser("sources", "Named offline sources."),
    "models": _plain_parser("models", "Registered model names."),
    "import-authors": _import_authors_parser, "convert-modelnet": _convert_modelnet_parser,
}


def parse(argv: Sequence[str]) -> tuple[str, argparse.Namespace]:
    """(command, parsed arguments) for ``argv`` (without the program name); ValueError if it does not parse."""
    if not argv or argv[0] not in PARSERS:
        raise ValueError(f"unknown command {argv[0]!r}" if argv else "no command given")
    p = PARSERS[argv[0]]()
    # intermixed: key=value overrides may follow the flags (`ablate CONFIG --seeds 3 epochs=1`)
    return argv[0], p.parse_intermixed_args(list(argv[1:]))


# -- commands -----------------------------------------------------------------------------------
def _print_metrics(prefix: str, metrics: Mapping[str, Any]) -> None:
    """One `key=value` line on rank 0 (what train/eval show at the end)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(prefix + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
              flush=True)


def _exit_if_distributed() -> None:
    # See engine.distributed.shutdown_distributed: skipping interpreter teardown avoids a gloo abort at exit.
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(0)


def main_train(argv: Sequence[str]) -> dict[str, float]:
    """``CONFIG [key=value ...]``: load the config (keys checked against the task), train, print the metrics."""
    from .config import load_config
    from .engine.task import task_schema
    from .engine.train import train
    _, a = parse(["train", *argv])
    metrics = train(load_config(a.config, a.overrides, schema_for=task_schema))
    _print_metrics("final ", metrics)
    _exit_if_distributed()
    return metrics


def main_eval(argv: Sequence[str]) -> dict[str, float]:
    """``CHECKPOINT [key=value ...]``: evaluate and print the metrics."""
    from .engine.evaluation import evaluate
    _, a = parse(["eval", *argv])
    metrics = evaluate(a.checkpoint, a.overrides)
    _print_metrics("", metrics)
    _exit_if_distributed()
    return metrics


def main_ablate(argv: Sequence[str]) -> dict:
    """``CONFIG --variants ... --seeds N [key=value ...]``: train the grid and write the summary."""
    from .ablate import AXES, ablate
    _, a = parse(["ablate", *argv])
    axes = {k: [v.strip() for v in getattr(a, k).split(";" if k == "layers" else ",") if v.strip()]
            for k in AXES if getattr(a, k)}
    also = [m.strip() for m in a.also.split(",") if m.strip()]
    return ablate(a.config, axes, a.seeds, a.overrides, a.out, a.metric, also, a.jobs)


def main_sweep(argv: Sequence[str]) -> dict:
    """``CONFIG --layers SPEC | --blocks K,... | --sources S,... [key=value ...]``: train the sweep and plot it."""
    from .sweep import plan, sweep
    _, a = parse(["sweep", *argv])
    kind, choices, sets = plan(a.config, a.overrides, a.layers, a.blocks, a.placement, a.sources)
    controls = [c.strip() for c in a.controls.split(",") if c.strip()]
    return sweep(a.config, kind, choices, a.seeds, a.overrides, controls, a.metric, a.out, a.jobs, sets)


def main_analyze(argv: Sequence[str]) -> dict[str, dict[str, float]]:
    """``CHECKPOINT [CHECKPOINT ...] [key=value ...]``: information-filtering maps and mIoU tables."""
    from .analysis.analyze import analyze, parse_options
    _, a = parse(["analyze", *argv])
    ckpts, opts = parse_options(a.items)
    return analyze(ckpts, opts)


def main_bench(argv: Sequence[str]) -> dict[str, Any]:
    """``[--model ...] [--lm ...]``: speed, memory, load time and checkpoint size (docs/performance.md)."""
    from .bench.run import run_bench
    _, a = parse(["bench", *argv])
    return run_bench(a)


def main_inspect(argv: Sequence[str]) -> dict[str, Any]:
    """``SOURCE [--layer N] [--json]``: architecture and one layer's tensors, with warnings for mismatches."""
    from .lm import describe_source
    _, a = parse(["inspect", *argv])
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
        return info
    for k, v in info.items():
        if k not in ("tensors", "problems"):
            print(f"{k:>16}: {v}")
    print(f"tensors of layer {info['layer']}:")
    for t in info["tensors"]:
        print(f"  {t['name']:<48} {str(tuple(t['shape'])):<16} {t['dtype']}")
    print(f"{'check':>16}: " + (f"{len(problems)} tensor(s) disagree with the config (see the warnings)"
                                 if problems else "every tensor of this layer matches the config"))
    return info


def main_plot_motion(argv: Sequence[str]) -> str:
    """``RUN --out FILE [--split val] [--indices 0,1,2]``: plot a trained motion model's predictions."""
    from .analysis.motion_plot import plot_run
    _, a = parse(["plot-motion", *argv])
    out = plot_run(a.run, a.out, a.split, a.indices)
    print(f"wrote {out}")
    return str(out)


def main_sources(argv: Sequence[str]) -> None:
    """List the catalog's offline sources."""
    from .lm.catalog import catalog_table
    parse(["sources", *argv])
    for row in catalog_table():
        print(f"{row['name']:<14} {'installed' if row['installed'] else 'missing  '}  {row['description']}")
    print("any local path also works: a .gguf file, a Meta dir (params.json), or a Hugging Face dir (config.json)")


def main_models(argv: Sequence[str]) -> None:
    """List the registered model names."""
    from .models import list_models
    parse(["models", *argv])
    print("\n".join(list_models()))
    print("(plus every timm vit_*/deit_* name, e.g. vit_small_patch16_224, and timm:<any timm model> with model.lm.at)")


def main_import_authors(argv: Sequence[str]) -> str:
    """``CKPT --task T --out DIR [--lm SRC:L] [key=value ...]``: import an authors' released checkpoint."""
    from .interop import import_authors
    _, a = parse(["import-authors", *argv])
    result = import_authors(a.checkpoint, a.task, a.out, model=a.model, lm=a.lm, config=a.config,
                            overrides=a.overrides, frozen_dtype=a.frozen_dtype, weights=a.weights,
                            lm_heads=a.lm_heads, lm_norm_eps=a.lm_norm_eps, verbose=False)
    print(result.summary())
    print(f"evaluate: frozenlm eval {result.run_dir} [data.root=...]")
    return str(result.step_dir)


def main_convert_modelnet(argv: Sequence[str]) -> dict[str, Any]:
    """``DAT OUT [--shape-names FILE]``: convert one Point-BERT ModelNet .dat into a safe .npz."""
    from .data.modelnet_dat import convert_modelnet_dat
    _, a = parse(["convert-modelnet", *argv])
    info = convert_modelnet_dat(a.dat, a.out, a.shape_names)
    print(f"wrote {info['out']}: {info['clouds']} clouds x {info['points']} points, {info['classes']} classes")
    return info


RUN: dict[str, Callable[[Sequence[str]], Any]] = {
    "train": main_train, "eval": main_eval, "ablate": main_ablate, "sweep": main_sweep, "analyze": main_analyze, "bench": main_bench,
    "inspect": main_inspect, "plot-motion": main_plot_motion, "sources": main_sources, "models": main_models,
    "import-authors": main_import_authors, "convert-modelnet": main_convert_modelnet,
}




def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `frozenlm` console script (also `python -m frozenlm.cli`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage:\n" + "\n".join(f"  frozenlm {u}" for u in COMMANDS.values())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in RUN:
        print(usage, file=sys.stderr)
        print(f"error: unknown command {cmd!r}", file=sys.stderr)
        sys.exit(2)
    if rest and rest[0] in ("-h", "--help"):
        PARSERS[cmd]().print_help()
        return
    try:
        RUN[cmd](rest)
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError, RuntimeError, ImportError) as e:
        # Known bad-input errors: one clear line, not a traceback (FROZENLM_DEBUG=1 shows it).
        if os.environ.get("FROZENLM_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"frozenlm {cmd}: error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
