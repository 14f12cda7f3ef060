"""The house rules of docs/ARCHITECTURE.md, checked against the code.

- every module under ``ledger/`` has a row in ARCHITECTURE.md's module table, and every row
  names a module that exists;
- sizes: no module over 600 lines, no class over 300, no function over 80 (the data tables
  listed in ``_DATA`` aside);
- layering: nothing under ``ledger/`` outside ``ledger/cli/`` imports typer, rich or the CLI,
  and there is no import cycle between packages (the verifier's independence from the writer
  is pinned in tests/test_verify.py);
- modules, not names: the project's own code imports modules of ``ledger`` (``from
  ledger.store import gitdir``), not names from them, except in the package faces, which are
  lazy: ``ledger --help`` loads no heavy library.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "ledger"

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 80

#: Definitions that are data, not logic (module path relative to the repo, name).
_DATA: set[tuple[str, str]] = set()


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _dotted(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _table_modules() -> set[str]:
    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    return set(re.findall(r"^\| `(ledger/[\w/]+\.py)` \|", text, re.M))


def test_every_module_is_in_the_architecture_table() -> None:
    listed = _table_modules()
    present = {_name(p) for p in _modules()}
    assert present - listed == set(), "modules missing from docs/ARCHITECTURE.md's table"
    assert listed - present == set(), "docs/ARCHITECTURE.md lists modules that do not exist"


def _long_definitions(tree: ast.AST) -> Iterator[tuple[str, str, int, int]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        if length > limit:
            yield type(node).__name__, node.name, node.lineno, length


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_sizes(path: Path) -> None:
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_name(path)} has {lines} lines"
    long = [
        f"{kind} {name} (line {line}, {length} lines)"
        for kind, name, line, length in _long_definitions(ast.parse(text))
        if (_name(path), name) not in _DATA
    ]
    assert long == [], f"{_name(path)}: {long}"


def _imports(path: Path) -> set[str]:
    """Absolute names this module imports (``from ledger.x import y`` counts x and x.y)."""
    out: set[str] = set()
    package = _dotted(path) if path.name == "__init__.py" else _dotted(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _top(name: str) -> str:
    """The ledger package (``ledger.verify``) or top-level module a name belongs to."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_the_library_does_not_touch_the_terminal() -> None:
    for path in _modules():
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        names = _imports(path)
        bad = sorted(n for n in names if n.split(".")[0] in {"typer", "rich", "click"})
        bad += sorted(n for n in names if n.startswith("ledger.cli"))
        assert bad == [], f"{_name(path)} imports the CLI layer: {bad}"


def test_packages_form_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for path in _modules():
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        src = _top(_dotted(path))
        deps = {_top(n) for n in _imports(path) if n.startswith("ledger.")}
        edges.setdefault(src, set()).update(d for d in deps if d not in (src, "ledger"))
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        if seen.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*stack, node])}")
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for dep in sorted(edges.get(node, ())):
            visit(dep, [*stack, node])
        seen[node] = 2

    for node in sorted(edges):
        visit(node, [])


def _face_imports(tree: ast.Module) -> dict[str, set[str]]:
    """What a face imports under ``if TYPE_CHECKING:``, by module."""
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                out.setdefault(imp.module, set()).update(a.name for a in imp.names)
    return out


def _face_exports(tree: ast.Module) -> dict[str, set[str]]:
    """The module -> names map a face hands to ``lazy.attach``."""
    for node in tree.body:
        call = node.value if isinstance(node, ast.Assign) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func) == "lazy.attach":
            table = ast.literal_eval(call.args[1])
            return {module: set(names) for module, names in table.items()}
    return {}


@pytest.mark.parametrize(
    "face",
    sorted(p for p in PACKAGE.glob("*/__init__.py") if p.parent.name != "cli"),
    ids=lambda p: p.parent.name,
)
def test_package_faces_load_what_they_declare(face: Path) -> None:
    """A face's lazy table and its TYPE_CHECKING imports name the same things, each of
    which exists, and ``__all__`` is exactly those names."""
    tree = ast.parse(face.read_text())
    exports = _face_exports(tree)
    assert exports == _face_imports(tree), f"{_name(face)}: lazy table and imports differ"
    names = {n for ns in exports.values() for n in ns}
    package = importlib.import_module(_dotted(face))
    assert set(package.__all__) == names
    for name in sorted(names):
        assert getattr(package, name) is not None


def _exported(tree: ast.Module) -> set[str]:
    """The names a module lists in its ``__all__``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    return set()


def _is_module(dotted: str) -> bool:
    path = REPO_ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_modules_import_modules_not_names() -> None:
    """``from ledger.x import y`` names a module y, at the top of a file, under
    ``if TYPE_CHECKING:`` and in lazy imports alike (docs/ARCHITECTURE.md, rule 2). The
    exceptions: package faces (``__init__.py``: their imports of names are the re-exports) and
    a name re-exported on purpose (``import Name as Name``, or listed in ``__all__``)."""
    names: list[str] = []
    for path in _modules():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        exported = _exported(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level:
                continue
            base = node.module or ""
            if base != "ledger" and not base.startswith("ledger."):
                continue
            names += [
                f"{_name(path)}:{node.lineno}: from {base} import {alias.name}"
                for alias in node.names
                if not _is_module(f"{base}.{alias.name}")
                and alias.asname != alias.name
                and (alias.asname or alias.name) not in exported
            ]
    assert names == [], "import the module, not the name:\n" + "\n".join(names)


def test_ledger_help_loads_no_heavy_library() -> None:
    """``ledger --help`` imports no git, crypto, schema, template or YAML library."""
    code = (  # (the entry point's modules, then main(): run() would end the process)
        "import sys, ledger.__main__, ledger.cli\n"
        "try:\n"
        "    ledger.cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('pygit2', 'cryptography', 'jsonschema', 'jinja2', 'yaml')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"
