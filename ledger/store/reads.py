"""Reading the ledger: the head, records by seq or commit id (through the seq index), and
lookups in the head's tree (runs, incidents, trusted keys) instead of history scans.

Every read that is not given a commit to read at (``at``) reads at the head of the verified
view (:meth:`Reads.verified_head`): the chain up to ``main`` is verified first
(incrementally, from this copy's verified head), and a chain that does not verify is
refused (:class:`~ledger.errors.VerificationFailed`, naming the findings) unless
``allow_unverified`` is set. A record by commit id is one of that chain's records or none.

:class:`Reads` is the reading half of :class:`ledger.store.Ledger`, a mixin: the attributes
it declares are set by ``Ledger.__init__``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pygit2

from ledger import errors, keys
from ledger.format import records
from ledger.store import gitdir, seqindex, trees, trust, types


@dataclass(frozen=True)
class Tip:
    """The commit an append builds on."""

    commit_id: str
    seq: int
    tree: bytes  # 20-byte id of its tree
    raw: bytes  # the commit object's content (for Ledger-Prev-Sha256)


class Reads:
    """Reading records, the seq index, the head's tree and the keys it trusts."""

    path: Path
    repo: pygit2.Repository
    gitdir: Path
    _index: seqindex.SeqIndex
    _trees: trees.Trees
    _last: Tip | None  # the tip this object appended last
    _main_file: str
    _view: trust.TrustView | None  # the verified view at the head last read
    allow_unverified: bool  # append onto a head that does not verify (recorded)

    # -- head and lookups ---------------------------------------------------------------

    def head(self) -> types.Head | None:
        target = gitdir.main_target(self.repo, self.path)
        if target is None:
            return None
        commit = self._commit(target)
        return types.Head(str(commit.id), self._commit_seq(commit))

    def _read_main(self) -> str | None:
        """The commit id ``main`` names, read from its file (else through libgit2, which
        also knows packed refs)."""
        try:
            text = gitdir.read_own(self._main_file, 64).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
            return text
        target = gitdir.main_target(self.repo, self.path)
        return None if target is None else str(target)

    def _tip(self) -> Tip:
        """The commit ``main`` names, with what an append needs of it (the one this object
        appended last is remembered rather than read again)."""
        head = self._read_main()
        if head is None:
            raise errors.StorageError(f"the ledger at {self.path} has no {gitdir.MAIN_REF}.")
        if self._last is not None and self._last.commit_id == head:
            return self._last
        commit = self._commit(head)
        try:
            raw = bytes(self.repo.odb.read(commit.id)[1])
        except (KeyError, pygit2.GitError) as exc:
            raise gitdir.corrupt(self.path, f"the head commit {head}", exc) from None
        return Tip(head, self._commit_seq(commit), commit.tree_id.raw, raw)

    def _commit(self, oid: pygit2.Oid | str) -> pygit2.Commit:
        try:
            obj = self.repo[oid]
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise gitdir.corrupt(self.path, f"the commit {oid}", exc) from None
        if not isinstance(obj, pygit2.Commit):
            raise gitdir.corrupt(self.path, f"object {oid}", "it is not a commit")
        return obj

    def _tree(self, oid: pygit2.Oid, where: str) -> pygit2.Tree:
        """The tree ``oid`` (at ``where``); :class:`CorruptLedger` naming it if unreadable."""
        return read_tree(self.repo, self.path, oid, where)

    def _lookup(self, tree: pygit2.Tree, path: str) -> pygit2.Object | None:
        return lookup(self.repo, self.path, tree, path)

    @staticmethod
    def _commit_seq(commit: pygit2.Commit) -> int:
        trailers = records.parse_trailers(commit.message)
        try:
            return int(trailers["Ledger-Seq"])
        except (KeyError, ValueError):
            raise errors.StorageError(
                f"commit {commit.id} has no valid Ledger-Seq trailer; the ledger is damaged.",
                hint="Run 'ledger verify' to see what is wrong.",
            ) from None

    def _load(self, commit: pygit2.Commit) -> types.StoredRecord:
        trailers = records.parse_trailers(commit.message)
        path = trailers.get("Ledger-Record", "")
        try:
            seq = int(trailers["Ledger-Seq"])
            entry = self._tree(commit.tree_id, "/")[path]
            raw = trees.blob_data(self.repo, entry.id)
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("the record is not a JSON object")
        except (KeyError, ValueError, RecursionError, pygit2.GitError) as exc:
            raise gitdir.corrupt(
                self.path, f"the record {path or '(no Ledger-Record)'} of commit {commit.id}", exc
            ) from None
        return types.StoredRecord(
            commit_id=str(commit.id),
            seq=seq,
            kind=str(record.get("kind", "")),
            path=path,
            record=record,
            raw=raw,
            message=commit.message,
            commit_time=commit.commit_time,
            read_blob=self._read_blob_at,
        )

    def iter_records(
        self, *, newest_first: bool = True, start: str | None = None
    ) -> Iterator[types.StoredRecord]:
        """Records along the chain, streaming; from ``start`` (a commit id) or the verified
        head (:meth:`verified_head`)."""
        begin = start or self.verified_head()
        if begin is None:
            return
        oid: pygit2.Oid | None = pygit2.Oid(hex=begin)
        if newest_first:
            while oid is not None:
                commit = self._commit(oid)
                yield self._load(commit)
                oid = commit.parent_ids[0] if commit.parent_ids else None
            return
        ids: list[pygit2.Oid] = []
        while oid is not None:
            ids.append(oid)
            commit = self._commit(oid)
            oid = commit.parent_ids[0] if commit.parent_ids else None
        for one in reversed(ids):
            yield self._load(self._commit(one))

    def record(
        self, ref: str | int, *, at: str | None = None, signed: bool = False
    ) -> types.StoredRecord:
        """One record, by seq (an int or a decimal string) or by commit id (or prefix), of
        the chain ending at commit ``at`` (default: the verified head, :meth:`verified_head`).
        A commit that is not that chain's record at its seq is no record of this ledger.
        ``signed``: as :meth:`commit_for_seq` (always, for a commit id)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 12):
            return self._load(self._commit(self.commit_for_seq(int(ref), at=at, signed=signed)))
        text = str(ref)
        at = self.verified_head(at)
        try:
            obj = self.repo.revparse_single(text)
        except (KeyError, ValueError, pygit2.GitError):
            raise errors.InputError(
                f"no record with commit id {errors.quoted(text)} in this ledger.",
                hint="Give a seq number or a commit id from 'ledger log'.",
            ) from None
        if not isinstance(obj, pygit2.Commit):
            raise errors.InputError(f"{errors.quoted(text)} does not name a commit of this ledger.")
        if at is None or not self._is_chain_record(obj, at):
            raise errors.InputError(
                f"the commit {obj.id} is not a record of this ledger's chain (it is not "
                "reachable from the verified head at its seq).",
                hint="Give a seq number or a commit id from 'ledger log'; an unreachable "
                "commit in the ledger directory may be a forgery ('ledger verify').",
            )
        return self._load(obj)

    def _is_chain_record(self, commit: pygit2.Commit, at: str) -> bool:
        """Whether ``commit`` is the record at its own seq of the chain ending at ``at``."""
        try:
            seq = self._commit_seq(commit)
            return self.commit_for_seq(seq, at=at, signed=True) == str(commit.id)
        except (errors.InputError, errors.StorageError):
            return False

    # -- seq index -----------------------------------------------------------------------

    def commit_for_seq(self, seq: int, *, at: str | None = None, signed: bool = False) -> str:
        """The commit id of the record with ``seq`` on the chain ending at ``at`` (default:
        the verified head). The seq index is believed only when the head's tree holds that
        commit's record (whose own ``seq`` is ``seq``), and the files it lists, as the same
        blobs at the same paths: the chain's trees only grow (the append-only rule), so the
        record read is the chain's, checked without walking history. With ``signed`` (the
        commit's id or message is shown or recorded, not only its record) the commit must
        also be signed by a key the verified view trusted at ``seq``, which only the
        chain's own commit is. Otherwise the chain is walked back and the index repaired."""
        at = self.verified_head(at)
        head = None if at is None else types.Head(at, self._commit_seq(self._commit(at)))
        if head is None or seq < 0 or seq > head.seq:
            top = "none" if head is None else str(head.seq)
            raise errors.InputError(
                f"no record with seq {seq} in this ledger (the newest is {top})."
            )
        head_tree = self._commit(head.commit_id).tree
        hit = self._index.get(seq)
        if (
            hit is not None
            and _on_chain(self.repo, hit, seq, head_tree)
            and (not signed or _signed_at(self.repo, self._view, hit, seq))
        ):
            return str(hit)
        return self._walk_to(head, seq)

    def _walk_to(self, head: types.Head, seq: int) -> str:
        """Walk back from ``head`` to ``seq`` by first parents, repairing the index."""
        oid: pygit2.Oid | None = pygit2.Oid(hex=head.commit_id)
        at = head.seq
        while oid is not None:
            commit = self._commit(oid)
            if self._commit_seq(commit) != at:
                break
            self._index.put(at, commit.id)
            if at == seq:
                return str(commit.id)
            oid = commit.parent_ids[0] if commit.parent_ids else None
            at -= 1
        raise errors.StorageError(
            f"seq {seq} is not on the chain of {self.path}; it is damaged.",
            hint="Run 'ledger verify' to see what is wrong.",
        )

    # -- tree lookups --------------------------------------------------------------------

    def _head_tree(self, commit_id: str | None = None) -> pygit2.Tree | None:
        commit_id = self.verified_head(commit_id)
        if commit_id is None:
            return None
        return self._tree(self._commit(commit_id).tree_id, "/")

    def read_blob(self, path: str, *, commit_id: str | None = None) -> bytes:
        """The content of a file of the ledger's tree (at the verified head, or at
        ``commit_id``)."""
        tree = self._head_tree(commit_id)
        obj = None if tree is None else self._lookup(tree, path)
        if obj is None:
            raise errors.InputError(f"the ledger has no file {errors.quoted(path)}.")
        if not isinstance(obj, pygit2.Blob):
            raise errors.InputError(
                f"{errors.quoted(path)} in the ledger is a directory, not a file."
            )
        return bytes(obj.data)

    def _read_blob_at(self, path: str, commit_id: str) -> bytes:
        return self.read_blob(path, commit_id=commit_id)

    def _tree_at(self, path: str, at: str | None = None) -> pygit2.Tree | None:
        tree = self._head_tree(at)
        if tree is None:
            return None
        obj = self._lookup(tree, path)
        return obj if isinstance(obj, pygit2.Tree) else None

    # -- trust ---------------------------------------------------------------------------

    def trust_view(self) -> trust.TrustView:
        """The verified view at ``main``: the chain verified up to it (incrementally) and
        the trust set the verifier replays over it (:mod:`ledger.store.trust`)."""
        head = self._read_main()
        if head is None:
            raise errors.StorageError(f"the ledger at {self.path} has no {gitdir.MAIN_REF}.")
        self._view = trust.view_at(self.repo, head, self._view)
        return self._view

    def verified_head(self, at: str | None = None) -> str | None:
        """``at`` when given; else the head of the verified view at ``main`` (None when there
        is no ``main``). :class:`~ledger.errors.VerificationFailed`, naming the findings,
        when that chain does not verify, unless :attr:`allow_unverified` is set (then its
        head, unverified: the caller says so)."""
        if at is not None:
            return at
        if self._read_main() is None:
            return None
        view = self.trust_view()
        if not view.ok and not self.allow_unverified:
            raise view.refuse(self.path, "nothing is read from it")
        return view.head

    def signers(self) -> list[types.Signer]:
        """Every key the ledger has trusted, with revocations, as the verifier replays the
        chain up to ``main`` (a key record that fails any check changes nothing)."""
        if self._read_main() is None:
            return []
        return list(self.trust_view().signers)

    def trusted_signer(self, fingerprint: str) -> types.Signer | None:
        """The signer with ``fingerprint`` if it is trusted at ``main`` (verified view)."""
        if self._read_main() is None:
            return None
        return self.trust_view().trusted(fingerprint)


