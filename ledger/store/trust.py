"""The keys a ledger trusts, as its records say: genesis' signers, then the ``keys/``
directory's additions and revocations in seq order, one entry per trust window
(``ledger verify`` checks the signatures; this only reads)."""

from __future__ import annotations

import dataclasses
import json

import pygit2

from ledger.format import records
from ledger.keys import PublicKey
from ledger.store import trees
from ledger.store.types import Signer


def signers_in(
    repo: pygit2.Repository, root: pygit2.Tree, keys_tree: pygit2.Tree | None
) -> list[Signer]:
    """Every trust window of the records of ``root`` (a commit's tree) and ``keys_tree`` (its
    ``keys/``), in the order they opened: one :class:`Signer` per time a key became trusted,
    with the revocation that closed it (FORMAT.md §10 "Trust changes": adding a key already
    trusted, or revoking one that is not, changes nothing; a revoked key may come back, as a
    new window)."""
    genesis = json.loads(trees.blob_data(repo, root[records.GENESIS_PATH].id))
    windows: list[Signer] = []
    current: dict[str, int] = {}  # fingerprint -> index in windows of its open window
    for s in genesis.get("data", {}).get("signers", []):
        pk = PublicKey.parse(s["key"])
        if pk.fingerprint not in current:
            current[pk.fingerprint] = len(windows)
            windows.append(Signer(s["principal"], pk, 0, None))
    for entry in sorted(keys_tree or [], key=lambda e: e.name or ""):
        rec = json.loads(trees.blob_data(repo, entry.id))
        d = rec.get("data", {})
        if rec.get("kind") == records.KIND_KEY_ADDED:
            pk = PublicKey.parse(d["key"])
            if pk.fingerprint not in current:
                current[pk.fingerprint] = len(windows)
                windows.append(Signer(d["principal"], pk, rec["seq"], rec["time"]))
        elif rec.get("kind") == records.KIND_KEY_REVOKED:
            at = current.pop(d.get("fingerprint", ""), None)
            if at is not None:
                old = windows[at]
                windows[at] = dataclasses.replace(
                    old, revoked_seq=rec["seq"], revoked_time=rec["time"]
                )
    return windows
