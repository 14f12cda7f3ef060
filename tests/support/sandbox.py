"""The test session's sandbox: a scrubbed environment, a private HOME and temporary directory,
and git configuration isolated for both git implementations in use (stock git and libgit2).

Imported by conftest before anything imports pygit2, and registered as a pytest plugin.

- The environment: ``GIT_*``, ``LEDGER_*``, the SSH agent, ``XDG_CONFIG_HOME`` and ``EMAIL``
  are removed; git identity and locale are fixed.
- One directory per test session (``ledger-tests-*`` in the system temporary directory)
  holds ``home/`` (HOME; one per xdist worker), ``gitsystem/`` (empty: libgit2's system
  configuration directory) and ``tmp/`` (TMPDIR for the tests and every child process).
- Stock git reads no system or global file (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL``).
  libgit2 honours neither variable and has no variable for its system directory: in this
  process its search path for SYSTEM, XDG and GLOBAL points into the sandbox, and child
  Python processes get the same through ``childsite/sitecustomize.py`` (put first on
  PYTHONPATH), which sets SYSTEM when they import pygit2 (their XDG and GLOBAL follow HOME).
- At the end of the session the controller checks that nothing was left in ``tmp/``, fails
  the run if something was (naming it), and removes the whole sandbox.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest

ROOT_ENV = "RUNBOOK_TESTS_SANDBOX"
"""The sandbox directory, inherited by xdist workers (not ``LEDGER_*``: that prefix is
scrubbed)."""
GIT_SYSTEM_ENV = "RUNBOOK_TESTS_LIBGIT2_SYSTEM"
"""libgit2's system configuration directory for child processes (read by sitecustomize)."""
ROOT_PREFIX = "ledger-tests-"
CHILD_SITE = Path(__file__).resolve().parent / "childsite"

SCRUB_PREFIXES = ("GIT_", "LEDGER_", "SSH_AUTH_SOCK", "SSH_AGENT_PID")
SCRUB_NAMES = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "EMAIL", "CI_PIPELINE_ID")
"""XDG_CONFIG_HOME: read by both git and libgit2 for ``git/config``; XDG_STATE_HOME: the
product keeps the user's trust anchors (remotes' last-seen heads) there, under HOME otherwise;
EMAIL: git's identity fallback; CI_PIPELINE_ID: the product records it as the run's CI
trigger."""

SYSTEM_TMP = Path(tempfile.gettempdir())
"""The system temporary directory as the session found it (before TMPDIR is redirected)."""


def _root() -> tuple[Path, bool]:
    """The session's sandbox and whether this process created it (an xdist worker inherits
    the controller's)."""
    inherited = os.environ.get(ROOT_ENV)
    if inherited and os.environ.get("PYTEST_XDIST_WORKER") and Path(inherited).is_dir():
        return Path(inherited), False
    return Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=SYSTEM_TMP)), True


ROOT, OWNER = _root()
HOME = ROOT / os.environ.get("PYTEST_XDIST_WORKER", "main") / "home"
GIT_SYSTEM = ROOT / "gitsystem"
TMP = ROOT / "tmp"


def _scrub() -> None:
    for name in list(os.environ):
        if name.startswith(SCRUB_PREFIXES) or name in SCRUB_NAMES:
            del os.environ[name]
    for directory in (HOME, GIT_SYSTEM, TMP):
        directory.mkdir(parents=True, exist_ok=True)
    os.environ[ROOT_ENV] = str(ROOT)
    os.environ[GIT_SYSTEM_ENV] = str(GIT_SYSTEM)
    os.environ["HOME"] = str(HOME)
    os.environ["TMPDIR"] = str(TMP)
    tempfile.tempdir = None  # forget the cached system directory: TMPDIR is read again
    # pytest's own tmp_path directories stay where pytest keeps them (it prunes old runs).
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", str(SYSTEM_TMP))
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(CHILD_SITE), *([path] if path else [])])
    os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
    os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
    os.environ["GIT_AUTHOR_NAME"] = "Test"
    os.environ["GIT_AUTHOR_EMAIL"] = "test@example.com"
    os.environ["GIT_COMMITTER_NAME"] = "Test"
    os.environ["GIT_COMMITTER_EMAIL"] = "test@example.com"
    os.environ["LC_ALL"] = "C.UTF-8"


def _isolate_libgit2() -> None:
    import pygit2  # after HOME is set: libgit2 reads it once, when pygit2 is imported

    levels = pygit2.enums.ConfigLevel
    pygit2.settings.search_path[levels.SYSTEM] = str(GIT_SYSTEM)
    pygit2.settings.search_path[levels.XDG] = str(HOME / ".config" / "git")
    pygit2.settings.search_path[levels.GLOBAL] = str(HOME)


_scrub()
_isolate_libgit2()


def leftovers() -> list[Path]:
    """What the session left in its temporary directory."""
    return sorted(TMP.rglob("*")) if TMP.is_dir() else []


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    # After every other implementation: xdist's stops the workers first.
    yield
    if not OWNER:
        return
    left = leftovers()
    shutil.rmtree(ROOT, ignore_errors=True)
    if left:
        shown = "\n".join(f"  {p.relative_to(TMP)}" for p in left[:20])
        session.config.get_terminal_writer().line(
            f"\nThe tests left {len(left)} entries in their temporary directory:\n{shown}",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
