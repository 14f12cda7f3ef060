"""Pack upkeep: merging the small packs appends write, repacking with deltas, and the
background threads that do both while appends go on.

Each append writes one small pack (:mod:`ledger.store.packs`). Every ``merge_every``
records the small packs are merged into one (objects copied whole, cheap); every
``pack_every`` records the loose objects and small and merged packs are repacked with
deltas; when there are ``max_packs`` large packs, everything goes into one (the numbers are
an :class:`UpkeepPolicy`'s). Nothing is
removed before its replacement is on disk, and two upkeeps of one kind never overlap (an
``flock`` on ``<gitdir>/ledger-pack.lock`` or ``ledger-merge.lock``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors
from ledger.store import gitdir, packs


@dataclass(frozen=True)
class UpkeepPolicy:
    """When upkeep runs and what it treats as small, medium and large packs. The defaults
    are the ledger's; tests and tools pass their own (``Ledger.open(path, upkeep=...)``)."""

    merge_every: int = 16
    """Every this many records, the append that reaches a multiple merges the small packs
    (one per append) into one, so that readers never search hundreds of packs."""
    small_pack_objects: int = 64
    """A pack of at most this many objects is an append's own (merged every merge_every)."""
    pack_every: int = 1000
    """Every this many records, the append that reaches a multiple starts repacking the
    loose objects and the small and merged packs into one pack with deltas (in a background
    thread: appends go on meanwhile)."""
    max_packs: int = 32
    """When there are this many large packs, they are consolidated into one."""
    nice: int = 19
    """The niceness of the upkeep threads (Linux schedules threads one by one)."""

    @property
    def medium_pack_objects(self) -> int:
        """A pack of at most this many objects is a merge of small packs (repacked every
        pack_every with deltas); larger packs are only consolidated when there are
        max_packs."""
        return self.merge_every * self.small_pack_objects


DEFAULT_POLICY = UpkeepPolicy()


@dataclass(frozen=True)
class Pack:
    base: Path  # objects/pack/pack-<sha1> (without suffix)
    count: int


def list_packs(pack_dir: Path) -> list[Pack]:
    """The packs in ``pack_dir`` with their object counts (packs with a ``.keep`` file, or
    whose index cannot be read, are left out: they are never merged or removed)."""
    found: list[Pack] = []
    for idx in sorted(pack_dir.glob("pack-*.idx")):
        base = idx.with_suffix("")
        if base.with_suffix(".keep").exists() or not base.with_suffix(".pack").exists():
            continue
        try:
            head = gitdir.read_own(idx, 8 + 1024)
        except OSError:
            continue  # removed meanwhile by another packer, or not a regular file
        if len(head) < 8 + 1024 or head[:4] != b"\377tOc":
            continue
        found.append(Pack(base, int.from_bytes(head[8 + 1020 : 8 + 1024], "big")))
    return found


def pack_oids(pack: Pack) -> list[pygit2.Oid]:
    return [
        pygit2.Oid(raw=raw)
        for raw in packs.index_object_ids(pack.base.with_suffix(".idx").read_bytes())
    ]


def remove_packs(doomed: list[Pack]) -> None:
    for pack in doomed:
        # The index first: readers find packs by their index.
        for suffix in (".idx", ".rev", ".pack"):
            pack.base.with_suffix(suffix).unlink(missing_ok=True)


STALE_LEFTOVER_S = 600.0
"""A temporary pack file, or a pack without its index, older than this is a leftover of a
writer that died mid-append (never acknowledged, never referenced) and is removed."""


