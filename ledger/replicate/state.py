"""What each remote held when we last saw it: ``<gitdir>/ledger-state/remotes.json``, read
and rewritten under an exclusive file lock."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2

from ledger import store
from ledger.errors import StorageError

REMOTES_STATE = "remotes.json"


@contextlib.contextmanager
def lock(repo: pygit2.Repository) -> Iterator[dict[str, Any]]:
    """Read-modify-write of ``ledger-state/remotes.json`` under an exclusive file lock."""
    state_dir = Path(repo.path) / store.STATE_DIR
    state_dir.mkdir(exist_ok=True)
    path = state_dir / REMOTES_STATE
    lock_fd = os.open(state_dir / (REMOTES_STATE + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        store.flock(lock_fd, wait=None)
        state = _read_file(path)
        before = json.dumps(state, sort_keys=True)
        yield state
        if json.dumps(state, sort_keys=True) != before:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path)
    finally:
        os.close(lock_fd)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"the remote state file {path} cannot be read: {exc}.",
            hint="Delete it; the next 'ledger fetch' rebuilds it.",
        ) from None
    return data if isinstance(data, dict) else {}


def read(repo: pygit2.Repository) -> dict[str, Any]:
    """The state file of the ledger repository ``repo`` (empty when there is none yet)."""
    return _read_file(Path(repo.path) / store.STATE_DIR / REMOTES_STATE)


def read_remote_state(ledger_path: Path) -> dict[str, Any]:
    """What each remote held when last seen: ``{name: {"head", "seq", "time", "url", ...}}``."""
    return read(store.open_repository(ledger_path))
