"""The ledger repository: the only code that writes it and the ordinary way to read it.

Appends are durable and serialised: a record is acknowledged only after its objects and the
moved branch are on disk, and appends from several processes are serialised with an
exclusive lock on ``<gitdir>/ledger.lock`` plus a compare-and-swap of ``refs/heads/main``
(:mod:`ledger.store.append`). Reading answers from the tree (the layout of docs/FORMAT.md
§4) and from a local seq index instead of scanning history (:mod:`ledger.store.reads`).
This module creates and opens ledgers and owns their configuration and upkeep threads.
"""

from __future__ import annotations

import json
import socket
import threading
import weakref
from pathlib import Path

import pygit2

import ledger as ledger_pkg
from ledger import errors, keys, verify
from ledger.format import records, shapes
from ledger.store import append, gitdir, reads, runreads, seqindex, trees, trust
from ledger.store import upkeep as store_upkeep


class Ledger(append.Appends, runreads.RunReads):
    """A ledger repository opened for reading (:class:`~ledger.store.reads.Reads`,
    :class:`~ledger.store.runreads.RunReads`) and appending
    (:class:`~ledger.store.append.Appends`)."""

    def __init__(
        self,
        path: Path,
        repo: pygit2.Repository,
        *,
        upkeep: store_upkeep.UpkeepPolicy | None = None,
    ) -> None:
        self.path = path
        self.repo = repo
        self.gitdir = Path(repo.path)
        cfg = repo.config
        try:
            self.ledger_id: str = str(cfg["ledger.id"])
            self.genesis_id: str = str(cfg["ledger.genesis"])
        except KeyError:
            raise errors.LedgerNotFound(
                f"{path} is a git repository but not a ledger (its config has no ledger.id "
                "or ledger.genesis).",
                hint="Point --ledger at a ledger made by 'ledger init' or 'ledger clone'.",
            ) from None
        self.name: str = str(cfg["ledger.name"]) if "ledger.name" in cfg else ""
        self._view: trust.TrustView | None = None
        self.allow_unverified = False
        """Append onto a head that does not verify (each such record says so, FORMAT.md §3)."""
        self._upkeep = store_upkeep.Upkeep(self.gitdir, upkeep or store_upkeep.UpkeepPolicy())
        self._trees = trees.Trees(repo)
        self._files = gitdir.OpenFiles()
        self._index = seqindex.SeqIndex(self.gitdir, f"{gitdir.STATE_DIR}/{gitdir.SEQ_INDEX}")
        weakref.finalize(self, self._files.close)
        weakref.finalize(self, self._index.close)
        self._thread_lock = threading.Lock()
        self._last: reads.Tip | None = None
        # Paths an append uses, made once (building them is a visible part of an append).
        self._main_file = str(self.gitdir / gitdir.MAIN_REF)
        self._pack_dir = self.gitdir / "objects" / "pack"
        self._head_is_main: bool | None = None

    # -- creation and opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, upkeep: store_upkeep.UpkeepPolicy | None = None) -> Ledger:
        """Open an existing ledger; :class:`LedgerNotFound` if there is none. ``upkeep``:
        when to merge and repack packs (default: :class:`UpkeepPolicy`'s defaults)."""
        return cls(path, gitdir.open_repository(path), upkeep=upkeep)

    @classmethod
    def adopt(
        cls,
        path: Path,
        verified: verify.VerifiedState,
        *,
        upkeep: store_upkeep.UpkeepPolicy | None = None,
    ) -> Ledger:
        """Make a bare repository whose chain was just verified (``verified``, the verifier's
        state at its head) a ledger: its ``ledger.*`` config is written from that verified
        state, never from bytes nobody verified, and only while ``main`` is that head (used
        after cloning). Its seq index is written from the verified chain, as appends would
        have written it: the next ``ledger verify`` plans its workers' segments from it
        instead of walking the chain back first (:mod:`ledger.verify.warmup`)."""
        repo = pygit2.Repository(str(path), gitdir.OPEN_FLAGS)
        ref = repo.references.get(gitdir.MAIN_REF)
        if ref is None or str(ref.target) != verified.head:
            raise errors.LedgerNotFound(
                f"{path}'s {gitdir.MAIN_REF} is not the verified head {verified.head}; "
                "nothing was adopted."
            )
        commit = repo.get(verified.genesis)
        if not isinstance(commit, pygit2.Commit) or records.GENESIS_PATH not in commit.tree:
            raise errors.LedgerNotFound(f"the genesis commit of {path} holds no genesis record.")
        genesis = json.loads(trees.blob_data(repo, commit.tree[records.GENESIS_PATH].id))
        repo.config["ledger.id"] = verified.ledger_id
        repo.config["ledger.genesis"] = verified.genesis
        repo.config["ledger.name"] = str(genesis.get("data", {}).get("name", ""))
        ledger = cls(path, repo, upkeep=upkeep)
        walk = repo.walk(verified.head, pygit2.enums.SortMode.NONE)
        walk.simplify_first_parent()
        ledger._index.put_chain([c.id for c in walk][::-1], verified.seq)
        return ledger

    @classmethod
    def init(
        cls,
        path: Path,
        *,
        name: str,
        key: keys.SigningIdentity,
        principal: str,
        signers: list[tuple[str, keys.PublicKey]] | None = None,
        host: str | None = None,
        upkeep: store_upkeep.UpkeepPolicy | None = None,
    ) -> Ledger:
        """Create a new ledger with its genesis record.

        The initial trusted signers are ``key`` as ``principal`` plus ``signers``. Raises
        :class:`LedgerExists` if ``path`` exists and is not an empty directory,
        :class:`InputError` for a principal that cannot name a signer
        (:func:`~ledger.format.records.check_principal`).
        """
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise errors.LedgerExists(
                f"{path} already exists and is not empty; 'ledger init' never touches an "
                "existing ledger or directory.",
                hint="Choose another path, or use the existing ledger with --ledger.",
            )
        members = [(principal, key.public_key), *(signers or [])]
        for who, _ in members:
            records.check_principal(who)
        data: shapes.GenesisData = {
            "name": name,
            "signers": [
                {"principal": p, "key": pk.openssh(), "fingerprint": pk.fingerprint}
                for p, pk in members
            ],
            "created_by": f"runbook-ledger {ledger_pkg.__version__}",
        }
        with gitdir.created(path):  # (a failure leaves no half-made ledger behind)
            repo, ledger_id = _create_repository(path, name)
            oid = _write_genesis(path, repo, ledger_id, key, principal, host, data)
            ledger = cls(path, repo, upkeep=upkeep)
            ledger._index.put(0, oid)
        return ledger

    # -- configuration ------------------------------------------------------------------

    def config_get(self, key: str) -> str | None:
        cfg = self.repo.config
        return str(cfg[key]) if key in cfg else None

    def config_set(self, key: str, value: str) -> None:
        self.repo.config[key] = value

    def close(self) -> None:
        """Close the files this object keeps open (it stays usable: they are reopened)."""
        self._files.close()
        self._index.close()

    # -- packing -------------------------------------------------------------------------

    @property
    def last_pack_error(self) -> errors.StorageError | None:
        """The failure of the last pack upkeep, if it failed."""
        return self._upkeep.last_error

    def start_packing(self, *, full: bool = True) -> None:
        """Start pack upkeep in the background: with ``full``, a repack with deltas
        (:func:`~ledger.store.upkeep.pack_objects`), else a merge of the small packs
        (:func:`~ledger.store.upkeep.merge_small_packs`).

        Upkeep must not pause the appends that follow (a run's steps go on while it works):
        the records are durable and acknowledged before it starts. Each kind has one thread
        per ledger object, and merges go on while a (long) repack runs, so small packs never
        pile up; a repack asked for while one is running is started by a later call. The
        threads are not daemons, so a process that ends waits for them rather than leaving
        a half-written pack behind. A failure is kept in :attr:`last_pack_error`; nothing is
        removed before its replacement is on disk.
        """
        self._upkeep.start(full=full)

    def wait_for_packing(self) -> None:
        """Wait until the upkeep started by :meth:`start_packing` has finished."""
        self._upkeep.wait()

    def pack_objects(self) -> int:
        """Pack the loose objects now, in this thread (see
        :func:`~ledger.store.upkeep.pack_objects`)."""
        return self._upkeep.pack_now(self.repo)


