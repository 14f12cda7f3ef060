"""The keys a ledger trusts, as its records say: genesis' signers, then the ``keys/``
directory's additions and revocations in seq order (``ledger verify`` checks the
signatures; this only reads)."""

from __future__ import annotations

import json

import pygit2

from ledger import keys
from ledger.format import records
from ledger.store import trees
from ledger.store.types import Signer


def signers_in(
    repo: pygit2.Repository, root: pygit2.Tree, keys_tree: pygit2.Tree | None
) -> list[Signer]:
    """Every key trusted by the records of ``root`` (a commit's tree) and ``keys_tree``
    (its ``keys/``), with revocations applied."""
    genesis = json.loads(trees.blob_data(repo, root[records.GENESIS_PATH].id))
    genesis_data: records.GenesisData = genesis.get("data", {})
    by_fp: dict[str, Signer] = {}
    for s in genesis_data.get("signers", []):
        pk = keys.PublicKey.parse(s["key"])
        by_fp[pk.fingerprint] = Signer(s["principal"], pk, 0, None)
    for entry in sorted(keys_tree or [], key=lambda e: e.name or ""):
        rec = json.loads(trees.blob_data(repo, entry.id))
        if rec.get("kind") == records.KIND_KEY_ADDED:
            added: records.KeyAdded = rec.get("data", {})
            pk = keys.PublicKey.parse(added["key"])
            by_fp[pk.fingerprint] = Signer(added["principal"], pk, rec["seq"], rec["time"])
        elif rec.get("kind") == records.KIND_KEY_REVOKED:
            revoked: records.KeyRevoked = rec.get("data", {})
            old = by_fp.get(revoked.get("fingerprint", ""))
            if old is not None:
                by_fp[old.fingerprint] = Signer(
                    old.principal,
                    old.public_key,
                    old.added_seq,
                    old.added_time,
                    rec["seq"],
                    rec["time"],
                )
    return list(by_fp.values())
