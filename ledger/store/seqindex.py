"""The seq index: a local file mapping each seq to its commit id, so that a record is found
without walking history. An accelerator only: lookups check what it says against the chain
and rebuild what is missing or wrong. It lives in a directory others may be able to write (a
ledger's, a fleet copy's): a symbolic link, FIFO or other non-regular file in its place is an
unusable index, never followed (:func:`gitdir.open_own`)."""

from __future__ import annotations

import os
from pathlib import Path

import pygit2

from ledger.store import gitdir

OID_LEN = 20


class SeqIndex:
    """``<gitdir>/ledger-state/seq-index`` (``relative`` to the git directory ``root``): at
    offset ``seq * 20``, the raw id of the commit of record ``seq`` (zeros where unknown).
    Its write descriptor is kept open across appends; :meth:`close` closes it (it is
    reopened when needed)."""

    def __init__(self, root: Path, relative: str) -> None:
        self.root = root
        self.relative = relative
        self.path = root / relative
        self._fd: int | None = None

    def put(self, seq: int, oid: pygit2.Oid) -> None:
        """Record that ``seq`` is at ``oid`` (a local accelerator, never trusted blindly)."""
        try:
            if self._fd is None:
                self._fd = gitdir.open_own(self.root, self.relative, os.O_RDWR | os.O_CREAT)
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
            fd = gitdir.open_own(self.root, self.relative, os.O_WRONLY | os.O_CREAT)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, b"".join(oid.raw for oid in oids))
            finally:
                os.close(fd)
        except OSError:
            pass  # only an accelerator: lookups walk back and repair what is missing

    def get(self, seq: int) -> pygit2.Oid | None:
        """The commit id recorded for ``seq``, if any (unchecked)."""
        try:
            raw = gitdir.read_own(self.path, OID_LEN, seq * OID_LEN)
        except OSError:  # absent, or not a regular file: no entry
            return None
        if len(raw) != OID_LEN or raw == b"\0" * OID_LEN:
            return None
        return pygit2.Oid(raw=raw)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
