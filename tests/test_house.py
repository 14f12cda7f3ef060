"""The house rules of the test suite itself: the sandbox holds for both git implementations
and for child processes, the suite leaves nothing in the temporary directory, and every
third-party import is declared in pyproject.toml."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata
from pathlib import Path

import pygit2
from support import sandbox
from support.cli import REPO_ROOT

# --------------------------------------------------------------------------- libgit2

LEVELS = ("SYSTEM", "XDG", "GLOBAL")

PROBE = textwrap.dedent(
    """
    import json, sys
    import pygit2
    levels = pygit2.enums.ConfigLevel
    repo = pygit2.init_repository(sys.argv[1], bare=True)
    print(json.dumps({
        "paths": {n: pygit2.settings.search_path[levels[n]] for n in sys.argv[2:]},
        "outside": sorted(e.name for e in repo.config if e.level != levels.LOCAL),
    }))
    """
)
"""A child process's view: libgit2's search paths and the entries a fresh repository's
configuration gets from anywhere but the repository itself."""


def _inside_sandbox(path: str) -> bool:
    return Path(path).resolve().is_relative_to(sandbox.ROOT.resolve())


def _child_view(repo: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(repo), *LEVELS],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_libgit2_in_the_test_process_reads_only_the_sandbox(tmp_path: Path) -> None:
    levels = pygit2.enums.ConfigLevel
    for name in LEVELS:
        path = pygit2.settings.search_path[levels[name]]
        assert _inside_sandbox(path), (name, path)
    repo = pygit2.init_repository(tmp_path / "r.git", bare=True)
    assert [e.name for e in repo.config if e.level != levels.LOCAL] == []
    assert "XDG_CONFIG_HOME" not in os.environ


def test_libgit2_in_a_child_process_reads_only_the_sandbox(tmp_path: Path) -> None:
    view = _child_view(tmp_path / "r.git")
    assert all(_inside_sandbox(p) for p in view["paths"].values()), view  # type: ignore[attr-defined]
    assert view["outside"] == []


def test_the_sandbox_home_is_the_only_door_for_a_child_libgit2(home: Path, tmp_path: Path) -> None:
    """What a test plants in its HOME, libgit2 in a child process reads (the product reads
    credential helpers through pygit2): the test's HOME is the one configuration it sees."""
    (home / ".gitconfig").write_text("[user]\n\tname = Planted\n", encoding="utf-8")
    view = _child_view(tmp_path / "r.git")
    assert view["outside"] == ["user.name"]


def test_without_the_child_site_a_child_libgit2_reads_the_machine(tmp_path: Path) -> None:
    """The child isolation is what makes the previous tests pass (they can fail): without
    ``childsite`` on PYTHONPATH, libgit2 looks in the machine's system directory."""
    paths = os.environ["PYTHONPATH"].split(os.pathsep)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if Path(p) != sandbox.CHILD_SITE)
    )
    view = _child_view(tmp_path / "r.git", env)
    assert not _inside_sandbox(view["paths"]["SYSTEM"])  # type: ignore[index]


# --------------------------------------------------------------------------- temporary files


def _nested_pytest(
    directory: Path, test_file: str, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A separate pytest session with only the sandbox plugin (not an xdist worker), with
    ``tmpdir`` as its system temporary directory when given."""
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_XDIST") and k != "PYTEST_CURRENT_TEST"
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "tests"), env.get("PYTHONPATH", "")])
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "support.sandbox",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            test_file,
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_file_left_in_the_temporary_directory_fails_the_session(tmp_path: Path) -> None:
    (tmp_path / "test_leak.py").write_text(
        "import tempfile\n\n\ndef test_leaks():\n    tempfile.mkstemp(prefix='leaked-')\n",
        encoding="utf-8",
    )
    (tmp_path / "test_tidy.py").write_text(
        "import tempfile\n\n\ndef test_tidy():\n"
        "    with tempfile.TemporaryDirectory(prefix='tidy-'):\n        pass\n",
        encoding="utf-8",
    )
    # The nested sessions' own temporary directory: the shared one sees other workers' tools
    # come and go meanwhile (git's .git_vtag_tmp* while it verifies a signature).
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    leak = _nested_pytest(tmp_path, "test_leak.py", system_tmp)
    assert leak.returncode == 1, leak.stdout + leak.stderr
    assert "1 passed" in leak.stdout
    assert re.search(r"left 1 entries .*\n\s+leaked-", leak.stdout), leak.stdout
    tidy = _nested_pytest(tmp_path, "test_tidy.py", system_tmp)
    assert tidy.returncode == 0, tidy.stdout + tidy.stderr
    # Both sessions removed their sandboxes, the leaked file with them.
    assert list(system_tmp.iterdir()) == []


# --------------------------------------------------------------------------- dependencies


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s<>=!~;\[(@]", r, maxsplit=1)[0]) for r in requirements}


def _third_party_imports(directory: Path, local: set[str]) -> dict[str, Path]:
    """Top-level name of every absolute import under ``directory`` (lazy ones included)
    that is neither the standard library nor a local module -> one file importing it."""
    found: dict[str, Path] = {}
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in local | {"__future__"}:
                    found.setdefault(top, path)
    return found


def _local_modules() -> set[str]:
    names = {"ledger", "tests", "bench"}
    for directory in ("tests", "bench"):
        for path in (REPO_ROOT / directory).iterdir():
            if path.suffix == ".py" or (path / "__init__.py").exists():
                names.add(path.stem)
        names |= {p.stem for p in (REPO_ROOT / directory).rglob("sitecustomize.py")}
    return names


def test_every_third_party_import_is_declared() -> None:
    """ledger/ may import only ``dependencies``; tests/ and bench/ also the ``test`` extra.
    A package installed by hand on one machine must not hide a missing declaration."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = _requirement_names(project["dependencies"])
    test = runtime | _requirement_names(project["optional-dependencies"]["test"])
    distributions = metadata.packages_distributions()
    local = _local_modules()
    problems = []
    for directory, allowed in (("ledger", runtime), ("tests", test), ("bench", test)):
        for top, path in _third_party_imports(REPO_ROOT / directory, local).items():
            where = path.relative_to(REPO_ROOT)
            provided = {_norm(d) for d in distributions.get(top, [])}
            if not provided:
                problems.append(f"{top} ({where}): no installed distribution provides it")
            elif not provided & allowed:
                problems.append(
                    f"{top} ({where}): {sorted(provided)} not declared for {directory}/"
                )
    assert problems == []
