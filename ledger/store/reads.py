"""Reading the ledger: the head, records by seq or commit id (through the seq index), and
lookups in the head's tree (runs, incidents, trusted keys) instead of history scans.

:class:`Reads` is the reading half of :class:`ledger.store.Ledger`, a mixin: the attributes
it declares are set by ``Ledger.__init__``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pygit2

from ledger.errors import InputError, StorageError
from ledger.format import records
from ledger.store import gitdir, trees, trust
from ledger.store.seqindex import SeqIndex
from ledger.store.types import Head, Signer, StoredRecord


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
    _index: SeqIndex
    _trees: trees.Trees
    _last: Tip | None  # the tip this object appended last
    _main_file: str
    _signers_cache: tuple[str, list[Signer]] | None

    # -- head and lookups ---------------------------------------------------------------

    def head(self) -> Head | None:
        ref = self.repo.references.get(gitdir.MAIN_REF)
        if ref is None:
            return None
        commit = self._commit(ref.target)
        return Head(str(commit.id), self._commit_seq(commit))

    def _read_main(self) -> str | None:
        """The commit id ``main`` names, read from its file (else through libgit2, which
        also knows packed refs)."""
        try:
            with open(self._main_file, "rb") as fh:
                text = fh.read(64).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
            return text
        ref = self.repo.references.get(gitdir.MAIN_REF)
        return None if ref is None else str(ref.target)

    def _tip(self) -> Tip:
        """The commit ``main`` names, with what an append needs of it (the one this object
        appended last is remembered rather than read again)."""
        head = self._read_main()
        if head is None:
            raise StorageError(f"the ledger at {self.path} has no {gitdir.MAIN_REF}.")
        if self._last is not None and self._last.commit_id == head:
            return self._last
        commit = self._commit(head)
        try:
            raw = bytes(self.repo.odb.read(commit.id)[1])
        except (KeyError, pygit2.GitError) as exc:
            raise gitdir.storage_error("read the head of", self.path, exc) from None
        return Tip(head, self._commit_seq(commit), commit.tree_id.raw, raw)

    def _commit(self, oid: pygit2.Oid | str) -> pygit2.Commit:
        try:
            obj = self.repo[oid]
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise StorageError(
                f"the ledger at {self.path} is corrupted: object {oid} cannot be read ({exc}).",
                hint="Run 'ledger verify' to see what is damaged; restore from a remote with "
                "'ledger clone'.",
            ) from None
        if not isinstance(obj, pygit2.Commit):
            raise StorageError(f"object {oid} in {self.path} is not a commit.")
        return obj

    @staticmethod
    def _commit_seq(commit: pygit2.Commit) -> int:
        trailers = records.parse_trailers(commit.message)
        try:
            return int(trailers["Ledger-Seq"])
        except (KeyError, ValueError):
            raise StorageError(
                f"commit {commit.id} has no valid Ledger-Seq trailer; the ledger is damaged.",
                hint="Run 'ledger verify' to see what is wrong.",
            ) from None

    def _load(self, commit: pygit2.Commit) -> StoredRecord:
        trailers = records.parse_trailers(commit.message)
        path = trailers.get("Ledger-Record", "")
        try:
            seq = int(trailers["Ledger-Seq"])
            entry = commit.tree[path]
            raw = trees.blob_data(self.repo, entry.id)
            record = json.loads(raw)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            raise StorageError(
                f"commit {commit.id} does not hold a readable record ({exc}); the ledger is "
                "damaged.",
                hint="Run 'ledger verify' to see what is wrong.",
            ) from None
        return StoredRecord(
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
    ) -> Iterator[StoredRecord]:
        """Records along the chain, streaming; from ``start`` (a commit id) or the head."""
        head = self.head()
        if head is None:
            return
        oid: pygit2.Oid | None = pygit2.Oid(hex=start or head.commit_id)
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

    def record(self, ref: str | int) -> StoredRecord:
        """One record, by seq (an int or a decimal string) or by commit id (or prefix)."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 12):
            return self._load(self._commit(self.commit_for_seq(int(ref))))
        text = str(ref)
        try:
            obj = self.repo.revparse_single(text)
        except (KeyError, ValueError, pygit2.GitError):
            raise InputError(
                f"no record with commit id {text!r} in this ledger.",
                hint="Give a seq number or a commit id from 'ledger log'.",
            ) from None
        if not isinstance(obj, pygit2.Commit):
            raise InputError(f"{text!r} does not name a commit of this ledger.")
        return self._load(obj)

    # -- seq index -----------------------------------------------------------------------

    def commit_for_seq(self, seq: int) -> str:
        """The commit id of the record with ``seq`` on the current chain (via the index)."""
        head = self.head()
        if head is None or seq < 0 or seq > head.seq:
            top = "none" if head is None else str(head.seq)
            raise InputError(f"no record with seq {seq} in this ledger (the newest is {top}).")
        for attempt in range(2):
            if attempt or str(self._index.get(head.seq)) != head.commit_id:
                self._rebuild_index(head)
            hit = self._index.get(seq)
            if hit is not None and hit in self.repo and self._commit_seq(self._commit(hit)) == seq:
                return str(hit)
        raise StorageError(
            f"seq {seq} is not on the chain of {self.path}; it is damaged.",
            hint="Run 'ledger verify' to see what is wrong.",
        )

    def _rebuild_index(self, head: Head) -> None:
        """Bring the seq index up to date, walking back from the head to where it agrees."""
        oid: pygit2.Oid | None = pygit2.Oid(hex=head.commit_id)
        while oid is not None:
            commit = self._commit(oid)
            seq = self._commit_seq(commit)
            if self._index.get(seq) == commit.id and seq != head.seq:
                return
            self._index.put(seq, commit.id)
            oid = commit.parent_ids[0] if commit.parent_ids else None

    # -- tree lookups --------------------------------------------------------------------

    def _head_tree(self, commit_id: str | None = None) -> pygit2.Tree | None:
        if commit_id is not None:
            return self._commit(commit_id).tree
        ref = self.repo.references.get(gitdir.MAIN_REF)
        return None if ref is None else self._commit(ref.target).tree

    def read_blob(self, path: str, *, commit_id: str | None = None) -> bytes:
        """The content of a file of the ledger's tree (at the head, or at ``commit_id``)."""
        tree = self._head_tree(commit_id)
        try:
            if tree is None:
                raise KeyError(path)
            obj = self.repo[tree[path].id]
        except KeyError:
            raise InputError(f"the ledger has no file {path!r}.") from None
        if not isinstance(obj, pygit2.Blob):
            raise InputError(f"{path!r} in the ledger is a directory, not a file.")
        return bytes(obj.data)

    def _read_blob_at(self, path: str, commit_id: str) -> bytes:
        return self.read_blob(path, commit_id=commit_id)

    def _tree_at(self, path: str) -> pygit2.Tree | None:
        tree = self._head_tree()
        if tree is None:
            return None
        try:
            obj = self.repo[tree[path].id]
        except KeyError:
            return None
        return obj if isinstance(obj, pygit2.Tree) else None

    def run_dir(self, run_id: str) -> str:
        return records.record_dir(records.KIND_RUN_STARTED, 0, records.check_run_id(run_id), "")

    def run_records(self, run_id: str) -> list[StoredRecord]:
        """All records of one run, in seq order, found through the tree (no history scan)."""
        directory = self.run_dir(run_id)
        tree = self._tree_at(directory)
        if tree is None:
            return []
        names = sorted(e.name for e in tree if e.name and e.name.endswith(".json"))
        return [self.record(int(name.split("-", 1)[0])) for name in names]

    def run_file_names(self, run_id: str) -> list[str]:
        """The record files of one run (``SEQ-KIND.json``), in seq order, from the tree."""
        tree = self._tree_at(self.run_dir(run_id))
        return sorted(e.name for e in tree or [] if e.name and e.name.endswith(".json"))

    def run_ids(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        """Run ids whose start date lies in [since, until] (by the date shards)."""
        root = self._tree_at(records.RUNS_DIR)
        if root is None:
            return []
        lo = f"{since:%Y%m%d}" if since else "00000000"
        hi = f"{until:%Y%m%d}" if until else "99999999"
        out: list[str] = []
        for year in sorted(e.name or "" for e in root):
            if year < lo[:4] or year > hi[:4]:
                continue
            ytree = self._tree_at(f"{records.RUNS_DIR}/{year}")
            for month in sorted(e.name or "" for e in ytree or []):
                if f"{year}{month}" < lo[:6] or f"{year}{month}" > hi[:6]:
                    continue
                mtree = self._tree_at(f"{records.RUNS_DIR}/{year}/{month}")
                for day in sorted(e.name or "" for e in mtree or []):
                    if not lo <= f"{year}{month}{day}" <= hi:
                        continue
                    dtree = self._tree_at(f"{records.RUNS_DIR}/{year}/{month}/{day}")
                    out.extend(sorted(e.name or "" for e in dtree or []))
        return out

    def runs_for_incident(self, incident: str) -> list[str]:
        """Run ids recorded for ``incident`` (from the tree's incident index)."""
        tree = self._tree_at(f"{records.INCIDENTS_DIR}/{records.check_incident(incident)}")
        if tree is None:
            return []
        return sorted(e.name or "" for e in tree)

    def unfinished_runs(self) -> list[str]:
        """Runs with a run.started record and no run.finished record."""
        out = []
        for run_id in self.run_ids():
            tree = self._tree_at(self.run_dir(run_id))
            names = [e.name or "" for e in tree or []]
            if not any(n.endswith("-run.finished.json") for n in names):
                out.append(run_id)
        return out

    # -- trust ---------------------------------------------------------------------------

    def signers(self) -> list[Signer]:
        """Every key the ledger has trusted, from genesis and the tree's ``keys/``, with
        revocations applied (as the records say; ``ledger verify`` checks the signatures)."""
        if self._read_main() is None:
            return []
        tip = self._tip()
        # Trust changes only with genesis.json and keys/: key the cache on their ids (read
        # from the root tree the last append built, when it is the head's).
        root = self._trees.entries(tip.tree, "")
        genesis_entry = root.get(records.GENESIS_PATH.encode())
        keys_entry = root.get(records.KEYS_DIR.encode())
        stamp = (genesis_entry[1].hex() if genesis_entry else "") + (
            keys_entry[1].hex() if keys_entry else ""
        )
        if self._signers_cache and self._signers_cache[0] == stamp:
            return self._signers_cache[1]
        tree = self._commit(tip.commit_id).tree
        result = trust.signers_in(self.repo, tree, self._tree_at(records.KEYS_DIR))
        self._signers_cache = (stamp, result)
        return result

    def trusted_signer(self, fingerprint: str) -> Signer | None:
        for s in self.signers():
            if s.fingerprint == fingerprint and s.active:
                return s
        return None
