"""Reading one ledger's runs in an auditor's fleet copy, at the head its verification
verified: the same tree lookups as ``ledger report`` (:class:`ledger.store.runreads.RunReads`:
a run's directory, the incident index, the date shards), never a history scan.

A fleet copy is not a ledger (no ``refs/heads/main``, no ``ledger.*`` config, many chains in
one object store), so :class:`CopyReads` reads only at a commit it is given: the verified
head of one ledger, which the caller got from the fleet's verification, never from a ref of
the copy.

A record found in the tree is found by its seq; its commit id (which the report shows as
evidence) comes from a seq index kept per ledger in the copy (``ledger-state/fleet-seq-
<ledger id>``), an accelerator only: an entry is believed when the commit holds, at its
``Ledger-Record`` path, the very blob the verified head's tree holds there (and the files
that record lists), its ``Ledger-Seq`` trailer and the record's ``seq`` are that seq, and the
commit is signed by the key the (verified) record names as ``actor.key``, which someone
without that key cannot forge. Anything else walks back by first parents from the verified
head (whose parents are the verified chain: objects are named by their content) to that
seq, repairing the index on the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pygit2

from ledger import errors, keys
from ledger.format import records
from ledger.store import gitdir, runreads, seqindex, trees, types

INDEX_PREFIX = "fleet-seq-"


class CopyReads(runreads.RunReads):
    """The runs of ledger ``ledger_id`` in the fleet copy ``repo``, read at a given commit."""

    def __init__(self, path: Path, repo: pygit2.Repository, ledger_id: str) -> None:
        self.path = path
        self.repo = repo
        self.gitdir = Path(repo.path)
        self.ledger_id = ledger_id
        if not records.LEDGER_ID_RE.match(ledger_id):
            raise errors.InputError(
                f"{errors.quoted(ledger_id)} is not a ledger id (32 hex digits)."
            )
        index = f"{gitdir.STATE_DIR}/{INDEX_PREFIX}{ledger_id}"
        self._index = seqindex.SeqIndex(self.gitdir, index)
        self._trees = trees.Trees(repo)
        self._last = None
        self._main_file = ""
        self._view = None
        self.allow_unverified = False

    def close(self) -> None:
        self._index.close()

    def verified_head(self, at: str | None = None) -> str | None:
        """Only ``at``: a fleet copy has no ``main`` to verify; the caller gives the head the
        fleet's verification verified."""
        if at is None:
            raise errors.StorageError(
                f"a read of ledger {self.ledger_id} in the fleet copy {self.path} named no "
                "verified head; nothing is read from a copy's refs."
            )
        return at

    def commit_for_seq(self, seq: int, *, at: str | None = None, signed: bool = False) -> str:
        """The commit of record ``seq`` on the chain ending at ``at`` (see the module's
        docstring: the index entry is checked, including its signature, whatever
        ``signed`` says)."""
        head_id = self.verified_head(at) or ""
        head = types.Head(head_id, self._commit_seq(self._commit(head_id)))
        if seq < 0 or seq > head.seq:
            raise errors.InputError(
                f"no record with seq {seq} in ledger {self.ledger_id} (the newest verified "
                f"is {head.seq})."
            )
        hit = self._index.get(seq)
        if hit is not None and _is_record(self.repo, hit, seq, self._commit(head_id).tree):
            return str(hit)
        return self._walk_to(head, seq)


def _is_record(repo: pygit2.Repository, oid: pygit2.Oid, seq: int, head_tree: pygit2.Tree) -> bool:
    """Whether commit ``oid`` is record ``seq`` of the chain whose head has ``head_tree``: it
    holds the head tree's blobs at its record's path and at every file the record lists,
    says ``seq`` (trailer and record), and is signed by the record's ``actor.key``."""
    try:
        commit = repo[oid]
        if not isinstance(commit, pygit2.Commit):
            return False
        trailers = records.parse_trailers(commit.message)
        path = trailers.get("Ledger-Record", "")
        if trailers.get("Ledger-Seq") != str(seq) or not path:
            return False
        entry = commit.tree[path]
        if head_tree[path].id != entry.id:
            return False
        record = json.loads(trees.blob_data(repo, entry.id))
        if not isinstance(record, dict) or record.get("seq") != seq:
            return False
        files = record.get("files")
        for meta in files.values() if isinstance(files, dict) else ():
            other = str(meta.get("path", "")) if isinstance(meta, dict) else ""
            if commit.tree[other].id != head_tree[other].id:
                return False
        actor = record.get("actor")
        want = actor.get("key") if isinstance(actor, dict) else None
        _payload, public = keys.verify_signed_commit(bytes(repo.odb.read(oid)[1]))
    except (
        KeyError,
        ValueError,
        TypeError,
        AttributeError,
        errors.LedgerError,
        pygit2.GitError,
    ):
        return False
    return isinstance(want, str) and public.fingerprint == want
