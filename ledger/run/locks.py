"""Runbook locks: one run at a time per lock name, an ``flock`` that dies with the process;
and run locks: every run holds one on its own id while it runs, so that a lock that can be
taken proves the run's runner is gone (``ledger abandon``, resuming an unfinished run)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ledger import errors, store

__all__ = ["LOCKS_DIR", "run_lock", "runbook_lock"]

#: Directory (under ``<gitdir>/ledger-state``) holding the runbook lock files.
LOCKS_DIR: Final = "locks"
_FLAGS: Final = os.O_RDWR | os.O_CREAT


def _lock_path(ledger: store.Ledger, name: str) -> Path:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return ledger.gitdir / store.STATE_DIR / LOCKS_DIR / digest


def _open_lock_file(ledger: store.Ledger, path: Path, what: str) -> int:
    """Open the lock file ``path`` in the ledger's directory: never through a symbolic link
    planted there, only a regular file (the holder is written into it)."""
    try:
        return store.open_own(ledger.gitdir, path.relative_to(ledger.gitdir).as_posix(), _FLAGS)
    except OSError as exc:
        raise errors.StorageError(
            f"cannot create the {what} file {path}: {exc.strerror or exc}.",
            hint="Check the permissions of the ledger's directory.",
        ) from None


def _write_holder(fd: int, lock: str, run_id: str) -> None:
    """Say in the lock file who holds it (read back by the one refused)."""
    info = json.dumps(
        {"lock": lock, "run": run_id, "pid": os.getpid(), "host": os.uname().nodename}
    ).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info + b"\n", 0)


@contextlib.contextmanager
def runbook_lock(
    ledger: store.Ledger, name: str, run_id: str, *, shown: str | None = None
) -> Iterator[Path]:
    """Hold the runbook lock ``name`` for a run (an ``flock`` on
    ``<gitdir>/ledger-state/locks/<sha256(name)>``), released when the block ends or the
    process dies.

    Fails at once with :class:`LockTimeout` naming the run that holds it: runs never queue
    behind one another silently. ``shown`` is the name as written into the lock file and
    messages (the name with secrets redacted; default ``name``).
    """
    label = name if shown is None else shown
    path = _lock_path(ledger, name)
    fd = _open_lock_file(ledger, path, "runbook lock")
    try:
        if not store.flock(fd):
            raise errors.LockTimeout(
                f"the runbook lock {label!r} is held by {_lock_holder(fd, path)}; a run "
                "holding the same lock is in progress, so this one does not start.",
                hint="Wait for that run to finish ('ledger status' shows unfinished runs), "
                "then start this one again. If no such run is in progress, another process "
                f"holds the lock file: find it with 'fuser -v {path}' and stop it.",
            )
        _write_holder(fd, label, run_id)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(ledger: store.Ledger, run_id: str, *, purpose: str = "running") -> Iterator[None]:
    """Hold the lock of run ``run_id`` (``<gitdir>/ledger-state/locks/run-<run id>``).

    The runner holds it from before ``run.started`` until after ``run.finished``; whoever
    else takes it (to close or resume a run that did not finish) knows that no process is
    running the run. Fails at once with :class:`LockTimeout` (exit 6) naming the holder. The
    file is removed when the block ends (a holder reads the run's records after taking the
    lock, so a stale file taken after removal still sees how the run ended).
    """
    path = ledger.gitdir / store.STATE_DIR / LOCKS_DIR / f"run-{run_id}"
    fd = _open_lock_file(ledger, path, "run lock")
    try:
        if not store.flock(fd):
            raise errors.LockTimeout(
                f"run {run_id} is held by {_lock_holder(fd, path)}: its runner is still "
                "running (or another command is closing or resuming it).",
                hint="Wait for it to finish ('ledger status' lists unfinished runs), or stop "
                "it with Ctrl-C / SIGTERM, which records how it ended. If no 'ledger' process "
                f"runs it, find what holds the lock file with 'fuser -v {path}'.",
            )
        _write_holder(fd, purpose, run_id)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        os.close(fd)


def _lock_holder(fd: int, path: Path) -> str:
    """Who holds the lock, as its lock file says (written by the holder; anyone who can
    write the ledger directory can write it too, so it is shown as the file's claim)."""
    where = f"the process holding {path}"
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8") or "{}")
    except (OSError, ValueError):
        return f"{where} (its lock file names no run)"
    if not isinstance(info, dict) or "run" not in info:
        return f"{where} (its lock file names no run)"
    said = f"run {info.get('run')} (pid {info.get('pid')} on {info.get('host')})"
    said = "".join(c if c.isprintable() else "?" for c in said[:300])  # (anyone's bytes)
    return f"{said}, as its lock file {path} says"
