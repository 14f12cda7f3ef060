"""Shared test fixtures. The helpers live in ``support/`` (see its ``__init__``).

The environment is scrubbed on import (``support/sandbox.py``) so that a developer's own git
or ssh configuration can never leak into a test, for stock git and libgit2 alike: HOME and
TMPDIR point into a fresh sandbox that the session removes, git reads no system or global
config, and no LEDGER_* variable is inherited. The session fails if a test leaves anything
in the temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cli import run_cli

# The sandbox first: it scrubs the environment on import, before anything imports pygit2
# (nothing above does), and checks the temporary directory at the end. Then the real git
# servers (git daemon, http-backend, sshd) as session fixtures, registered once.
pytest_plugins = ["support.sandbox", "gitservers"]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME for this test (known_hosts, ssh config, ...)."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


@pytest.fixture()
def cli() -> Iterator[object]:
    """The `run_cli` function, as a fixture."""
    yield run_cli
