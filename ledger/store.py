"""The ledger repository: the only module that writes it and the ordinary way to read it.

Appends are durable and serialised: a record is acknowledged only after its objects and the
moved branch are on disk, and appends from several processes are serialised with an
exclusive lock on ``<gitdir>/ledger.lock`` plus a compare-and-swap of ``refs/heads/main``.
Reading answers from the tree (the layout of docs/FORMAT.md §4) and from a local seq index
instead of scanning history.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import socket
import time as _time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger import __version__, records
from ledger.errors import (
    ConcurrentUpdate,
    InputError,
    LedgerExists,
    LedgerNotFound,
    LockTimeout,
    StorageError,
    UntrustedKey,
)
from ledger.signing import PublicKey, SigningKey, sign_commit

MAIN_REF = "refs/heads/main"
STATE_DIR = "ledger-state"
SEQ_INDEX = "seq-index"
LOCK_FILE = "ledger.lock"
LOCK_TIMEOUT_S = 120.0
PACK_EVERY = 1000
"""Every this many records, the append that reaches a multiple packs the loose objects."""
MAX_PACKS = 32
"""When there are more packs than this, they are consolidated into one."""
_OID_LEN = 20


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


def _syncfs(path: Path) -> None:
    """Flush everything written to the filesystem holding ``path`` to stable storage.

    One ``syncfs(2)`` after writing a record's handful of objects is much cheaper than an
    fsync per object file and gives the same guarantee. Elsewhere than Linux: ``sync()``.
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
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StorageError(
                f"could not flush the ledger at {path} to disk: {os.strerror(err)}.",
                hint="Check the disk; the record was not acknowledged.",
            )
    finally:
        os.close(fd)


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
            oid = _signed_commit(repo, key, principal, now, message, tree, [])
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
        path = self._index_path()
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, oid.raw, seq * _OID_LEN)
        finally:
            os.close(fd)

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
        ref = self.repo.references.get(MAIN_REF)
        if ref is None:
            return []
        tree = self._commit(ref.target).tree
        # Trust changes only with genesis.json and keys/: key the cache on their ids.
        stamp = str(tree[records.GENESIS_PATH].id) + (
            str(tree[records.KEYS_DIR].id) if records.KEYS_DIR in tree else ""
        )
        if self._signers_cache and self._signers_cache[0] == stamp:
            return self._signers_cache[1]
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
        """The exclusive append lock (held across processes; released if we die)."""
        path = self.gitdir / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _storage_error("lock", self.path, exc) from None
        try:
            deadline = _time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if _time.monotonic() > deadline:
                        raise LockTimeout(
                            f"another process has held the ledger lock {path} for over "
                            f"{timeout:.0f} s.",
                            hint="Wait for it to finish, or find the stuck 'ledger' process.",
                        ) from None
                    _time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)

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
            ref = self.repo.references.get(MAIN_REF)
            if ref is None:
                raise StorageError(f"the ledger at {self.path} has no {MAIN_REF}.")
            parent = self._commit(ref.target)
            parent_seq = self._commit_seq(parent)
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
                additions: dict[str, pygit2.Oid] = {}
                files: dict[str, dict[str, Any]] = {}
                for name, content in sorted(attachments.items()):
                    apath = records.attachment_path(path, name)
                    additions[apath] = self.repo.create_blob(content)
                    files[name] = {
                        "path": apath,
                        "sha256": records.sha256_hex(content),
                        "size": len(content),
                    }
                if incident is not None and kind == records.KIND_RUN_STARTED and run:
                    ipath = records.incident_index_path(incident, run)
                    content = (path + "\n").encode()
                    additions[ipath] = self.repo.create_blob(content)
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
                additions[path] = self.repo.create_blob(raw)
                tree = _add_to_tree(self.repo, parent.tree, additions)
                parent_raw = self.repo.odb.read(parent.id)[1]
                message = records.build_message(
                    summary or records.summarize(kind, data),
                    {
                        "Ledger-Id": self.ledger_id,
                        "Ledger-Seq": str(seq),
                        "Ledger-Kind": kind,
                        "Ledger-Record": path,
                        "Ledger-Record-Sha256": records.sha256_hex(raw),
                        "Ledger-Prev-Sha256": records.git_object_sha256("commit", parent_raw),
                    },
                )
                oid = _signed_commit(self.repo, key, who, now, message, tree, [parent.id])
                _syncfs(self.gitdir)
                current = self.repo.references.get(MAIN_REF)
                if current is None or current.target != parent.id:
                    raise ConcurrentUpdate(
                        f"{MAIN_REF} of {self.path} moved while the append lock was held; "
                        "something wrote to the ledger without taking the lock.",
                        hint="Stop other tools writing to this repository; run 'ledger verify'.",
                    )
                current.set_target(oid, f"ledger: append seq {seq}")
                _syncfs(self.gitdir)
            except (pygit2.GitError, OSError) as exc:
                raise _storage_error("append to", self.path, exc) from None
            self._index_put(seq, oid)
            if seq % PACK_EVERY == 0:
                try:
                    self.pack_objects()
                except StorageError as exc:
                    # Packing is upkeep: the record is already durable and acknowledged.
                    # Loose objects stay until the next packing succeeds.
                    self.last_pack_error = exc
        return Appended(str(oid), seq, path, record)

    def pack_objects(self) -> int:
        """Move the loose objects into a pack (and consolidate packs when there are many).

        Called under the append lock every :data:`PACK_EVERY` records, so that a ledger of
        100,000 records is a few packs rather than 700,000 files. The new pack is on disk
        before any loose object or old pack is removed. Returns the objects packed.
        """
        objects = self.gitdir / "objects"
        packs = objects / "pack"
        try:
            old_packs = sorted(packs.glob("pack-*.pack"))
            if len(old_packs) >= MAX_PACKS:
                # One pack of every object there is (packed or loose), then drop the rest.
                builder = pygit2.PackBuilder(self.repo)
                builder.set_threads(0)
                # The odb lists an object once per place it is stored (loose, each pack).
                unique = {oid.raw for oid in self.repo.odb}
                wanted = len(unique)
                for raw in unique:
                    builder.add(pygit2.Oid(raw=raw))
                del unique
                builder.write(str(packs))
                if builder.written_objects_count != wanted:
                    raise StorageError(
                        f"packing {self.path} wrote {builder.written_objects_count} of "
                        f"{wanted} objects; nothing was removed.",
                        hint="Run 'ledger verify'; check free disk space.",
                    )
                _syncfs(self.gitdir)
                current = {p.name for p in packs.glob("pack-*.pack")}
                new = current - {p.name for p in old_packs}
                for pack in old_packs:
                    if new and pack.name not in new:
                        for suffix in (".idx", ".rev", ".keep", ".pack"):
                            pack.with_suffix(suffix).unlink(missing_ok=True)
                _remove_loose(list(_loose_objects(objects)))
                return wanted
            loose = list(_loose_objects(objects))
            if not loose:
                return 0
            builder = pygit2.PackBuilder(self.repo)
            builder.set_threads(0)  # as many as there are cores
            for _, oid in loose:
                builder.add(oid)
            builder.write(str(packs))
            _syncfs(self.gitdir)
            _remove_loose(loose)
            return builder.written_objects_count
        except (pygit2.GitError, OSError) as exc:
            raise _storage_error("pack the objects of", self.path, exc) from None


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


