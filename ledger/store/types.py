"""The values the store hands out: the head, what an append made, trusted signers, and
records as read back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from ledger import errors, keys
from ledger.format import shapes

D = TypeVar("D")

BlobReader = Callable[[str, str], bytes]
"""Reads a file of the ledger's tree: ``(path, commit_id) -> bytes``."""


@dataclass(frozen=True)
class Head:
    """The tip of the ledger: its commit id and the seq of its record."""

    commit_id: str
    seq: int


@dataclass(frozen=True)
class Appended:
    """What :meth:`Ledger.append` made: durable on disk when returned."""

    commit_id: str
    seq: int
    path: str
    record: shapes.Record
    parent: str | None = None
    """The commit it was appended onto (what ``main`` named under the append lock)."""


@dataclass(frozen=True)
class Signer:
    """A key trusted by the ledger at some point, with the records that added/revoked it."""

    principal: str
    public_key: keys.PublicKey
    added_seq: int
    added_time: str | None
    revoked_seq: int | None = None
    revoked_time: str | None = None

    @property
    def fingerprint(self) -> str:
        return self.public_key.fingerprint

    @property
    def active(self) -> bool:
        return self.revoked_seq is None


@dataclass
class StoredRecord:
    """A record as read back from the ledger (not verified: see ``ledger.verify``)."""

    commit_id: str
    seq: int
    kind: str
    path: str
    record: dict[str, Any]
    raw: bytes
    message: str
    commit_time: int
    read_blob: BlobReader | None = field(default=None, repr=False, compare=False)
    """Reads the files of the tree this record was read from (its attachments); set by the
    store, ``None`` for a record with no store behind it."""

    @property
    def run(self) -> str | None:
        run = self.record.get("run")
        return run if isinstance(run, str) else None

    @property
    def time(self) -> str:
        return str(self.record.get("time", ""))

    @property
    def data(self) -> dict[str, Any]:
        data = self.record.get("data")
        return data if isinstance(data, dict) else {}

    def data_as(self, shape: type[D]) -> D:
        """``data`` seen as ``shape``, the kind's type in :mod:`ledger.format.records` (for
        example ``rec.data_as(shapes.StepFinished)``): the fields the format names, typed.

        Nothing is checked: a record read back says whatever its bytes say, so a reader
        still reads values leniently (``.get``, ``isinstance``) unless the ledger was
        verified."""
        return cast(D, self.data)

    @property
    def files(self) -> dict[str, str]:
        files = self.record.get("files")
        if not isinstance(files, dict):
            return {}
        return {
            name: str(meta.get("path", ""))
            for name, meta in files.items()
            if isinstance(meta, dict)
        }

    @property
    def summary(self) -> str:
        return self.message.split("\n", 1)[0]

    def attachment(self, name: str) -> bytes:
        """The bytes of one of this record's attached files."""
        path = self.files.get(name)
        if path is None or self.read_blob is None:
            raise errors.InputError(f"record {self.seq} has no attached file {name!r}.")
        return self.read_blob(path, self.commit_id)


__all__ = ["Appended", "BlobReader", "Head", "Signer", "StoredRecord"]
