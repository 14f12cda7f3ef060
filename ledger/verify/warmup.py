"""Starting ``ledger verify``'s worker processes before the verifier is loaded, and planning
their work from the seq index.

The workers of :mod:`ledger.verify.parallel` come from multiprocessing's ``forkserver``,
which first imports the verifier (about a third of a second). ``ledger verify`` of a whole
long chain starts that server here, at the very start of the command, so that its imports
overlap the command's own instead of following them: on a 2,000-record ledger the workers
are ready about that much sooner. Whether the chain is long is read from the size of the
seq index (``ledger-state/seq-index``, 20 bytes per record), a local accelerator that may be
missing or wrong: it only decides this, never anything the verification reports. ``ledger
fleet verify`` starts the same server for its workers (:func:`start_server`, from
:func:`ledger.fleet.warm.start_early`). Nothing heavy is imported here.

The same index gives the workers their commits without the sequential walk back of FORMAT.md
§10 step 2 (:func:`planned_chain`); the chain walk confirms that plan link by link and walks
back when it does not hold (:mod:`ledger.verify.chain`).
"""

from __future__ import annotations

import multiprocessing
import os
import stat
import tempfile
from pathlib import Path

#: Fewer records to check than this are checked in the calling process: starting workers
#: costs more than they save.
MIN_RECORDS = 2000
#: The most worker processes one verification starts (``--jobs`` of ``ledger verify``,
#: ``fleet verify`` and ``fleet report``; more is a usage error): beyond a few per core they
#: only compete for the CPUs and memory.
MAX_JOBS = 256
#: What the server imports before forking workers (the parent's main module, as
#: multiprocessing does by default, the workers' own module, and libsodium's binding, which
#: the first Ed25519 check would otherwise import in each worker: about 10 ms).
PRELOAD = ["__main__", "ledger.verify.parallel", "nacl.bindings"]
_SEQ_INDEX = Path("ledger-state") / "seq-index"
#: The longest chain planned from the seq index; a longer one is walked back.
PLAN_LIMIT = 5_000_000
_NO_ENTRY = "0" * 40


def forkserver_context(preload: list[str] = PRELOAD) -> multiprocessing.context.BaseContext:
    """The context the verifier's workers are started in (one server per process), whose
    server imports ``preload`` once before forking any worker (when it is not running yet)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)
    _short_socket_dir()
    return context


#: The longest path a Unix socket can have (its sun_path field: 108 bytes on Linux, 104 on
#: macOS, the last one a NUL).
_SOCKET_PATH_MAX = 103
#: What multiprocessing adds to the temporary directory for the server's socket.
_SOCKET_SUFFIX = len("/pymp-12345678/listener-12345678")


def _short_socket_dir() -> None:
    """multiprocessing puts the server's socket in a directory it makes under the temporary
    directory. Under a deep TMPDIR that path is too long for a socket, the server cannot
    start, and every commit would be checked in this process; the directory is then made
    under /tmp instead (once per process; where that fails, nothing changes)."""
    if len(tempfile.gettempdir()) + _SOCKET_SUFFIX <= _SOCKET_PATH_MAX:
        return
    import multiprocessing.util

    saved = tempfile.tempdir
    try:
        tempfile.tempdir = "/tmp"  # noqa: S108 (a directory of our own is made in it)
        multiprocessing.util.get_temp_dir()
    except OSError:
        pass
    finally:
        tempfile.tempdir = saved


def hinted_records(gitdir: Path) -> int:
    """How many records the ledger's seq index has room for (0 without one): a hint."""
    try:
        return os.lstat(gitdir / _SEQ_INDEX).st_size // 20  # (a link: its own size)
    except OSError:
        return 0


def start_early(gitdir: Path, jobs: int | None) -> None:
    """Start the worker server now when ``jobs`` allows workers and the chain looks long
    enough to use them; a server that cannot start is left to :mod:`ledger.verify.parallel`
    (which then checks everything in this process)."""
    if workers_allowed(jobs) and hinted_records(gitdir) >= MIN_RECORDS:
        start_server(PRELOAD)


def workers_allowed(jobs: int | None) -> bool:
    """Whether ``jobs`` (None: one per core) allows worker processes at all."""
    return (jobs if jobs is not None else os.cpu_count() or 1) > 1


def start_server(preload: list[str]) -> None:
    """Start the workers' server now, importing ``preload``; one that cannot start is left
    to the pool that needs it (which starts it then, or works without it)."""
    import multiprocessing.forkserver  # here: only a long verification starts the server

    try:
        forkserver_context(preload)
        multiprocessing.forkserver.ensure_running()
    except (OSError, ValueError, RuntimeError):
        return


def planned_chain(gitdir: Path, head: str, count: int) -> list[str] | None:
    """The commit ids of seq 0 to ``count - 1`` as the seq index lists them, oldest first,
    when the last is ``head`` and none is missing; None otherwise. A plan only: nothing in
    it is true until the chain walk has checked every link."""
    if not 0 < count <= PLAN_LIMIT:
        return None
    raw = _read_index(gitdir / _SEQ_INDEX, count * 20)
    if raw is None:
        return None
    if len(raw) != count * 20 or raw[-20:].hex() != head:
        return None
    text = raw.hex()
    ids = [text[i : i + 40] for i in range(0, len(text), 40)]
    return None if _NO_ENTRY in ids else ids


def _read_index(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of the seq index, None when it is absent or not a regular
    file: whoever can write the ledger (or the fleet copy) may have put a symbolic link (not
    followed) or a FIFO (refused without blocking) in its place."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        os.set_blocking(fd, True)
        return os.pread(fd, size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
