"""The ledger repository: the only module that writes it and the ordinary way to read it.

Appends are durable and serialised: a record is acknowledged only after its objects and the
moved branch are on disk, and appends from several processes are serialised with an
exclusive lock on ``<gitdir>/ledger.lock`` plus a compare-and-swap of ``refs/heads/main``.
Reading answers from the tree (the layout of docs/FORMAT.md §4) and from a local seq index
instead of scanning history.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import os
import socket
import threading
import time as _time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger import __version__, packfile, records
from ledger.errors import (
    ConcurrentUpdate,
    InputError,
    LedgerExists,
    LedgerNotFound,
    LockTimeout,
    StorageError,
    UntrustedKey,
)
from ledger.format import gitobj
from ledger.signing import PublicKey, SigningKey, sign_commit

MAIN_REF = "refs/heads/main"
STATE_DIR = "ledger-state"
SEQ_INDEX = "seq-index"
LOCK_FILE = "ledger.lock"
PACK_LOCK_FILE = "ledger-pack.lock"
MERGE_LOCK_FILE = "ledger-merge.lock"
LOCK_TIMEOUT_S = 120.0
MERGE_EVERY = 16
"""Every this many records, the append that reaches a multiple merges the small packs
(one per append) into one, so that readers never search hundreds of packs."""
SMALL_PACK_OBJECTS = 64
"""A pack of at most this many objects is an append's own (merged every MERGE_EVERY)."""
MEDIUM_PACK_OBJECTS = MERGE_EVERY * SMALL_PACK_OBJECTS
"""A pack of at most this many objects is a merge of small packs (repacked every
PACK_EVERY with deltas); larger packs are only consolidated when there are MAX_PACKS."""
PACK_EVERY = 1000
"""Every this many records, the append that reaches a multiple starts repacking the loose
objects and the small and merged packs into one pack with deltas (in a background thread:
appends go on meanwhile)."""
MAX_PACKS = 32
UPKEEP_NICE = 19
"""The niceness of the upkeep threads (Linux schedules threads one by one)."""
"""When there are this many large packs, they are consolidated into one."""
_OID_LEN = 20


@dataclass(frozen=True)
class _Tip:
    """The commit an append builds on."""

    commit_id: str
    seq: int
    tree: bytes  # 20-byte id of its tree
    raw: bytes  # the commit object's content (for Ledger-Prev-Sha256)