def remove_stale_leftovers(pack_dir: Path) -> None:
    cutoff = time.time() - STALE_LEFTOVER_S
    for path in pack_dir.iterdir():
        name = path.name
        leftover = name.startswith(gitdir.TMP_PREFIX) or (
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
def pack_lock(gitdir_path: Path, name: str = gitdir.PACK_LOCK_FILE) -> Iterator[bool]:
    """Whether this caller holds the ledger's packing (or merging) lock; never waits."""
    try:
        fd = gitdir.open_own(gitdir_path, name, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise gitdir.storage_error("pack the objects of", gitdir_path, exc) from None
    try:
        # False: another thread or process is packing this ledger.
        yield gitdir.flock(fd)
    finally:
        os.close(fd)


def merge_small_packs(
    repo: pygit2.Repository, gitdir_path: Path, policy: UpkeepPolicy = DEFAULT_POLICY
) -> int:
    """Merge the small packs (each append writes one) into one pack, objects stored whole.

    Cheap (no delta search: the objects are copied), and run every ``policy.merge_every``
    records. The merged pack is on disk before any small pack is removed, and only packs
    listed before it was written are removed. Returns the packs merged.
    """
    pack_dir = gitdir_path / "objects" / "pack"
    try:
        with pack_lock(gitdir_path, gitdir.MERGE_LOCK_FILE) as locked:
            if not locked:
                return 0
            remove_stale_leftovers(pack_dir)
            small = [p for p in list_packs(pack_dir) if p.count <= policy.small_pack_objects]
            if len(small) < 2:
                return 0
            writer = packs.PackWriter()
            merged: list[Pack] = []
            for pack in small:
                try:
                    entries = packs.whole_entries(
                        pack.base.with_suffix(".pack").read_bytes(),
                        pack.base.with_suffix(".idx").read_bytes(),
                    )
                except FileNotFoundError:
                    continue  # a repack running beside this merge took it already
                if entries is not None:  # an append's pack: its entries are copied as is
                    for raw, entry in entries:
                        writer.add_entry(raw, entry)
                else:
                    for oid in pack_oids(pack):  # (a fetched pack may hold deltas)
                        obj_type, data = repo.odb.read(oid)
                        writer.add(int(obj_type), bytes(data))
                merged.append(pack)
            if len(merged) < 2:
                return 0
            writer.write(pack_dir)
            gitdir.syncfs(gitdir_path)
            remove_packs(merged)
            return len(merged)
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise gitdir.storage_error("merge the packs of", gitdir_path, exc) from None


def pack_objects(
    repo: pygit2.Repository,
    gitdir_path: Path,
    policy: UpkeepPolicy = DEFAULT_POLICY,
    *,
    threads: int = 0,
) -> int:
    """Repack the loose objects and the small and merged packs into one pack with deltas
    (or, when there are ``policy.max_packs`` large packs, every object into one).

    Run every ``policy.pack_every`` records, so that a ledger of 100,000 records is a few
    compact packs rather than 700,000 files. Appends may go on meanwhile: only the loose
    objects and packs listed before the new pack was written are removed, and only once it
    is on disk. Two packings of one ledger never overlap (an ``flock`` on
    ``<gitdir>/ledger-pack.lock``; the second returns 0 at once). ``threads`` is the delta
    search's (0: as many as there are cores). Returns the objects packed.
    """
    objects = gitdir_path / "objects"
    pack_dir = objects / "pack"
    try:
        with pack_lock(gitdir_path) as locked:
            if not locked:
                return 0
            found = list_packs(pack_dir)
            loose = list(loose_objects(objects))
            large = [p for p in found if p.count > policy.medium_pack_objects]
            if len(large) >= policy.max_packs:
                drop = found
                # The odb lists an object once per place it is stored (loose, each pack).
                wanted = {oid.raw for oid in repo.odb}
            else:
                drop = []
                wanted = {oid.raw for _, oid in loose}
                for pack in found:
                    if pack.count > policy.medium_pack_objects:
                        continue
                    try:
                        wanted.update(oid.raw for oid in pack_oids(pack))
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
                raise errors.StorageError(
                    f"packing {gitdir_path} wrote {builder.written_objects_count} of {len(wanted)} "
                    "objects; nothing was removed.",
                    hint="Run 'ledger verify'; check free disk space.",
                )
            gitdir.syncfs(gitdir_path)
            written = {p.base for p in list_packs(pack_dir)} - {p.base for p in found}
            if written:  # (the same set of objects again would be the same pack)
                remove_packs(drop)
            remove_loose(loose)
            return len(wanted)
    except (pygit2.GitError, OSError, ValueError) as exc:
        raise gitdir.storage_error("pack the objects of", gitdir_path, exc) from None


def loose_objects(objects: Path) -> Iterator[tuple[Path, pygit2.Oid]]:
    for fan in objects.iterdir():
        if len(fan.name) != 2 or not fan.is_dir():
            continue
        for file in fan.iterdir():
            name = fan.name + file.name
            if len(name) == 40 and all(c in "0123456789abcdef" for c in name):
                yield file, pygit2.Oid(hex=name)


def remove_loose(loose: list[tuple[Path, pygit2.Oid]]) -> None:
    """Remove packed loose objects, and their fan-out directories once empty (a directory
    emptied of thousands of entries stays slow to add to)."""
    for file, _ in loose:
        file.unlink(missing_ok=True)
    for directory in {file.parent for file, _ in loose}:
        try:
            directory.rmdir()
        except OSError:  # not empty: another writer added an object meanwhile
            continue


class Upkeep:
    """The upkeep threads of one ledger object: at most one repack and one merge at a time,
    and the last failure (:attr:`last_error`)."""

    def __init__(self, gitdir_path: Path, policy: UpkeepPolicy = DEFAULT_POLICY) -> None:
        self.gitdir = gitdir_path
        self.policy = policy
        self.last_error: errors.StorageError | None = None
        self.packer: threading.Thread | None = None
        self.merger: threading.Thread | None = None
        self._full_pack_due = False

    def after_append(self, seq: int) -> None:
        """Start what the append of ``seq`` makes due (see the module's docstring)."""
        if seq % self.policy.pack_every == 0:
            self.start()
        elif seq % self.policy.merge_every == 0:
            self.start(full=False)

    def start(self, *, full: bool = True) -> None:
        """Start a repack (``full``) or a merge of the small packs in the background; a
        repack asked for while one is running is started by a later call."""
        self._full_pack_due = self._full_pack_due or full
        if self._full_pack_due and not _alive(self.packer):
            self._full_pack_due = False
            self.packer = self._thread(pack_objects, "ledger-pack", threads=1)
        elif not full and not _alive(self.merger):
            self.merger = self._thread(merge_small_packs, "ledger-merge")

    def pack_now(self, repo: pygit2.Repository) -> int:
        """Repack now, in this thread (see :func:`pack_objects`)."""
        return pack_objects(repo, self.gitdir, self.policy)

    def wait(self) -> None:
        """Wait until the upkeep started so far has finished."""
        for thread in (self.packer, self.merger):
            if thread is not None:
                thread.join()

    def _thread(self, work: Callable[..., int], name: str, **kwargs: Any) -> threading.Thread:
        def run() -> None:
            with contextlib.suppress(OSError, AttributeError):
                # Background work yields the CPU to the appends and the run's commands.
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.policy.nice)
            try:
                # A repository object of its own: the appending thread keeps using its own.
                work(gitdir.open_repository(self.gitdir), self.gitdir, self.policy, **kwargs)
                self.last_error = None
            except errors.StorageError as exc:
                self.last_error = exc
            except errors.LedgerNotFound as exc:  # the ledger's directory was removed meanwhile
                self.last_error = errors.StorageError(exc.message)

        thread = threading.Thread(target=run, name=name, daemon=False)
        thread.start()
        return thread


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()
