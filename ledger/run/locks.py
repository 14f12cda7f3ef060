"""Runbook locks: one run at a time per lock name, an ``flock`` that dies with the process."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from ledger import store
from ledger.errors import LockTimeout, StorageError

__all__ = ["LOCKS_DIR", "runbook_lock"]

#: Directory (under ``<gitdir>/ledger-state``) holding the runbook lock files.
LOCKS_DIR: Final = "locks"


def _lock_path(ledger: store.Ledger, name: str) -> Path:
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return ledger.gitdir / store.STATE_DIR / LOCKS_DIR / digest


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(
            f"cannot create the runbook lock file {path}: {exc.strerror or exc}.",
            hint="Check the permissions of the ledger's directory.",
        ) from None
    try:
        if not store.flock(fd):
            holder = _lock_holder(fd)
            raise LockTimeout(
                f"the runbook lock {label!r} is held by {holder}; a run holding the same lock "
                "is in progress, so this one does not start.",
                hint="Wait for that run to finish ('ledger status' shows unfinished runs), "
                "then start this one again.",
            )
        info = json.dumps(
            {"lock": label, "run": run_id, "pid": os.getpid(), "host": os.uname().nodename}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info + b"\n", 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _lock_holder(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(info, dict) or "run" not in info:
        return "another process"
    return f"run {info.get('run')} (pid {info.get('pid')} on {info.get('host')})"
