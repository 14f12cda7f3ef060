"""The durable append: compose a record's objects, then commit them.

Composing (:func:`compose`) builds everything in memory: the record, its attachments, the
new trees on its path, the message and the signed commit, collected in one
:class:`~ledger.store.packs.PackWriter`. Committing (:meth:`Appends._commit_append`) writes them
as one pack, flushes the filesystem (``syncfs``), moves ``refs/heads/main`` by
compare-and-swap, and flushes again: a record is acknowledged only once both are on disk.
Appends from several processes are serialised by an ``flock`` on ``<gitdir>/ledger.lock``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors, keys
from ledger.format import gitobj, records, shapes
from ledger.store import gitdir, packs, reads, trees, trust, types, upkeep

LOCK_TIMEOUT_S = 120.0
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT


@dataclass(frozen=True)
class Draft:
    """What the caller asks to append (checked by :meth:`check`)."""

    kind: str
    data: Mapping[str, Any]
    run: str | None = None
    attachments: Mapping[str, bytes] = field(default_factory=dict)
    summary: str | None = None
    incident: str | None = None
    host: str | None = None

    def check(self) -> None:
        """:class:`InputError` unless this can be appended (genesis never can)."""
        if self.kind == records.KIND_GENESIS or self.kind not in records.KINDS:
            raise errors.InputError(f"cannot append a record of kind {errors.quoted(self.kind)}.")
        if self.run is not None:
            records.check_run_id(self.run)
        for name in self.attachments:
            if not records.FILE_NAME_RE.match(name) or name == "json":
                raise errors.InputError(f"{errors.quoted(name)} is not a valid attachment name.")
        if self.kind == records.KIND_WITNESS:
            if self.run is not None or self.attachments or self.incident is not None:
                raise errors.InputError("a witness record belongs to no run and has no files.")
            records.check_witness(self.data)
        if self.kind == records.KIND_KEY_ADDED:
            principal = self.data.get("principal")
            if not isinstance(principal, str):
                raise errors.InputError("a key.added record needs the principal as a string.")
            records.check_principal(principal)


@dataclass(frozen=True)
class Composed:
    """An append's objects, built but not yet written."""

    objects: packs.PackWriter
    tip: reads.Tip  # the new commit, as the next append's parent
    path: str
    record: shapes.Record


def _file_entry(
    objects: packs.PackWriter, additions: dict[str, bytes], path: str, content: bytes
) -> shapes.FileEntry:
    additions[path] = objects.add(gitobj.OBJ_BLOB, content)
    return {"path": path, "sha256": records.sha256_hex(content), "size": len(content)}


def compose(
    draft: Draft,
    *,
    parent: reads.Tip,
    ledger_id: str,
    key: keys.SigningIdentity,
    who: str,
    tree_builder: trees.Trees,
    unverified: str | None = None,
) -> Composed:
    """The objects of the record ``draft`` appended onto ``parent``, signed with ``key`` as
    ``who``. Writes nothing (base trees are read from the repository). ``unverified``: the
    rules ``parent``'s chain breaks, for the ``Ledger-Unverified`` trailer."""
    if draft.kind == records.KIND_WITNESS:
        records.check_witness(draft.data, ledger_id)  # (never our own head)
    seq = parent.seq + 1
    now = records.format_time(records.utc_now())
    path = records.record_path(draft.kind, seq, draft.run, now)
    objects = packs.PackWriter()
    additions: dict[str, bytes] = {}
    files: dict[str, shapes.FileEntry] = {}
    for name, content in sorted(draft.attachments.items()):
        apath = records.attachment_path(path, name)
        files[name] = _file_entry(objects, additions, apath, content)
    if draft.incident is not None and draft.kind == records.KIND_RUN_STARTED and draft.run:
        ipath = records.incident_index_path(draft.incident, draft.run)
        files["incident-index"] = _file_entry(objects, additions, ipath, (path + "\n").encode())
    record = records.make_record(
        ledger_id=ledger_id,
        seq=seq,
        kind=draft.kind,
        time=now,
        run=draft.run,
        principal=who,
        key_fingerprint=key.public_key.fingerprint,
        host=draft.host or socket.gethostname(),
        data=draft.data,
        files=files,
    )
    raw = records.canonical_json(record)
    additions[path] = objects.add(gitobj.OBJ_BLOB, raw)
    tree = tree_builder.add(objects, parent.tree, additions)
    message = records.build_message(
        draft.summary or records.summarize(draft.kind, draft.data),
        {
            "Ledger-Id": ledger_id,
            "Ledger-Seq": str(seq),
            "Ledger-Kind": draft.kind,
            "Ledger-Record": path,
            "Ledger-Record-Sha256": records.sha256_hex(raw),
            "Ledger-Prev-Sha256": gitobj.object_sha256(gitobj.OBJ_COMMIT, parent.raw),
            **({"Ledger-Unverified": unverified} if unverified else {}),
        },
    )
    commit_raw = signed_commit_bytes(
        key, who, now, message, pygit2.Oid(raw=tree), [parent.commit_id]
    )
    oid = pygit2.Oid(raw=objects.add(gitobj.OBJ_COMMIT, commit_raw))
    return Composed(objects, reads.Tip(str(oid), seq, tree, commit_raw), path, record)