def _signed_at(
    repo: pygit2.Repository, view: trust.TrustView | None, oid: pygit2.Oid, seq: int
) -> bool:
    """Whether commit ``oid`` is signed by a key ``view`` trusted at ``seq`` (the genesis:
    is the verified genesis)."""
    if view is None or view.state is None:
        return False
    if seq == 0:
        return str(oid) == view.state.genesis
    try:
        _payload, public = keys.verify_signed_commit(bytes(repo.odb.read(oid)[1]))
    except (errors.SignatureError, KeyError, ValueError, pygit2.GitError):
        return False
    return any(
        s.fingerprint == public.fingerprint
        and s.added_seq < seq
        and (s.revoked_seq is None or s.revoked_seq > seq)
        for s in view.signers
    )


def _on_chain(repo: pygit2.Repository, oid: pygit2.Oid, seq: int, head_tree: pygit2.Tree) -> bool:
    """Whether commit ``oid`` holds record ``seq`` of the chain whose head has ``head_tree``
    (its record and every file the record lists are the head tree's blobs at those paths)."""
    try:
        commit = repo[oid]
        if not isinstance(commit, pygit2.Commit):
            return False
        trailers = records.parse_trailers(commit.message)
        if trailers.get("Ledger-Seq") != str(seq):
            return False
        path = trailers.get("Ledger-Record", "")
        entry = commit.tree[path]
        if head_tree[path].id != entry.id:
            return False
        record = json.loads(trees.blob_data(repo, entry.id))
        if not isinstance(record, dict) or record.get("seq") != seq:
            return False  # (another record of the chain, shown under this seq)
        files = record.get("files")
        for meta in files.values() if isinstance(files, dict) else ():
            other = str(meta.get("path", "")) if isinstance(meta, dict) else ""
            if commit.tree[other].id != head_tree[other].id:
                return False
    except (KeyError, ValueError, TypeError, AttributeError, errors.StorageError, pygit2.GitError):
        return False
    return True