@dataclass
class _OpenFiles:
    """Descriptors a ledger object keeps open across appends; closed by :meth:`close`, at
    the latest when the object is collected or the interpreter exits (``weakref.finalize``
    runs before modules are torn down, unlike ``__del__``)."""

    lock: int | None = None  # <gitdir>/ledger.lock
    gitdir: int | None = None  # the git directory, for syncfs
    index: int | None = None  # the seq index

    def close(self) -> None:
        for name in ("lock", "gitdir", "index"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


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
    record: dict[str, Any]
    parent: str | None = None
    """The commit it was appended onto (what ``main`` named under the append lock)."""


@dataclass(frozen=True)
class Signer:
    """A key trusted by the ledger at some point, with the records that added/revoked it."""

    principal: str
    public_key: PublicKey
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
    _ledger: Ledger | None = field(default=None, repr=False, compare=False)

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
        if path is None or self._ledger is None:
            raise InputError(f"record {self.seq} has no attached file {name!r}.")
        return self._ledger.read_blob(path, commit_id=self.commit_id)


# --- durability -------------------------------------------------------------------------

_libc: Any = None


def _syncfs(path: Path, fd: int | None = None) -> None:
    """Flush everything written to the filesystem holding ``path`` to stable storage.

    One ``syncfs(2)`` after writing a record's objects is much cheaper than an fsync per
    file and gives the same guarantee. ``fd`` is an open descriptor on that filesystem (else
    ``path`` is opened). Elsewhere than Linux: ``sync()``.
    """
    global _libc  # noqa: PLW0603
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs  # noqa: B018  (probe)
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        os.sync()
        return
    own = fd is None
    use = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if fd is None else fd
    try:
        if _libc.syncfs(use) != 0:
            err = ctypes.get_errno()
            raise StorageError(
                f"could not flush the ledger at {path} to disk: {os.strerror(err)}.",
                hint="Check the disk; the record was not acknowledged.",
            )
    finally:
        if own:
            os.close(use)


def open_repository(path: Path) -> pygit2.Repository:
    """The git repository at exactly ``path`` (no search upwards); :class:`LedgerNotFound`
    when there is none."""
    if not path.exists():
        raise LedgerNotFound(
            f"there is no ledger at {path} (the path does not exist).",
            hint="Create one with 'ledger init', or point --ledger at an existing one.",
        )
    try:
        return pygit2.Repository(str(path), pygit2.enums.RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError as exc:
        raise LedgerNotFound(
            f"{path} is not a ledger: it is not a git repository ({exc}).",
            hint="Point --ledger at a ledger made by 'ledger init' or 'ledger clone'.",
        ) from None


def _storage_error(action: str, path: Path, exc: BaseException) -> StorageError:
    text = str(exc)
    hint = "Check the path, its permissions and free disk space, then try again."
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space" in text:
        hint = "The disk is full: free space and try again; nothing was acknowledged."
    return StorageError(f"could not {action} the ledger at {path}: {text}.", hint=hint)


# --- the ledger -------------------------------------------------------------------------


class Ledger:
    """A ledger repository opened for reading and appending."""

    def __init__(self, path: Path, repo: pygit2.Repository) -> None:
        self.path = path
        self.repo = repo
        self.gitdir = Path(repo.path)
        cfg = repo.config
        try:
            self.ledger_id: str = str(cfg["ledger.id"])
            self.genesis_id: str = str(cfg["ledger.genesis"])
        except KeyError:
            raise LedgerNotFound(
                f"{path} is a git repository but not a ledger (its config has no ledger.id "
                "or ledger.genesis).",
                hint="Point --ledger at a ledger made by 'ledger init' or 'ledger clone'.",
            ) from None
        self.name: str = str(cfg["ledger.name"]) if "ledger.name" in cfg else ""
        self._signers_cache: tuple[str, list[Signer]] | None = None
        self.last_pack_error: StorageError | None = None
        self._packer: threading.Thread | None = None
        self._merger: threading.Thread | None = None
        self._full_pack_due = False
        self._trees = _Trees(repo)
        self._files = _OpenFiles()
        weakref.finalize(self, self._files.close)
        self._thread_lock = threading.Lock()
        self._last: _Tip | None = None
        # Paths an append uses, made once (building them is a visible part of an append).
        self._main_file = str(self.gitdir / MAIN_REF)
        self._pack_dir = self.gitdir / "objects" / "pack"
        self._head_is_main: bool | None = None

    # -- creation and opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Ledger:
        """Open an existing ledger; :class:`LedgerNotFound` if there is none."""
        repo = open_repository(path)
        if not repo.is_bare:
            raise LedgerNotFound(
                f"{path} is a git work tree, not a ledger (ledgers are bare repositories).",
                hint="Point --ledger at a ledger made by 'ledger init'.",
            )
        return cls(path, repo)

    @classmethod
    def adopt(cls, path: Path) -> Ledger:
        """Open a bare repository holding a ledger chain and write its ``ledger.*`` config
        from its genesis record (used after cloning)."""
        repo = pygit2.Repository(str(path))
        ref = repo.references.get(MAIN_REF)
        if ref is None:
            raise LedgerNotFound(f"{path} has no {MAIN_REF}; it holds no ledger.")
        commit = repo.get(ref.target)
        while isinstance(commit, pygit2.Commit) and commit.parents:
            commit = commit.parents[0]
        if not isinstance(commit, pygit2.Commit) or records.GENESIS_PATH not in commit.tree:
            raise LedgerNotFound(f"the first commit of {path} holds no genesis record.")
        genesis = json.loads(_blob_data(repo, commit.tree[records.GENESIS_PATH].id))
        repo.config["ledger.id"] = str(genesis.get("ledger", ""))
        repo.config["ledger.genesis"] = str(commit.id)
        repo.config["ledger.name"] = str(genesis.get("data", {}).get("name", ""))
        return cls(path, repo)

    @classmethod
    def init(
        cls,
        path: Path,
        *,
        name: str,
        key: SigningKey,
        principal: str,
        signers: list[tuple[str, PublicKey]] | None = None,
        host: str | None = None,
    ) -> Ledger:
        """Create a new ledger with its genesis record.

        The initial trusted signers are ``key`` as ``principal`` plus ``signers``. Raises
        :class:`LedgerExists` if ``path`` exists and is not an empty directory.
        """
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise LedgerExists(
                f"{path} already exists and is not empty; 'ledger init' never touches an "
                "existing ledger or directory.",
                hint="Choose another path, or use the existing ledger with --ledger.",
            )
        try:
            repo = pygit2.init_repository(str(path), bare=True, initial_head="main")
            cfg = repo.config
            cfg["receive.denyNonFastForwards"] = True
            cfg["receive.denyDeletes"] = True
            cfg["receive.fsckObjects"] = True
            cfg["core.logAllRefUpdates"] = "always"
            cfg["gc.auto"] = 0
            ledger_id = records.new_ledger_id()
            cfg["ledger.id"] = ledger_id
            cfg["ledger.name"] = name
        except (pygit2.GitError, OSError) as exc:
            raise _storage_error("create", path, exc) from None

        members = [(principal, key.public_key), *(signers or [])]
        data = {
            "name": name,
            "signers": [
                {"principal": p, "key": pk.openssh(), "fingerprint": pk.fingerprint}
                for p, pk in members
            ],
            "created_by": f"runbook-ledger {__version__}",
        }
        now = records.format_time(records.utc_now())
        record = records.make_record(
            ledger_id=ledger_id,
            seq=0,
            kind=records.KIND_GENESIS,
            time=now,
            run=None,
            principal=principal,
            key_fingerprint=key.public_key.fingerprint,
            host=host or socket.gethostname(),
            data=data,
            files={},
        )
        raw = records.canonical_json(record)
        try:
            blob = repo.create_blob(raw)
            tb = repo.TreeBuilder()
            tb.insert(records.GENESIS_PATH, blob, pygit2.enums.FileMode.BLOB)
            tree = tb.write()
            message = records.build_message(
                records.summarize(records.KIND_GENESIS, data),
                {
                    "Ledger-Id": ledger_id,
                    "Ledger-Seq": "0",
                    "Ledger-Kind": records.KIND_GENESIS,
                    "Ledger-Record": records.GENESIS_PATH,
                    "Ledger-Record-Sha256": records.sha256_hex(raw),
                },
            )
            oid = repo.odb.write(
                pygit2.enums.ObjectType.COMMIT,
                _signed_commit_bytes(key, principal, now, message, tree, []),
            )
            _syncfs(path)
            repo.references.create(MAIN_REF, oid)
            cfg["ledger.genesis"] = str(oid)
            _syncfs(path)
        except (pygit2.GitError, OSError) as exc:
            raise _storage_error("write the genesis record of", path, exc) from None
        ledger = cls(path, repo)
        ledger._index_put(0, oid)
        return ledger

    # -- configuration ------------------------------------------------------------------

    def config_get(self, key: str) -> str | None:
        cfg = self.repo.config
        return str(cfg[key]) if key in cfg else None

    def config_set(self, key: str, value: str) -> None:
        self.repo.config[key] = value

    # -- head and lookups ---------------------------------------------------------------

    def head(self) -> Head | None:
        ref = self.repo.references.get(MAIN_REF)
        if ref is None:
            return None
        commit = self._commit(ref.target)
        return Head(str(commit.id), self._commit_seq(commit))

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
            raw = _blob_data(self.repo, entry.id)
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
            _ledger=self,
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

    def _index_path(self) -> Path:
        return self.gitdir / STATE_DIR / SEQ_INDEX

    def _index_put(self, seq: int, oid: pygit2.Oid) -> None:
        """Record that ``seq`` is at ``oid`` (a local accelerator, never trusted blindly)."""
        try:
            if self._files.index is None:
                path = self._index_path()
                path.parent.mkdir(exist_ok=True)
                self._files.index = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            os.pwrite(self._files.index, oid.raw, seq * _OID_LEN)
        except OSError:
            # Only an accelerator: lookups check what it says and rebuild what is missing.
            if self._files.index is not None:
                fd, self._files.index = self._files.index, None
                os.close(fd)

    def close(self) -> None:
        """Close the files this object keeps open (it stays usable: they are reopened)."""
        self._files.close()

    def _index_get(self, seq: int) -> pygit2.Oid | None:
        try:
            with open(self._index_path(), "rb") as fh:
                fh.seek(seq * _OID_LEN)
                raw = fh.read(_OID_LEN)
        except FileNotFoundError:
            return None
        if len(raw) != _OID_LEN or raw == b"\0" * _OID_LEN:
            return None
        return pygit2.Oid(raw=raw)

    def commit_for_seq(self, seq: int) -> str:
        """The commit id of the record with ``seq`` on the current chain (via the index)."""
        head = self.head()
        if head is None or seq < 0 or seq > head.seq:
            top = "none" if head is None else str(head.seq)
            raise InputError(f"no record with seq {seq} in this ledger (the newest is {top}).")
        for attempt in range(2):
            if attempt or str(self._index_get(head.seq)) != head.commit_id:
                self._rebuild_index(head)
            hit = self._index_get(seq)
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
            if self._index_get(seq) == commit.id and seq != head.seq:
                return
            self._index_put(seq, commit.id)
            oid = commit.parent_ids[0] if commit.parent_ids else None

    # -- tree lookups --------------------------------------------------------------------

    def _head_tree(self, commit_id: str | None = None) -> pygit2.Tree | None:
        if commit_id is not None:
            return self._commit(commit_id).tree
        ref = self.repo.references.get(MAIN_REF)
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
        genesis = json.loads(_blob_data(self.repo, tree[records.GENESIS_PATH].id))
        by_fp: dict[str, Signer] = {}
        for s in genesis.get("data", {}).get("signers", []):
            pk = PublicKey.parse(s["key"])
            by_fp[pk.fingerprint] = Signer(s["principal"], pk, 0, None)
        keys_tree = self._tree_at(records.KEYS_DIR)
        for entry in sorted(keys_tree or [], key=lambda e: e.name or ""):
            rec = json.loads(_blob_data(self.repo, entry.id))
            d = rec.get("data", {})
            if rec.get("kind") == records.KIND_KEY_ADDED:
                pk = PublicKey.parse(d["key"])
                by_fp[pk.fingerprint] = Signer(d["principal"], pk, rec["seq"], rec["time"])
            elif rec.get("kind") == records.KIND_KEY_REVOKED:
                old = by_fp.get(d.get("fingerprint", ""))
                if old is not None:
                    by_fp[old.fingerprint] = Signer(
                        old.principal,
                        old.public_key,
                        old.added_seq,
                        old.added_time,
                        rec["seq"],
                        rec["time"],
                    )
        result = list(by_fp.values())
        self._signers_cache = (stamp, result)
        return result

    def trusted_signer(self, fingerprint: str) -> Signer | None:
        for s in self.signers():
            if s.fingerprint == fingerprint and s.active:
                return s
        return None

    # -- appending -----------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """The exclusive append lock (held across processes; released if we die).

        An ``flock`` on ``<gitdir>/ledger.lock`` through a descriptor this object keeps open,
        plus a thread lock, since threads sharing the descriptor would share the ``flock``.
        """
        path = self.gitdir / LOCK_FILE
        too_long = LockTimeout(
            f"another process has held the ledger lock {path} for over {timeout:.0f} s.",
            hint="Wait for it to finish, or find the stuck 'ledger' process.",
        )
        if not self._thread_lock.acquire(timeout=timeout):
            raise too_long
        try:
            try:
                fd = self._fds()[0]
            except OSError as exc:
                raise _storage_error("lock", self.path, exc) from None
            deadline = _time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _time.monotonic() > deadline:
                        raise too_long from None
                    _time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

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
        ref = self.repo.references.get(MAIN_REF)
        return None if ref is None else str(ref.target)

    def _tip(self) -> _Tip:
        """The commit ``main`` names, with what an append needs of it (the one this object
        appended last is remembered rather than read again)."""
        head = self._read_main()
        if head is None:
            raise StorageError(f"the ledger at {self.path} has no {MAIN_REF}.")
        if self._last is not None and self._last.commit_id == head:
            return self._last
        commit = self._commit(head)
        try:
            raw = bytes(self.repo.odb.read(commit.id)[1])
        except (KeyError, pygit2.GitError) as exc:
            raise _storage_error("read the head of", self.path, exc) from None
        return _Tip(head, self._commit_seq(commit), commit.tree_id.raw, raw)

    def _move_main(self, old: str, new: str, who: str, when: str, message: str) -> None:
        """Compare-and-swap ``main`` from ``old`` to ``new`` the way git does (holding
        ``refs/heads/main.lock``, renamed over the ref), and log it in the reflogs of
        ``main`` and ``HEAD`` with the signer as the identity. Not synced: the caller is."""
        ref = self._main_file
        lock = ref + ".lock"
        moved = ConcurrentUpdate(
            f"{MAIN_REF} of {self.path} moved while the append lock was held; something "
            "wrote to the ledger without taking the lock.",
            hint="Stop other tools writing to this repository; run 'ledger verify'.",
        )
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise moved from None  # a git process is updating the ref right now
        try:
            try:
                os.write(fd, f"{new}\n".encode("ascii"))
            finally:
                os.close(fd)
            if self._read_main() != old:
                raise moved
            os.replace(lock, ref)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            raise
        ident = records.clean_principal(who)
        seconds = _seconds(when)
        line = f"{old} {new} {ident} <{ident}> {seconds} +0000\t{message}\n".encode()
        logs = [self.gitdir / "logs" / MAIN_REF]
        if self._head_is_main is None:
            try:
                head = (self.gitdir / "HEAD").read_bytes().strip()
            except OSError:
                head = b""
            self._head_is_main = head == f"ref: {MAIN_REF}".encode()
        if self._head_is_main:
            logs.append(self.gitdir / "logs" / "HEAD")  # as git logs the branch HEAD names
        for log in logs:
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "ab") as fh:
                    fh.write(line)
            except OSError:
                continue  # the reflog is a convenience for people, not part of the ledger

    def _fds(self) -> tuple[int, int]:
        """The append lock's and the git directory's descriptors, kept open across appends
        (opening files is a large part of one)."""
        files = self._files
        if files.lock is None or files.gitdir is None:
            self._pack_dir.mkdir(parents=True, exist_ok=True)  # (git always makes it)
            if files.lock is None:
                files.lock = os.open(
                    self.gitdir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
                )
            if files.gitdir is None:
                files.gitdir = os.open(self.gitdir, os.O_RDONLY | os.O_CLOEXEC)
        return files.lock, files.gitdir

    def append(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        key: SigningKey,
        principal: str | None = None,
        run: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        summary: str | None = None,
        incident: str | None = None,
        host: str | None = None,
    ) -> Appended:
        """Append one record, signed with ``key``; returns once it is durable on disk.

        ``principal`` defaults to the principal the ledger trusts ``key`` as. Raises
        :class:`UntrustedKey` when ``key`` is not trusted at the head, :class:`InputError`
        for malformed data, :class:`StorageError` when writing fails (nothing is then
        acknowledged and the branch is unchanged).
        """
        if kind == records.KIND_GENESIS or kind not in records.KINDS:
            raise InputError(f"cannot append a record of kind {kind!r}.")
        if run is not None:
            records.check_run_id(run)
        attachments = dict(attachments or {})
        for name in attachments:
            if not records.FILE_NAME_RE.match(name) or name == "json":
                raise InputError(f"{name!r} is not a valid attachment name.")
        fingerprint = key.public_key.fingerprint
        with self.lock():
            parent = self._tip()
            parent_seq = parent.seq
            signer = self.trusted_signer(fingerprint)
            if signer is None:
                raise UntrustedKey(
                    f"the key {fingerprint} is not trusted by this ledger, so it cannot sign "
                    "records here.",
                    hint="Use a trusted key (see 'ledger keys list'), or have a trusted signer "
                    "add this one with 'ledger keys add'.",
                )
            who = principal or signer.principal
            seq = parent_seq + 1
            now = records.format_time(records.utc_now())
            path = records.record_path(kind, seq, run, now)
            try:
                objects = packfile.PackWriter()
                additions: dict[str, bytes] = {}
                files: dict[str, dict[str, Any]] = {}
                for name, content in sorted(attachments.items()):
                    apath = records.attachment_path(path, name)
                    additions[apath] = objects.add(gitobj.OBJ_BLOB, content)
                    files[name] = {
                        "path": apath,
                        "sha256": records.sha256_hex(content),
                        "size": len(content),
                    }
                if incident is not None and kind == records.KIND_RUN_STARTED and run:
                    ipath = records.incident_index_path(incident, run)
                    content = (path + "\n").encode()
                    additions[ipath] = objects.add(gitobj.OBJ_BLOB, content)
                    files["incident-index"] = {
                        "path": ipath,
                        "sha256": records.sha256_hex(content),
                        "size": len(content),
                    }
                record = records.make_record(
                    ledger_id=self.ledger_id,
                    seq=seq,
                    kind=kind,
                    time=now,
                    run=run,
                    principal=who,
                    key_fingerprint=fingerprint,
                    host=host or socket.gethostname(),
                    data=data,
                    files=files,
                )
                raw = records.canonical_json(record)
                additions[path] = objects.add(gitobj.OBJ_BLOB, raw)
                tree = self._trees.add(objects, parent.tree, additions)
                message = records.build_message(
                    summary or records.summarize(kind, data),
                    {
                        "Ledger-Id": self.ledger_id,
                        "Ledger-Seq": str(seq),
                        "Ledger-Kind": kind,
                        "Ledger-Record": path,
                        "Ledger-Record-Sha256": records.sha256_hex(raw),
                        "Ledger-Prev-Sha256": records.git_object_sha256("commit", parent.raw),
                    },
                )
                commit_raw = _signed_commit_bytes(
                    key, who, now, message, pygit2.Oid(raw=tree), [parent.commit_id]
                )
                oid = pygit2.Oid(raw=objects.add(gitobj.OBJ_COMMIT, commit_raw))
                objects.write(self._pack_dir)
                _syncfs(self.gitdir, self._fds()[1])
                self._move_main(parent.commit_id, str(oid), who, now, f"ledger: append seq {seq}")
                _syncfs(self.gitdir, self._fds()[1])
            except (pygit2.GitError, OSError) as exc:
                raise _storage_error("append to", self.path, exc) from None
            self._last = _Tip(str(oid), seq, tree, commit_raw)
            self._index_put(seq, oid)
        if seq % PACK_EVERY == 0:
            self.start_packing()
        elif seq % MERGE_EVERY == 0:
            self.start_packing(full=False)
        return Appended(str(oid), seq, path, record, parent.commit_id)

    # -- packing -------------------------------------------------------------------------

    def start_packing(self, *, full: bool = True) -> None:
        """Start pack upkeep in the background: with ``full``, a repack with deltas
        (:func:`pack_objects`), else a merge of the small packs (:func:`merge_small_packs`).

        Upkeep must not pause the appends that follow (a run's steps go on while it works):
        the records are durable and acknowledged before it starts. Each kind has one thread
        per ledger object, and merges go on while a (long) repack runs, so small packs never
        pile up; a repack asked for while one is running is started by a later call. The
        threads are not daemons, so a process that ends waits for them rather than leaving
        a half-written pack behind. A failure is kept in :attr:`last_pack_error`; nothing is
        removed before its replacement is on disk.
        """
        self._full_pack_due = self._full_pack_due or full
        if self._full_pack_due and not _alive(self._packer):
            self._full_pack_due = False
            self._packer = self._upkeep(pack_objects, "ledger-pack", threads=1)
        elif not full and not _alive(self._merger):
            self._merger = self._upkeep(merge_small_packs, "ledger-merge")

    def wait_for_packing(self) -> None:
        """Wait until the upkeep started by :meth:`start_packing` has finished."""
        for thread in (self._packer, self._merger):
            if thread is not None:
                thread.join()

    def _upkeep(self, work: Callable[..., int], name: str, **kwargs: Any) -> threading.Thread:
        def run() -> None:
            with contextlib.suppress(OSError, AttributeError):
                # Background work yields the CPU to the appends and the run's commands.
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), UPKEEP_NICE)
            try:
                # A repository object of its own: the appending thread keeps using self.repo.
                work(open_repository(self.gitdir), self.gitdir, **kwargs)
                self.last_pack_error = None
            except StorageError as exc:
                self.last_pack_error = exc
            except LedgerNotFound as exc:  # the ledger's directory was removed meanwhile
                self.last_pack_error = StorageError(exc.message)

        thread = threading.Thread(target=run, name=name, daemon=False)
        thread.start()
        return thread

    def pack_objects(self) -> int:
        """Pack the loose objects now, in this thread (see :func:`pack_objects`)."""
        return pack_objects(self.repo, self.gitdir)


@dataclass(frozen=True)
class _Pack:
    base: Path  # objects/pack/pack-<sha1> (without suffix)
    count: int


def _list_packs(pack_dir: Path) -> list[_Pack]:
    """The packs in ``pack_dir`` with their object counts (packs with a ``.keep`` file, or
    whose index cannot be read, are left out: they are never merged or removed)."""
    found: list[_Pack] = []
    for idx in sorted(pack_dir.glob("pack-*.idx")):
        base = idx.with_suffix("")
        if base.with_suffix(".keep").exists() or not base.with_suffix(".pack").exists():
            continue
        try:
            with open(idx, "rb") as fh:
                head = fh.read(8 + 1024)
        except OSError:
            continue  # removed meanwhile by another packer
        if len(head) < 8 + 1024 or head[:4] != b"\377tOc":
            continue
        found.append(_Pack(base, int.from_bytes(head[8 + 1020 : 8 + 1024], "big")))
    return found


def _pack_oids(pack: _Pack) -> list[pygit2.Oid]:
    return [
        pygit2.Oid(raw=raw)
        for raw in packfile.index_object_ids(pack.base.with_suffix(".idx").read_bytes())
    ]


def _remove_packs(packs: list[_Pack]) -> None:
    for pack in packs:
        # The index first: readers find packs by their index.
        for suffix in (".idx", ".rev", ".pack"):
            pack.base.with_suffix(suffix).unlink(missing_ok=True)


STALE_LEFTOVER_S = 600.0
"""A temporary pack file, or a pack without its index, older than this is a leftover of a
writer that died mid-append (never acknowledged, never referenced) and is removed."""


def _remove_stale_leftovers(pack_dir: Path) -> None:
    cutoff = _time.time() - STALE_LEFTOVER_S
    for path in pack_dir.iterdir():
        name = path.name
        leftover = name.startswith("tmp_ledger_") or (
            name.startswith("pack-")
            and name.endswith(".pack")
            and not path.with_suffix(".idx").exists()
        )
        if not leftover:
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            continue


@contextmanager
def _pack_lock(gitdir: Path, name: str = PACK_LOCK_FILE) -> Iterator[bool]:
    """Whether this caller holds the ledger's packing (or merging) lock; never waits."""
    try:
        fd = os.open(gitdir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _storage_error("pack the objects of", gitdir, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # another thread or process is packing this ledger
            return
        yield True
    finally:
        os.close(fd)


def merge_small_packs(repo: pygit2.Repository, gitdir: Path) -> int:
    """Merge the small packs (each append writes one) into one pack, objects stored whole.

    Cheap (no delta search: the objects are copied), and run every :data:`MERGE_EVERY`
    records. The merged pack is on disk before any small pack is removed, and only packs
    listed before it was written are removed. Returns the packs merged.
    """
    pack_dir = gitdir / "objects" / "pack"
    try:
        with _pack_lock(gitdir, MERGE_LOCK_FILE) as locked:
            if not locked:
                return 0
            _remove_stale_leftovers(pack_dir)
            small = [p for p in _list_packs(pack_dir) if p.count <= SMALL_PACK_OBJECTS]
            if len(small) < 2:
                return 0
            writer = packfile.PackWriter()
            merged: list[_Pack] = []
            for pack in small:
                try:
                    entries = packfile.whole_entries(
                        pack.base.with_suffix(".pack").read_bytes(),
                        pack.base.with_suffix(".idx").read_bytes(),
                    )
                except FileNotFoundError:
                    continue  # a repack running beside this merge took it already
                if entries is not None:  # an append's pack: its entries are copied as is
                    for raw, entry in entries:
                        writer.add_entry(raw, entry)
                else:
                    for oid in _pack_oids(pack):  # (a fetched pack may hold deltas)
                        obj_type, data = repo.odb.read(oid)
                        writer.add(int(obj_type), bytes(data))
                merged.append(pack)
            if len(merged) < 2:
                return 0
            writer.write(pack_dir)
            _syncfs(gitdir)
            _remove_packs(merged)
            return len(merged)
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise _storage_error("merge the packs of", gitdir, exc) from None


def pack_objects(repo: pygit2.Repository, gitdir: Path, *, threads: int = 0) -> int:
    """Repack the loose objects and the small and merged packs into one pack with deltas
    (or, when there are :data:`MAX_PACKS` large packs, every object into one).

    Run every :data:`PACK_EVERY` records, so that a ledger of 100,000 records is a few
    compact packs rather than 700,000 files. Appends may go on meanwhile: only the loose
    objects and packs listed before the new pack was written are removed, and only once it
    is on disk. Two packings of one ledger never overlap (an ``flock`` on
    ``<gitdir>/ledger-pack.lock``; the second returns 0 at once). ``threads`` is the delta
    search's (0: as many as there are cores). Returns the objects packed.
    """
    objects = gitdir / "objects"
    pack_dir = objects / "pack"
    try:
        with _pack_lock(gitdir) as locked:
            if not locked:
                return 0
            packs = _list_packs(pack_dir)
            loose = list(_loose_objects(objects))
            large = [p for p in packs if p.count > MEDIUM_PACK_OBJECTS]
            if len(large) >= MAX_PACKS:
                drop = packs
                # The odb lists an object once per place it is stored (loose, each pack).
                wanted = {oid.raw for oid in repo.odb}
            else:
                drop = []
                wanted = {oid.raw for _, oid in loose}
                for pack in packs:
                    if pack.count > MEDIUM_PACK_OBJECTS:
                        continue
                    try:
                        wanted.update(oid.raw for oid in _pack_oids(pack))
                    except FileNotFoundError:
                        continue  # a merge running beside this repack took it already
                    drop.append(pack)
                if not loose and len(drop) < 2:
                    return 0
            builder = pygit2.PackBuilder(repo)
            builder.set_threads(threads)
            for raw in wanted:
                builder.add(pygit2.Oid(raw=raw))
            builder.write(str(pack_dir))
            if builder.written_objects_count != len(wanted):
                raise StorageError(
                    f"packing {gitdir} wrote {builder.written_objects_count} of {len(wanted)} "
                    "objects; nothing was removed.",
                    hint="Run 'ledger verify'; check free disk space.",
                )
            _syncfs(gitdir)
            written = {p.base for p in _list_packs(pack_dir)} - {p.base for p in packs}
            if written:  # (the same set of objects again would be the same pack)
                _remove_packs(drop)
            _remove_loose(loose)
            return len(wanted)
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise _storage_error("pack the objects of", gitdir, exc) from None


def _loose_objects(objects: Path) -> Iterator[tuple[Path, pygit2.Oid]]:
    for fan in objects.iterdir():
        if len(fan.name) != 2 or not fan.is_dir():
            continue
        for file in fan.iterdir():
            name = fan.name + file.name
            if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
                yield file, pygit2.Oid(hex=name)


def _remove_loose(loose: list[tuple[Path, pygit2.Oid]]) -> None:
    """Remove packed loose objects, and their fan-out directories once empty (a directory
    emptied of thousands of entries stays slow to add to)."""
    for file, _ in loose:
        file.unlink(missing_ok=True)
    for directory in {file.parent for file, _ in loose}:
        try:
            directory.rmdir()
        except OSError:  # not empty: another writer added an object meanwhile
            continue


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _seconds(time: str) -> int:
    """Seconds since the epoch of a record time (``YYYY-MM-DDTHH:MM:SS.ffffffZ``)."""
    return int(datetime.fromisoformat(time).timestamp())


def _signed_commit_bytes(
    key: SigningKey,
    principal: str,
    time: str,
    message: str,
    tree: pygit2.Oid,
    parents: list[str | pygit2.Oid],
) -> bytes:
    """The raw signed commit, formatted exactly as libgit2's ``create_commit_string`` and
    ``create_commit_with_signature`` would (the tree need not be in the repository yet)."""
    content = gitobj.commit_content(
        str(tree),
        [str(parent) for parent in parents],
        records.clean_principal(principal),
        _seconds(time),
        message,
    )
    signature = sign_commit(content, key)
    return gitobj.add_signature(content, signature.encode("ascii"))


def _blob_data(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    obj = repo.get(oid)
    if not isinstance(obj, pygit2.Blob):
        raise StorageError(
            f"object {oid} is not a file; the ledger is damaged.",
            hint="Run 'ledger verify' to see what is wrong.",
        )
    return bytes(obj.data)


class _Trees:
    """Builds the new trees of an append: a base tree plus new files, never replacing one.

    Base trees are read from the repository, or taken from the trees this object built for
    the previous append (the next append of a run builds on exactly those), so a run's
    growing directory is not parsed again at every step. Entries are kept as dicts in git's
    order; a new name that sorts after the others (a run's next record) is simply appended.
    """

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self._built: dict[bytes, dict[bytes, tuple[bytes, bytes]]] = {}
        self._raw: dict[bytes, bytes] = {}  # the serialized trees of the last append

    def entries(self, oid: bytes, where: str) -> dict[bytes, tuple[bytes, bytes]]:
        """name -> (mode, id) of the tree ``oid``, in git's order."""
        hit = self._built.get(oid)
        if hit is not None:
            return hit
        obj_type, raw = self.repo.odb.read(pygit2.Oid(raw=oid))
        if obj_type != pygit2.enums.ObjectType.TREE:
            raise StorageError(f"{where or '/'} is a file in the ledger, not a directory.")
        try:
            parsed = gitobj.parse_tree(raw)
        except ValueError as exc:
            raise StorageError(
                f"the tree at {where or '/'} is damaged ({exc}).",
                hint="Run 'ledger verify' to see what is wrong.",
            ) from None
        keys = [gitobj.git_order(name, mode) for mode, name, _ in parsed]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise StorageError(
                f"the tree at {where or '/'} is not in git's order; the ledger is damaged.",
                hint="Run 'ledger verify' to see what is wrong.",
            )
        return {name: (mode, eid) for mode, name, eid in parsed}

    def add(
        self, objects: packfile.PackWriter, base: bytes | None, additions: Mapping[str, bytes]
    ) -> bytes:
        """The id of ``base`` plus ``additions`` (path -> blob id); new trees go to
        ``objects``."""
        nested: dict[str, Any] = {}
        for path, oid in additions.items():
            parts = path.split("/")
            node = nested
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = oid
        built: dict[bytes, dict[bytes, tuple[bytes, bytes]]] = {}
        raws: dict[bytes, bytes] = {}
        oid = self._build(objects, base, nested, "", built, raws)
        self._built, self._raw = built, raws
        return oid

    def _build(
        self,
        objects: packfile.PackWriter,
        base: bytes | None,
        node: Mapping[str, Any],
        where: str,
        built: dict[bytes, dict[bytes, tuple[bytes, bytes]]],
        raws: dict[bytes, bytes],
    ) -> bytes:
        entries = dict(self.entries(base, where)) if base is not None else {}
        last = gitobj.git_order(
            *next(((k, v[0]) for k, v in reversed(entries.items())), (b"", b""))
        )
        in_order = True
        added: list[bytes] = []  # new names, in order
        changes = sorted(
            ((name.encode("utf-8"), value) for name, value in node.items()),
            key=lambda item: gitobj.git_order(
                item[0], gitobj.MODE_TREE if isinstance(item[1], dict) else gitobj.MODE_BLOB
            ),
        )
        for key, value in changes:
            name = key.decode("utf-8")
            existing = entries.get(key)
            if isinstance(value, dict):
                sub: bytes | None = None
                if existing is not None:
                    if existing[0] != gitobj.MODE_TREE:
                        raise StorageError(
                            f"{where}{name} is a file in the ledger, not a directory."
                        )
                    sub = existing[1]
                entries[key] = (
                    gitobj.MODE_TREE,
                    self._build(objects, sub, value, f"{where}{name}/", built, raws),
                )
            else:
                if existing is not None:
                    raise StorageError(
                        f"{where}{name} already exists in the ledger; records never replace files.",
                        hint="Run 'ledger verify'; the ledger may have been tampered with.",
                    )
                entries[key] = (gitobj.MODE_BLOB, value)
            if existing is None:  # a new name: still in order if it sorts after the rest
                order = gitobj.git_order(key, entries[key][0])
                in_order = in_order and order > last
                last = max(last, order)
                added.append(key)
        base_raw = self._raw.get(base) if base is not None else b""
        if in_order and base_raw is not None and len(added) == len(changes):
            # Only new names, after the others (a run's next record): the base tree's bytes
            # followed by the new entries.
            raw = base_raw + b"".join(
                entries[k][0] + b" " + k + b"\0" + entries[k][1] for k in added
            )
        else:
            if not in_order:
                entries = dict(
                    sorted(entries.items(), key=lambda kv: gitobj.git_order(kv[0], kv[1][0]))
                )
            raw = b"".join(mode + b" " + n + b"\0" + eid for n, (mode, eid) in entries.items())
        oid = objects.add(gitobj.OBJ_TREE, raw)
        built[oid] = entries
        raws[oid] = raw
        return oid