def _signed_commit(
    repo: pygit2.Repository,
    key: SigningKey,
    principal: str,
    time: str,
    message: str,
    tree: pygit2.Oid,
    parents: list[str | pygit2.Oid],
) -> pygit2.Oid:
    ident = records.clean_principal(principal)
    when = int(records.parse_time(time).timestamp())
    sig = pygit2.Signature(ident, ident, when, 0)
    content = str(repo.create_commit_string(sig, sig, message, tree, list(parents)))
    signature = sign_commit(content, key)
    oid: pygit2.Oid = repo.create_commit_with_signature(content, signature)
    return oid


def _blob_data(repo: pygit2.Repository, oid: pygit2.Oid) -> bytes:
    obj = repo.get(oid)
    if not isinstance(obj, pygit2.Blob):
        raise StorageError(
            f"object {oid} is not a file; the ledger is damaged.",
            hint="Run 'ledger verify' to see what is wrong.",
        )
    return bytes(obj.data)


def _add_to_tree(
    repo: pygit2.Repository, base: pygit2.Tree | None, additions: Mapping[str, pygit2.Oid]
) -> pygit2.Oid:
    """A new tree: ``base`` plus the files in ``additions`` (path -> blob). Never replaces."""
    nested: dict[str, Any] = {}
    for path, oid in additions.items():
        parts = path.split("/")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = oid
    return _write_tree(repo, base, nested, "")


def _write_tree(
    repo: pygit2.Repository, base: pygit2.Tree | None, node: Mapping[str, Any], where: str
) -> pygit2.Oid:
    builder = repo.TreeBuilder(base) if base is not None else repo.TreeBuilder()
    for name, value in node.items():
        existing = base[name] if base is not None and name in base else None
        if isinstance(value, dict):
            sub: pygit2.Tree | None = None
            if existing is not None:
                obj = repo[existing.id]
                if not isinstance(obj, pygit2.Tree):
                    raise StorageError(f"{where}{name} is a file in the ledger, not a directory.")
                sub = obj
            builder.insert(
                name, _write_tree(repo, sub, value, f"{where}{name}/"), pygit2.enums.FileMode.TREE
            )
        else:
            if existing is not None:
                raise StorageError(
                    f"{where}{name} already exists in the ledger; records never replace files.",
                    hint="Run 'ledger verify'; the ledger may have been tampered with.",
                )
            builder.insert(name, value, pygit2.enums.FileMode.BLOB)
    return builder.write()
