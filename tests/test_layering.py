"""Dependencies point one way (issue 17): no module of frozenlm imports from a higher layer.

The layer table is read from docs/architecture.md, so the documented layering and the checked one
cannot drift apart. Every import counts (module- and function-level; relative ones resolved first).
A failure lists each offending import as ``file:line: imports <module> ...``.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
FACADE = "frozenlm/__init__.py"
REGISTRY = "frozenlm/engine/task.py"  # holds BUILTIN_TASKS, the engine's only way to a task


@dataclass(frozen=True)
class Table:
    """The documented layering: table path ("frozenlm/lm/" or "frozenlm/config.py") -> layer."""

    layers: dict[str, int]
    isolated: tuple[frozenset[str], ...]  # groups of paths whose members never import each other
    rows: dict[int, str]  # the row text of each layer

    def layer_of(self, rel: str) -> tuple[int, str] | None:
        """(layer, table path) of a file path relative to the repo; the most specific path wins."""
        hits = [p for p in self.layers if rel == p or (p.endswith("/") and rel.startswith(p))]
        if not hits:
            return None
        best = max(hits, key=len)
        return self.layers[best], best


def read_table(doc: Path) -> Table:
    """Parse the `| layer | contents |` table of ``doc``."""
    lines = doc.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(r"^\|\s*layer\s*\|", ln)), None)
    if start is None:
        raise AssertionError(f"{doc}: no '| layer | contents |' table")
    layers: dict[str, int] = {}
    isolated, rows = [], {}
    for ln in lines[start + 2:]:
        m = re.match(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", ln)
        if not m:
            break
        layer, text = int(m.group(1)), m.group(2)
        paths = re.findall(r"frozenlm/[\w/]*?(?:\w+\.py|/)(?=[`\s,)]|$)", text)
        if not paths:
            raise AssertionError(f"{doc}: layer {layer} names no frozenlm/ path: {ln!r}")
        for p in paths:
            if p in layers:
                raise AssertionError(f"{doc}: {p} is in layers {layers[p]} and {layer}")
            layers[p] = layer
        if "never import each other" in text:
            isolated.append(frozenset(paths))
        rows[layer] = text
    if sorted(rows) != list(range(len(rows))):
        raise AssertionError(f"{doc}: layers must be numbered 0, 1, 2, ... in order; got {list(rows)}")
    return Table(layers, tuple(isolated), rows)


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    file: str  # importer, relative to the root
    line: int
    module: str  # dotted name of what it imports
    path: str  # the target's file path ("frozenlm/a/b.py", "frozenlm/a/__init__.py") or a guess
    toplevel: bool  # runs when the module is imported (not inside a function)


def _module_path(root: Path, module: str) -> str | None:
    base = module.replace(".", "/")
    for rel in (f"{base}.py", f"{base}/__init__.py"):
        if (root / rel).is_file():
            return rel
    return None


def _literal_module(call: ast.Call) -> str | None:
    """The module an ``importlib.import_module(...)`` / ``__import__(...)`` call names in its source:
    a string, or the constant start of an f-string (``f"frozenlm.tasks.{name}"`` -> frozenlm.tasks)."""
    fn = call.func
    if (fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")) not in ("import_module", "__import__"):
        return None
    arg = call.args[0] if call.args else None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".") or None
    return None  # a name only known at run time (the registry's strings, third-party packages)


def package_imports(root: Path) -> list[Import]:
    """Every import of ``frozenlm`` modules in ``root/frozenlm/**/*.py``, wherever in the file it is,
    including modules named literally in an ``importlib.import_module`` call."""
    out = []
    for f in sorted((root / "frozenlm").rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        pkg = rel[:-3].split("/")[:-1]  # the package relative imports start from
        tree = ast.parse(f.read_text(), filename=rel)
        deferred = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                    for n in ast.walk(fn) if n is not fn}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Call) and _literal_module(node):
                names = [_literal_module(node)]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if node.level > len(pkg):
                        raise AssertionError(f"{rel}:{node.lineno}: relative import above the package")
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from a import b`: b is the target when it is a module, else a is
                names = [f"{base}.{a.name}" if _module_path(root, f"{base}.{a.name}") else base for a in node.names]
            for name in dict.fromkeys(names):
                if name == "frozenlm" or name.startswith("frozenlm."):
                    path = _module_path(root, name) or name.replace(".", "/") + ".py"
                    out.append(Import(rel, node.lineno, name, path, id(node) not in deferred))
    return out


def builtin_task_modules(root: Path) -> set[str]:
    """The modules BUILTIN_TASKS (a dict literal of "module:Class" strings in engine/task.py) names."""
    tree = ast.parse((root / REGISTRY).read_text())
    for node in ast.walk(tree):
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "BUILTIN_TASKS" and isinstance(node.value, ast.Dict):
            return {v.value.split(":")[0] for v in node.value.values if isinstance(v, ast.Constant)}
    raise AssertionError(f"{REGISTRY}: no BUILTIN_TASKS dict literal")


def violations(root: Path, table: Table) -> list[str]:
    """Every import that breaks the documented layering, one message per import."""
    out = []
    task_modules = builtin_task_modules(root)
    for imp in package_imports(root):
        where = f"{imp.file}:{imp.line}: imports {imp.module}"
        if imp.file == FACADE:
            facade_layer = table.layer_of(imp.path)
            if imp.toplevel and facade_layer is not None and facade_layer[0] > 1:
                out.append(f"{where} at import time: every `import frozenlm.x` runs the facade first, so it "
                           f"imports only layers 0-1 eagerly and the rest inside functions")
            continue
        if imp.path == FACADE:
            out.append(f"{where}, the package facade (frozenlm/__init__.py re-exports every layer); "
                       f"import from the module that defines the name")
            continue
        src, dst = table.layer_of(imp.file), table.layer_of(imp.path)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_layer
        if dst[0] > src[0]:
            out.append(f"{where} (layer {dst[0]}, {dst[1]}) from layer {src[0]} ({src[1]})")
        elif dst[1] != src[1] and any({src[1], dst[1]} <= group for group in table.isolated):
            out.append(f"{where}: {src[1]} and {dst[1]} never import each other")
        elif src[1] == "frozenlm/engine/" and (imp.module in task_modules or imp.module == "frozenlm.tasks"):
            out.append(f"{where}, a task: the engine knows tasks only through BUILTIN_TASKS (\"module:Class\" strings)")
    return out


def _report(found: list[str]) -> str:
    return f"{len(found)} import(s) break the layering of docs/architecture.md:\n  " + "\n  ".join(found)


@pytest.fixture(scope="module")
def table() -> Table:
    return read_table(DOC)


def test_the_table_has_every_layer_and_its_rules(table: Table) -> None:
    assert sorted(set(table.layers.values())) == list(range(7))
    assert frozenset({"frozenlm/models/", "frozenlm/data/"}) in table.isolated
    assert "BUILTIN_TASKS" in table.rows[table.layers["frozenlm/engine/"]]  # the rule violations() applies


def test_every_module_has_a_layer(table: Table) -> None:
    files = sorted(f.relative_to(REPO).as_posix() for f in (REPO / "frozenlm").rglob("*.py"))
    unplaced = [f for f in files if f != FACADE and table.layer_of(f) is None]
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"


def test_no_import_breaks_the_layering(table: Table) -> None:
    found = violations(REPO, table)
    assert not found, _report(found)


def test_tasks_draw_no_figures() -> None:
    found = [f"{f.relative_to(REPO)}:{n.lineno}" for f in sorted((REPO / "frozenlm" / "tasks").rglob("*.py"))
             for n in ast.walk(ast.parse(f.read_text()))
             if isinstance(n, (ast.Import, ast.ImportFrom))
             and any(m.split(".")[0] == "matplotlib"
                     for m in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]))]
    assert not found, f"plotting belongs in frozenlm/analysis/, not in tasks: {found}"


PLANTED = {
    "frozenlm/__init__.py": "from .layer import LMLayer\nfrom .engine import train\n\ndef f():\n    from .cli import main\n",
    "frozenlm/config.py": "",
    "frozenlm/lm/__init__.py": "",
    "frozenlm/lm/block.py": "def f():\n    from frozenlm.layer import LMLayer\n",  # function-level, upward
    "frozenlm/lm/catalog.py": "import importlib\nimportlib.import_module(PKG)\n",  # a third-party name: fine
    "frozenlm/layer.py": "from .lm import block\n",  # downward: fine
    "frozenlm/models/__init__.py": "",
    "frozenlm/models/vit.py": "import torch\nfrom ..data import image\n",  # sibling models -> data
    "frozenlm/data/__init__.py": "",
    "frozenlm/data/image.py": "from frozenlm import LMLayer\n",  # the facade
    "frozenlm/tasks/__init__.py": "",
    "frozenlm/tasks/base.py": "",
    "frozenlm/tasks/image.py": "from ..models import vit\nfrom ..engine.train import train\n",  # 2nd: upward
    "frozenlm/engine/__init__.py": "",
    # the protocol is fine, a task module is not
    "frozenlm/engine/train.py": "from frozenlm.tasks.base import Task\nfrom frozenlm.tasks import image\n",
    "frozenlm/engine/task.py": "import importlib\nBUILTIN_TASKS = {'image': 'frozenlm.tasks.image:Image'}\n"
                               "importlib.import_module(BUILTIN_TASKS['image'].split(':')[0])\n",
    "frozenlm/cli.py": "import frozenlm.engine.train\n",
    "frozenlm/analysis/__init__.py": "import importlib\nimportlib.import_module(f'frozenlm.cli.{X}')\n",
}


def test_the_checker_finds_each_kind_of_violation(tmp_path: Path, table: Table) -> None:
    for rel, text in PLANTED.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path, table)
    assert [m.split(": ", 1)[0] for m in found] == [
        "frozenlm/__init__.py:2", "frozenlm/analysis/__init__.py:2", "frozenlm/data/image.py:1",
        "frozenlm/engine/train.py:2", "frozenlm/lm/block.py:2", "frozenlm/models/vit.py:2",
        "frozenlm/tasks/image.py:2"], found
    assert "imports frozenlm.cli (layer 6, frozenlm/cli.py) from layer 5 (frozenlm/analysis/)" in found[1]
    assert "imports frozenlm.tasks.image, a task: the engine knows tasks only through BUILTIN_TASKS" in found[3]
    assert "imports frozenlm.layer (layer 1, frozenlm/layer.py) from layer 0 (frozenlm/lm/)" in found[4]
    assert "imports frozenlm.data.image: frozenlm/models/ and frozenlm/data/ never import each other" in found[5]
    assert "imports frozenlm.engine.train (layer 4, frozenlm/engine/) from layer 3" in found[6]