def seconds(time: str) -> int:
    """Seconds since the epoch of a record time (``YYYY-MM-DDTHH:MM:SS.ffffffZ``)."""
    return int(datetime.fromisoformat(time).timestamp())


def signed_commit_bytes(
    key: keys.SigningIdentity,
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
        seconds(time),
        message,
    )
    signature = keys.sign_commit(content, key)
    return gitobj.add_signature(content, signature.encode("ascii"))


class Appends(reads.Reads):
    """Appending records: the append lock, composing, and the durable commit."""

    ledger_id: str
    _files: gitdir.OpenFiles
    _thread_lock: threading.Lock
    _pack_dir: Path
    _head_is_main: bool | None
    _upkeep: upkeep.Upkeep

    @contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """The exclusive append lock (held across processes; released if we die).

        An ``flock`` on ``<gitdir>/ledger.lock`` through a descriptor this object keeps open,
        plus a thread lock, since threads sharing the descriptor would share the ``flock``.
        """
        path = self.gitdir / gitdir.LOCK_FILE
        too_long = errors.LockTimeout(
            f"another process has held the ledger lock {path} for over {timeout:.0f} s.",
            hint="Wait for it to finish, or find the stuck 'ledger' process.",
        )
        if not self._thread_lock.acquire(timeout=timeout):
            raise too_long
        try:
            fd = self._locked_fd(timeout, too_long)
            try:
                yield
            finally:
                gitdir.unlock(fd)
        finally:
            self._thread_lock.release()

    def _locked_fd(self, timeout: float, too_long: errors.LockTimeout) -> int:
        """Take the ``flock`` on ``ledger.lock``; when the file this object keeps open is no
        longer the one at that path (someone deleted or replaced it), open it again, so that
        this writer serialises with those that opened the file since."""
        for _ in range(3):
            try:
                fd = self._fds()[0]
            except OSError as exc:
                raise gitdir.storage_error("lock", self.path, exc) from None
            if not gitdir.flock(fd, wait=timeout):
                raise too_long
            try:
                held, there = os.fstat(fd), os.stat(self.gitdir / gitdir.LOCK_FILE)
            except FileNotFoundError:
                there = None
            except OSError as exc:
                raise gitdir.storage_error("lock", self.path, exc) from None
            if there is not None and (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino):
                return fd
            gitdir.unlock(fd)
            os.close(fd)
            self._files.lock = None
        raise too_long

    def _move_main(self, old: str, new: str, who: str, when: str, message: str) -> None:
        """Compare-and-swap ``main`` from ``old`` to ``new`` the way git does (holding
        ``refs/heads/main.lock``, renamed over the ref), and log it in the reflogs of
        ``main`` and ``HEAD`` with the signer as the identity. Not synced: the caller is.

        Called under the append ``flock``, so a ``main.lock`` already there was left by a
        writer that died holding it: it is removed (if a regular file) and the move goes on.
        """
        ref = self._main_file
        lock = ref + ".lock"
        moved = errors.ConcurrentUpdate(
            f"{gitdir.MAIN_REF} of {self.path} moved while the append lock was held; something "
            "wrote to the ledger without taking the lock.",
            hint="Stop other tools writing to this repository; run 'ledger verify'.",
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(lock, flags, 0o644)
        except FileExistsError:
            # Left by a writer killed while moving main: stale, since we hold the flock.
            gitdir.remove_stale_ref_lock(lock, gitdir.MAIN_REF)
            try:
                fd = os.open(lock, flags, 0o644)
            except FileExistsError:
                raise moved from None  # something that ignores the flock is writing main
        # The descriptor stays open until the rename, so that no other file can take this
        # one's inode number meanwhile: the lock file is then ours exactly when it is that
        # inode (a writer that got past a deleted ledger.lock may have taken it over).
        try:
            ours = os.fstat(fd)
            try:
                os.write(fd, f"{new}\n".encode("ascii"))
                if self._read_main() != old or not _same_file(lock, ours):
                    raise moved
                os.replace(lock, ref)
            except BaseException:
                if _same_file(lock, ours):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                raise
        finally:
            os.close(fd)
        ident = records.clean_principal(who)
        line = f"{old} {new} {ident} <{ident}> {seconds(when)} +0000\t{message}\n".encode()
        logs = [f"logs/{gitdir.MAIN_REF}"]
        if self._head_is_main is None:
            try:
                head = gitdir.read_own(self.gitdir / "HEAD", 256).strip()
            except OSError:
                head = b""
            self._head_is_main = head == f"ref: {gitdir.MAIN_REF}".encode()
        if self._head_is_main:
            logs.append("logs/HEAD")  # as git logs the branch HEAD names
        for log in logs:
            try:  # (never through a link planted there: nothing is written elsewhere)
                fd = gitdir.open_own(self.gitdir, log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError:
                continue  # the reflog is a convenience for people, not part of the ledger

    def _fds(self) -> tuple[int, int]:
        """The append lock's and the git directory's descriptors, kept open across appends
        (opening files is a large part of one)."""
        files = self._files
        if files.lock is None or files.gitdir is None:
            self._pack_dir.mkdir(parents=True, exist_ok=True)  # (git always makes it)
            if files.lock is None:
                files.lock = gitdir.open_own(self.gitdir, gitdir.LOCK_FILE, _LOCK_FLAGS)
            if files.gitdir is None:
                files.gitdir = os.open(self.gitdir, os.O_RDONLY | os.O_CLOEXEC)
        return files.lock, files.gitdir

    def append(
        self,
        kind: str,
        data: Mapping[str, Any],
        *,
        key: keys.SigningIdentity,
        principal: str | None = None,
        run: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        summary: str | None = None,
        incident: str | None = None,
        host: str | None = None,
    ) -> types.Appended:
        """Append one record, signed with ``key``; returns once it is durable on disk.

        ``principal`` defaults to the principal the ledger trusts ``key`` as. Raises
        :class:`UntrustedKey` when ``key`` is not trusted at the head, :class:`InputError`
        for malformed data, :class:`StorageError` when writing fails (nothing is then
        acknowledged and the branch is unchanged).
        """
        draft = Draft(kind, data, run, dict(attachments or {}), summary, incident, host)
        draft.check()
        fingerprint = key.public_key.fingerprint
        with self.lock():
            parent = self._tip()
            view = trust.view_at(self.repo, parent.commit_id, self._view)
            self._view = view
            if not view.ok and not self.allow_unverified:
                raise view.refuse(self.path, "nothing is appended to it")
            signer = view.trusted(fingerprint)
            if signer is None:
                raise errors.UntrustedKey(
                    f"the key {fingerprint} is not trusted by this ledger, so it cannot sign "
                    "records here.",
                    hint="Use a trusted key (see 'ledger keys list'), or have a trusted signer "
                    "add this one with 'ledger keys add'.",
                )
            who = principal or signer.principal
            try:
                made = compose(
                    draft,
                    parent=parent,
                    # (the verified chain's id; the config's only on a chain that fails)
                    ledger_id=view.state.ledger_id if view.state is not None else self.ledger_id,
                    key=key,
                    who=who,
                    tree_builder=self._trees,
                    unverified=" ".join(view.rules()) or None,
                )
                self._commit_append(parent, made, who)
            except (pygit2.GitError, OSError) as exc:
                raise gitdir.storage_error("append to", self.path, exc) from None
            self._last = made.tip
            if kind not in records.KEY_KINDS:
                # This process composed and signed it: the view moves over it unread (a key
                # record is verified by the next read, so trust comes from the verifier).
                digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, made.tip.raw)
                self._view = view.advanced(made.tip.commit_id, made.tip.seq, digest)
            self._index.put(made.tip.seq, pygit2.Oid(hex=made.tip.commit_id))
        self._upkeep.after_append(made.tip.seq)
        return types.Appended(
            made.tip.commit_id, made.tip.seq, made.path, made.record, parent.commit_id
        )

    def _commit_append(self, parent: reads.Tip, made: Composed, who: str) -> None:
        """Make ``made`` durable: its pack, ``syncfs``, the compare-and-swap of ``main``,
        ``syncfs`` again."""
        made.objects.write(self._pack_dir)
        gitdir.syncfs(self.gitdir, self._fds()[1])
        when = str(made.record["time"])
        message = f"ledger: append seq {made.tip.seq}"
        self._move_main(parent.commit_id, made.tip.commit_id, who, when, message)
        gitdir.syncfs(self.gitdir, self._fds()[1])


def _same_file(path: str, st: os.stat_result) -> bool:
    """Whether ``path`` is still the file ``st`` describes."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)
