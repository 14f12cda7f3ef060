"""Shared test fixtures.

The environment is scrubbed on import so that a developer's own git or ssh configuration
can never leak into a test: HOME points to a fresh directory, git reads no system or global
config, and no LEDGER_* variable is inherited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_SCRUB_PREFIXES = ("GIT_", "LEDGER_", "SSH_AUTH_SOCK", "SSH_AGENT_PID")
for _name in list(os.environ):
    if _name.startswith(_SCRUB_PREFIXES):
        del os.environ[_name]
_SESSION_HOME = tempfile.mkdtemp(prefix="ledger-test-home-")
os.environ["HOME"] = _SESSION_HOME
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
os.environ["GIT_CONFIG_GLOBAL"] = os.devnull
os.environ["GIT_AUTHOR_NAME"] = "Test"
os.environ["GIT_AUTHOR_EMAIL"] = "test@example.com"
os.environ["GIT_COMMITTER_NAME"] = "Test"
os.environ["GIT_COMMITTER_EMAIL"] = "test@example.com"
os.environ["LC_ALL"] = "C.UTF-8"
os.environ.pop("CI_PIPELINE_ID", None)

REPO_ROOT = Path(__file__).resolve().parent.parent

# The real git servers (git daemon, http-backend, sshd) as session fixtures, registered once.
pytest_plugins = ["gitservers"]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME for this test (known_hosts, ssh config, ...)."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err


def run_cli(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> CliResult:
    """Run `python -m ledger ARGS` as a real subprocess and capture everything."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "ledger", *[str(a) for a in args]],
        cwd=cwd,
        env=full_env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture()
def cli() -> Iterator[object]:
    """The `run_cli` function, as a fixture."""
    yield run_cli


def git(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run stock git (an independent judge in tests, never part of the product)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        ["git", *[str(a) for a in args]],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        check=check,
    )


def explode_packs(gitdir: Path) -> None:
    """Turn every pack of a repository into loose objects with stock git, so a test can
    damage one object file (appends write packs)."""
    for pack in sorted((gitdir / "objects" / "pack").glob("pack-*.pack")):
        data = pack.read_bytes()
        for suffix in (".idx", ".rev", ".pack"):
            pack.with_suffix(suffix).unlink(missing_ok=True)
        subprocess.run(
            ["git", "--git-dir", str(gitdir), "unpack-objects", "-q"],
            input=data,
            capture_output=True,
            check=True,
        )


def loose_object(gitdir: Path, oid: str) -> Path:
    """The loose file of object ``oid`` (packs are exploded first)."""
    explode_packs(gitdir)
    return gitdir / "objects" / oid[:2] / oid[2:]