def read_tree(
    repo: pygit2.Repository, where_ledger: Path, oid: pygit2.Oid, where: str
) -> pygit2.Tree:
    """The tree ``oid`` (at ``where`` in the ledger); :class:`CorruptLedger` naming it if it
    cannot be read."""
    try:
        obj = repo[oid]
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise gitdir.corrupt(where_ledger, f"the tree {oid} ({where or '/'})", exc) from None
    if not isinstance(obj, pygit2.Tree):
        raise gitdir.corrupt(where_ledger, f"object {oid} ({where or '/'})", "not a tree")
    return obj


def lookup(
    repo: pygit2.Repository, where_ledger: Path, tree: pygit2.Tree, path: str
) -> pygit2.Object | None:
    """The object at ``path`` under ``tree``, None if there is none; each tree on the way is
    read through :func:`read_tree`, so a damaged one is named."""
    node: pygit2.Object = tree
    parts = path.split("/")
    for i, part in enumerate(parts):
        if not isinstance(node, pygit2.Tree) or part not in node:
            return None
        entry_id = node[part].id
        if i < len(parts) - 1:
            node = read_tree(repo, where_ledger, entry_id, "/".join(parts[: i + 1]))
            continue
        try:
            node = repo[entry_id]
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise gitdir.corrupt(where_ledger, f"object {entry_id} ({path})", exc) from None
    return node
