"""The seq index: a local file mapping each seq to its commit id, so that a record is found
without walking history. An accelerator only: lookups check what it says against the chain
and rebuild what is missing or wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

OID_LEN = 20


class SeqIndex:
    """``<gitdir>/ledger-state/seq-index``: at offset ``seq * 20``, the raw id of the commit
    of record ``seq`` (zeros where unknown). Its write descriptor is kept open across
    appends; :meth:`close` closes it (it is reopened when needed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def put(self, seq: int, oid: pygit2.Oid) -> None:
        """Record that ``seq`` is at ``oid`` (a local accelerator, never trusted blindly)."""
        try:
            if self._fd is None:
                self.path.parent.mkdir(exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._fd, oid.raw, seq * OID_LEN)
        except OSError:
            # Only an accelerator: lookups check what it says and rebuild what is missing.
            self.close()

    def put_chain(self, oids: list[pygit2.Oid], head_seq: int) -> None:
        """Record a whole verified chain, oldest first: ``oids[seq]`` is seq's commit (a
        verified chain's seqs count from 0 along first parents). Nothing when the chain's
        length is not ``head_seq + 1``."""
        if len(oids) != head_seq + 1:
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"".join(oid.raw for oid in oids))
            finally:
                os.close(fd)
        except OSError:
            pass  # only an accelerator: lookups walk back and repair what is missing

    def get(self, seq: int) -> pygit2.Oid | None:
        """The commit id recorded for ``seq``, if any (unchecked)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(seq * OID_LEN)
                raw = fh.read(OID_LEN)
        except FileNotFoundError:
            return None
        if len(raw) != OID_LEN or raw == b"\0" * OID_LEN:
            return None
        return pygit2.Oid(raw=raw)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
