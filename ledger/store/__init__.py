"""The ledger repository: the only code that writes it and the ordinary way to read it.

    from ledger.store import Ledger

    ledger = Ledger.open(path)
    appended = ledger.append("event", {"message": "hello", "data": None}, key=key)
    assert ledger.record(appended.seq).record == appended.record

Modules:

- ``ledger``: :class:`Ledger`: creating, opening, configuration, upkeep threads.
- ``reads``: reading: the head, records, the seq lookups, the head's tree, trusted keys.
- ``append``: the durable append: compose (in memory), then pack, syncfs, CAS, syncfs.
- ``types``: :class:`Head`, :class:`Appended`, :class:`Signer`, :class:`StoredRecord`.
- ``trees``: building an append's new trees; reading blobs.
- ``trust``: the keys the records trust (genesis, ``keys/``).
- ``seqindex``: the local seq -> commit index.
- ``packs``: an append's objects as one pack with its v2 index.
- ``upkeep``: merging and repacking packs in the background (:class:`UpkeepPolicy`).
- ``gitdir``: the git directory: fixed paths, opening, syncfs, the protected-repository
  configuration, flock, files written whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.store.gitdir import (
        MAIN_REF,
        OPEN_FLAGS,
        STATE_DIR,
        created,
        flock,
        open_own,
        open_repository,
        protect,
        special_entry,
    )
    from ledger.store.ledger import Ledger
    from ledger.store.types import Appended, Head, Signer, StoredRecord
    from ledger.store.upkeep import UpkeepPolicy

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.store.gitdir": (
            "MAIN_REF",
            "OPEN_FLAGS",
            "STATE_DIR",
            "created",
            "flock",
            "open_own",
            "open_repository",
            "protect",
            "special_entry",
        ),
        "ledger.store.ledger": ("Ledger",),
        "ledger.store.types": ("Appended", "Head", "Signer", "StoredRecord"),
        "ledger.store.upkeep": ("UpkeepPolicy",),
    },
)

__all__ = [
    "MAIN_REF",
    "OPEN_FLAGS",
    "STATE_DIR",
    "Appended",
    "Head",
    "Ledger",
    "Signer",
    "StoredRecord",
    "UpkeepPolicy",
    "created",
    "flock",
    "open_own",
    "open_repository",
    "protect",
    "special_entry",
]
