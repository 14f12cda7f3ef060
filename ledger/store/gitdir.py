"""The ledger's git directory: its fixed paths, opening it, flushing it to disk, file locks,
files written whole, and how storage failures are reported.

One ``flock`` helper serves every lock of the ledger directory (the append lock, the pack
and merge locks, runbook locks, the remote state's lock), and one way of writing a file
whole the store's state files (pack indexes). The protected-repository configuration
(:func:`protect`) is here so that ``Ledger.init``, a verified clone and a protected remote
share it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2

from ledger import errors

MAIN_REF = "refs/heads/main"
STATE_DIR = "ledger-state"
SEQ_INDEX = "seq-index"
LOCK_FILE = "ledger.lock"
PACK_LOCK_FILE = "ledger-pack.lock"
MERGE_LOCK_FILE = "ledger-merge.lock"
TMP_PREFIX = "tmp_ledger_"
"""Temporary files the store writes start with this (upkeep removes stale ones)."""

# --- durability -------------------------------------------------------------------------

_libc: Any = None


def syncfs(path: Path, fd: int | None = None) -> None:
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
            raise errors.StorageError(
                f"could not flush the ledger at {path} to disk: {os.strerror(err)}.",
                hint="Check the disk; the record was not acknowledged.",
            )
    finally:
        if own:
            os.close(use)


# --- opening and errors -----------------------------------------------------------------


_LEDGER_HINT = "Point --ledger at a ledger made by 'ledger init' or 'ledger clone'."

#: How a ledger (or a fleet copy) is opened: exactly the git directory named, neither
#: searched for upwards nor a ``.git`` inside it (or a ``.git`` file's ``gitdir:``), which
#: whoever can write the directory could plant to have another repository read instead.
OPEN_FLAGS = pygit2.enums.RepositoryOpenFlag.NO_SEARCH | pygit2.enums.RepositoryOpenFlag.NO_DOTGIT


def open_repository(path: Path) -> pygit2.Repository:
    """The ledger's repository at exactly ``path`` (no search upwards, never a ``.git``
    inside it: :data:`OPEN_FLAGS`); :class:`LedgerNotFound` when there is none, or when the
    repository there is not a ledger (a work tree, a fleet copy, a plain bare repository: its
    config names no ``ledger.id`` and ``ledger.genesis``), so that every command needing a
    ledger says so first, never a later symptom (no genesis pinned, no remotes). Only a
    refusal is decided from the config here."""
    if not path.exists():
        raise errors.LedgerNotFound(
            f"there is no ledger at {path} (the path does not exist).",
            hint="Create one with 'ledger init', or point --ledger at an existing one.",
        )
    try:
        repo = pygit2.Repository(str(path), OPEN_FLAGS)
        cfg = repo.config
        is_ledger = "ledger.id" in cfg and "ledger.genesis" in cfg
        is_fleet = not is_ledger and "ledger.fleet" in cfg
    except pygit2.GitError as exc:
        if (path / ".git").exists():  # (never opened: OPEN_FLAGS)
            raise _work_tree(path) from None
        raise errors.LedgerNotFound(
            f"{path} is not a ledger: it is not a git repository ({exc}).", hint=_LEDGER_HINT
        ) from None
    if not repo.is_bare:
        raise _work_tree(path)
    if is_fleet:
        raise errors.LedgerNotFound(
            f"{path} is a fleet copy (ledger fleet clone), not a ledger.",
            hint="Read it with the 'ledger fleet' commands (--fleet DIR). " + _LEDGER_HINT,
        )
    if not is_ledger:
        raise errors.LedgerNotFound(
            f"{path} is a git repository but not a ledger (its config has no ledger.id "
            "or ledger.genesis).",
            hint=_LEDGER_HINT,
        )
    return repo


def _work_tree(path: Path) -> errors.LedgerNotFound:
    return errors.LedgerNotFound(
        f"{path} is a git work tree, not a ledger (ledgers are bare repositories).",
        hint="Point --ledger at a ledger made by 'ledger init'.",
    )


CORRUPT_HINT = (
    "Run 'ledger verify' to see what is damaged; restore from a remote with 'ledger clone'."
)


def corrupt(
    path: Path | str, what: str, exc: BaseException | str | None = None
) -> errors.CorruptLedger:
    """The :class:`CorruptLedger` for ``what`` (an object or reference, named) that cannot be
    read or parsed in the ledger at ``path``."""
    detail = f" ({exc})" if exc is not None and str(exc) else ""
    return errors.CorruptLedger(
        f"the ledger at {path} is corrupt: {what} cannot be read{detail}.", hint=CORRUPT_HINT
    )


def main_target(repo: pygit2.Repository, path: Path | str) -> pygit2.Oid | None:
    """The commit id ``refs/heads/main`` names, ``None`` when there is no such branch;
    :class:`CorruptLedger` when the reference cannot be read."""
    try:
        ref = repo.references.get(MAIN_REF)
        if ref is None:
            return None
        target = ref.target
    except (pygit2.GitError, ValueError) as exc:
        raise corrupt(path, f"the reference {MAIN_REF}", exc) from None
    if not isinstance(target, pygit2.Oid):
        raise corrupt(path, f"the reference {MAIN_REF}", f"it points to {target}")
    return target


def storage_error(action: str, path: Path, exc: BaseException) -> errors.StorageError:
    """The :class:`StorageError` for ``exc`` raised while trying to ``action`` the ledger
    at ``path`` (a full disk gets its own hint)."""
    text = str(exc)
    hint = "Check the path, its permissions and free disk space, then try again."
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space" in text:
        hint = "The disk is full: free space and try again; nothing was acknowledged."
    return errors.StorageError(f"could not {action} the ledger at {path}: {text}.", hint=hint)


@contextlib.contextmanager
def created(path: Path) -> Iterator[None]:
    """The block creates a repository at ``path``, which is absent or an empty directory
    (the caller checked): if it fails in any way (a full disk, an interrupt), what it left
    there is removed, so that trying again finds ``path`` as it was, not a half-made
    repository that 'already exists'."""
    existed = path.is_dir()
    try:
        yield
    except BaseException:
        if existed:
            for child in list(path.iterdir()) if path.is_dir() else []:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        raise


# --- configuration ----------------------------------------------------------------------

PROTECTION: dict[str, bool | str] = {
    "receive.denyNonFastForwards": True,
    "receive.denyDeletes": True,
    "receive.fsckObjects": True,
    "transfer.fsckObjects": True,
    "core.logAllRefUpdates": "always",
}


def protect(config: pygit2.Config, *, ledger: bool = False) -> None:
    """Write the configuration of a protected repository: stock git refuses to rewind or
    delete its refs and checks every object it receives or fetches, and every ref update
    is logged.

    ``ledger=True`` is for a ledger's own repository (``Ledger.init`` and a verified
    clone): ledger.store keeps its packs itself, so git's automatic gc is off
    (``gc.auto = 0``). A protected remote keeps git's gc for the objects that pushes leave
    behind.
    """
    for key, value in PROTECTION.items():
        config[key] = value
    if ledger:
        config["gc.auto"] = 0


# --- locks ------------------------------------------------------------------------------


def flock(fd: int, *, wait: float | None = 0.0) -> bool:
    """Take an exclusive ``flock`` on ``fd``; whether it is now held.

    With ``wait`` 0, one try; with ``None``, wait as long as it takes (the kernel queues the
    caller); else retried (1 ms, doubling to 50 ms) until ``wait`` seconds have passed. The
    lock goes with the descriptor: closing it, or the process dying, releases it.
    """
    if wait is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def remove_stale_ref_lock(lock: str, name: str) -> None:
    """Remove ``lock``, the lock file of the ref ``name`` (``refs/heads/main.lock``), left by
    a writer that died between creating it and renaming it over the ref.

    Call only while holding the append ``flock``: every writer holds it for as long as its
    ref lock file exists, so one found then is stale by construction. Only a regular file is
    removed (never followed if a symbolic link); anything else there is a
    :class:`ConcurrentUpdate` naming it, left as it is.
    """
    try:
        info = os.lstat(lock)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise errors.ConcurrentUpdate(
            f"{name}.lock is not a regular file ({lock}), so it is not a lock file a writer "
            "left behind; the ledger's branch cannot be moved while it is there.",
            hint="Find out what put it there, remove it, then run 'ledger verify' and retry.",
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)


@dataclass
class OpenFiles:
    """Descriptors a ledger object keeps open across appends; closed by :meth:`close`, at
    the latest when the object is collected or the interpreter exits (``weakref.finalize``
    runs before modules are torn down, unlike ``__del__``)."""

    lock: int | None = None  # <gitdir>/ledger.lock
    gitdir: int | None = None  # the git directory, for syncfs

    def close(self) -> None:
        for name in ("lock", "gitdir"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)


# --- the tool's own files in a directory others may write ------------------------------

#: Flags of every open of the tool's own files inside a ledger or fleet copy directory: never
#: through a symbolic link, and never blocked by a FIFO planted there (it is refused after).
_OWN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _regular(fd: int, shown: str, *, write: bool = False) -> int:
    """``fd`` if it is a regular file (made blocking again), else closed and ``OSError``; to
    be written, also not a hard link (another name of some file elsewhere)."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", shown)
        if write and info.st_nlink != 1:
            raise OSError(errno.EMLINK, "a file with other names (hard links)", shown)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_own(root: Path | str, relative: str, flags: int, mode: int = 0o644) -> int:
    """Open the tool's own file ``relative`` (``/``-separated, no ``..``) under ``root``, a
    ledger's or a fleet copy's git directory, which someone else may be able to write.

    No component below ``root`` is followed if it is a symbolic link, missing directories are
    made, and the file must be a regular file (a FIFO or a device is refused without blocking):
    else ``OSError``, and nothing was written anywhere. So a link planted there can never make
    the tool write to a file elsewhere, nor a FIFO make it hang."""
    *dirs, name = relative.split("/")
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            if flags & os.O_CREAT:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=dfd)
            below = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            os.close(dfd)
            dfd = below
        fd = os.open(name, flags | _OWN_FLAGS, mode, dir_fd=dfd)
    finally:
        os.close(dfd)
    write = bool(flags & (os.O_WRONLY | os.O_RDWR))
    return _regular(fd, os.path.join(root, relative), write=write)