def _create_repository(path: Path, name: str) -> tuple[pygit2.Repository, str]:
    """A new bare repository configured as a ledger (:func:`~ledger.store.gitdir.protect`
    with ``ledger=True``: as a verified clone is), and the new ledger's id."""
    try:
        repo = pygit2.init_repository(str(path), bare=True, initial_head="main")
        cfg = repo.config
        gitdir.protect(cfg, ledger=True)
        ledger_id = records.new_ledger_id()
        cfg["ledger.id"] = ledger_id
        cfg["ledger.name"] = name
    except (pygit2.GitError, OSError) as exc:
        raise gitdir.storage_error("create", path, exc) from None
    return repo, ledger_id


def _write_genesis(
    path: Path,
    repo: pygit2.Repository,
    ledger_id: str,
    key: keys.SigningIdentity,
    principal: str,
    host: str | None,
    data: shapes.GenesisData,
) -> pygit2.Oid:
    """Write the genesis record ``data`` as the first commit of ``main``, durably; its id."""
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
            append.signed_commit_bytes(key, principal, now, message, tree, []),
        )
        gitdir.syncfs(path)
        repo.references.create(gitdir.MAIN_REF, oid)
        repo.config["ledger.genesis"] = str(oid)
        gitdir.syncfs(path)
    except (pygit2.GitError, OSError) as exc:
        raise gitdir.storage_error("write the genesis record of", path, exc) from None
    return oid
