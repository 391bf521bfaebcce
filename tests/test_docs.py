"""The docs stay true (issue 16): every `frozenlm ...` command in a code block of README.md or docs/*.md
parses, every config path they name exists, and every `key=value` override they show names a key
the engine or a task reads."""
from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest

from frozenlm.cli import PARSERS, parse
from frozenlm.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
CONFIG_PATH = re.compile(r"configs/[\w./-]+\.yaml")
INLINE = re.compile(r"`([^`\n]+)`")
DOTTED_OVERRIDE = re.compile(r"^\+?[a-z_]+(?:\.[a-z_0-9]+)+=\S*$")
# A synopsis, not a command: `frozenlm analyze CHECKPOINT [CHECKPOINT ...] [out=DIR]`.
USAGE = re.compile(r"\[[^\]]*\]")
COMMAND_NAMES = set(PARSERS)


def _commands() -> list[tuple[str, int, list[str]]]:
    """(doc, line, argv after `frozenlm`) for every frozenlm command in a fenced code block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            start = text[:block.start()].count("\n") + 2
            lines = block.group(1).replace("\\\n", " ").splitlines()
            for i, line in enumerate(lines):
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                line = USAGE.sub("", line)
                for part in re.split(r"\s(?:\||&&|;)\s", line):
                    try:
                        tokens = shlex.split(part)
                    except ValueError:
                        continue
                    argv = _frozenlm_argv(tokens)
                    if argv is not None:
                        found.append((doc.name, start + i, argv))
        fenced = [range(b.start(), b.end()) for b in FENCE.finditer(text)]
        for m in INLINE.finditer(text):  # `frozenlm CMD ARG ...` written inline in the prose
            words = m.group(1).split()
            if (len(words) >= 3 and words[0] == "frozenlm" and words[1] in COMMAND_NAMES
                    and not any(m.start() in r for r in fenced)):
                found.append((doc.name, text[:m.start()].count("\n") + 1, shlex.split(USAGE.sub("", m.group(1)))[1:]))
    return found


def _frozenlm_argv(tokens: list[str]) -> list[str] | None:
    for j, t in enumerate(tokens):
        if t == "frozenlm" and j + 1 < len(tokens) and not tokens[j + 1].startswith("."):
            return tokens[j + 1:]
        if t == "-m" and j + 1 < len(tokens) and tokens[j + 1] == "frozenlm.cli":
            return tokens[j + 2:]
    return None


COMMANDS = _commands()


def test_the_docs_show_commands_of_every_kind():
    kinds = {argv[0] for _, _, argv in COMMANDS}
    assert {"train", "eval", "ablate", "analyze", "bench", "inspect"} <= kinds, kinds
    assert len(COMMANDS) >= 40


def _schema_for():
    from frozenlm.engine.task import task_schema
    return task_schema


def _any_task_allows(key: str) -> bool:
    from frozenlm.engine.task import BUILTIN_TASKS, task_schema
    return any(task_schema(t).allows(key.lstrip("+")) for t in BUILTIN_TASKS)


@pytest.mark.parametrize("doc,line,argv", COMMANDS, ids=[f"{d}:{n}" for d, n, _ in COMMANDS])
def test_documented_command_parses_and_names_real_keys(doc, line, argv):
    cmd, a = parse(argv)
    if cmd in ("train", "ablate"):
        config = REPO / a.config
        if a.config.startswith("configs/"):
            assert config.is_file(), f"{doc}:{line}: {a.config} does not exist"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    load_config(config, a.overrides, schema_for=_schema_for())
                except ConfigError as e:
                    pytest.fail(f"{doc}:{line}: {' '.join(argv)}: {e}")
        else:  # a placeholder config: the overrides must still be keys somebody reads
            bad = [o for o in a.overrides if not _any_task_allows(o.split("=", 1)[0])]
            assert not bad, f"{doc}:{line}: unknown keys {bad}"
    elif cmd == "eval":
        bad = [o for o in a.overrides if not _any_task_allows(o.split("=", 1)[0])]
        assert not bad, f"{doc}:{line}: unknown keys {bad}"
    elif cmd == "analyze":
        from frozenlm.analysis.analyze import parse_options
        parse_options(a.items)


def test_every_config_path_in_the_docs_exists():
    missing = []
    for doc in DOCS:
        for m in CONFIG_PATH.finditer(doc.read_text()):
            if not (REPO / m.group(0)).is_file():
                missing.append(f"{doc.name}: {m.group(0)}")
    assert not missing, missing


def test_every_inline_override_names_a_real_key():
    bad = []
    for doc in DOCS:
        for m in INLINE.finditer(doc.read_text()):
            for tok in m.group(1).split():
                if DOTTED_OVERRIDE.match(tok) and not _any_task_allows(tok.split("=", 1)[0]):
                    bad.append(f"{doc.name}: {tok}")
    assert not bad, bad


def test_readme_snippet_names_work_after_a_bare_import():
    # README: `frozenlm.models.create_model(...)` and `frozenlm.load_trained(...)` right after `import frozenlm`.
    import subprocess
    import sys
    code = ("import frozenlm; print(frozenlm.models.create_model.__name__, frozenlm.load_trained.__name__, "
            "frozenlm.LMLayer.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["create_model", "load_trained", "LMLayer"], out.stderr