def read_own(path: Path | str, limit: int, offset: int = 0) -> bytes:
    """At most ``limit`` bytes from ``offset`` of the tool's own file ``path`` in a directory
    others may write: ``OSError`` unless it is a regular file (a symbolic link is not followed,
    a FIFO is refused without blocking); ``FileNotFoundError`` when it is absent."""
    fd = _regular(os.open(path, os.O_RDONLY | _OWN_FLAGS), str(path))
    try:
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)


#: What libgit2 reads of a git directory to open it and read its refs and packs: these
#: files, and every entry under these directories.
_GIT_FILES = ("config", "HEAD", "packed-refs", "objects/info/alternates")
_GIT_TREES = ("refs", "objects/pack")
_INCLUDE_RE = re.compile(rb"^\s*\[\s*include", re.IGNORECASE | re.MULTILINE)
_MAX_CONFIG = 1 << 20


def special_entry(path: Path) -> str | None:
    """Why the git directory ``path`` must not be opened by libgit2, or None: one of the
    files it reads when opening the repository or reading its refs and packs is not a
    regular file (a FIFO would block it forever, a symbolic link leads outside, a device
    is not git's), or the config includes another file. Named relative to ``path``; absent
    files are fine. Cheap: a few ``lstat`` calls and a walk of ``refs/`` and ``objects/pack``."""
    for name in _GIT_FILES:
        try:
            info = os.lstat(path / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            return f"{name} is {_kind(info.st_mode)}"
    for top in _GIT_TREES:
        found = _special_below(path, top)
        if found is not None:
            return found
    try:
        config = read_own(path / "config", _MAX_CONFIG)
    except FileNotFoundError:
        return None
    if len(config) == _MAX_CONFIG:
        return f"config is larger than {_MAX_CONFIG >> 20} MiB"
    if _INCLUDE_RE.search(config):
        return "config includes other files ([include] or [includeIf])"
    return None


def _special_below(path: Path, top: str) -> str | None:
    """The first entry at or below ``path/top`` that is neither a regular file nor a
    directory (links not followed), described; None when there is none."""
    try:
        info = os.lstat(path / top)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return f"{top} is {_kind(info.st_mode)}"
    todo = [top]
    while todo:
        here = todo.pop()
        with os.scandir(path / here) as entries:
            for entry in entries:
                name = f"{here}/{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    todo.append(name)
                elif not entry.is_file(follow_symlinks=False):
                    return f"{name} is {_kind(entry.stat(follow_symlinks=False).st_mode)}"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a device or socket"


# --- files written whole ----------------------------------------------------------------

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def create_file(path: str, data: bytes, mode: int = 0o444) -> None:
    """Create ``path`` (never over an existing file: ``FileExistsError``) holding ``data``;
    nothing is left behind if writing fails. Not synced: the caller makes it durable."""
    fd = os.open(path, _NEW_FILE, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def replace_file(directory: str, name: str, data: bytes, mode: int = 0o444) -> None:
    """Write ``name`` in ``directory`` atomically: through a temporary file (named with
    :data:`TMP_PREFIX`) renamed into place, so readers see the old file or the whole new
    one. Not synced: the caller makes it durable."""
    tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}_{name}")
    create_file(tmp, data, mode)
    try:
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def exclude_from_worktree(path: Path) -> Path | None:
    """Keep a ledger made inside a git work tree out of that project's index.

    When ``path`` lies inside the work tree of another (non-bare) git repository, its
    directory is added to that repository's ``info/exclude`` (once), so that ``git add .``
    in the project never picks the ledger up. Returns the exclude file written, else None.
    """
    resolved = path.resolve()
    found = pygit2.discover_repository(str(resolved.parent))
    if not found:
        return None
    try:
        project = pygit2.Repository(found)
    except pygit2.GitError:
        return None
    workdir = project.workdir
    if project.is_bare or not workdir:
        return None
    try:
        relative = resolved.relative_to(Path(workdir).resolve())
    except ValueError:
        return None
    exclude = Path(project.path) / "info" / "exclude"
    line = f"/{relative.as_posix()}/"
    try:
        current = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if line in current.splitlines():
            return exclude
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with exclude.open("a", encoding="utf-8") as out:
            if current and not current.endswith("\n"):
                out.write("\n")
            out.write(f"# the ledger made by 'ledger init'\n{line}\n")
    except OSError as exc:
        raise errors.StorageError(
            f"the ledger was created, but {exclude} could not be written: {exc}.",
            hint=f"Add the line {line} to it yourself so that git ignores the ledger.",
        ) from None
    return exclude
