"""Step 5 of FORMAT.md §10 over several processes: one chain's commits checked in segments.

The walk back (step 2) stays in the calling process, which keeps only commit ids (or takes
them from the seq index as a plan that the checks confirm: :mod:`ledger.verify.chain`). The chain
after its first commit is cut into contiguous segments, and worker processes check each with
:meth:`commit.Verifier.check_alone` (every check but trust), starting from the facts its
parent commit has when the chain up to it is sound: seq = its position, digest = SHA-256 of
its object, tree = its tree; the ledger id is the genesis's or the saved state's. The
calling process then takes the segments in chain order: a segment whose assumed start is
exactly what the segment before it ended with is settled commit by commit
(:meth:`commit.Verifier.settle`: the trust decisions of 5.7 and the trust changes of 5.9,
the only other state carried along the chain); one whose assumption does not hold (after a
seq gap, an unreadable commit, a lost worker) is checked again here, sequentially. Either
way the findings, their order, and everything else in the result are those of the
sequential verification: both run the same two halves, with the same inputs.

Workers are started with the ``forkserver`` method (a process that has used libgit2 is never
forked), each opening the repository by its path, and they are started before the walk back
so that their start-up overlaps it. Memory stays small: segments are ids, few are in flight,
and what comes back per commit is its findings and its signer.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pygit2

from ledger import errors
from ledger.format import gitobj
from ledger.verify import commit, findings, objects, rules, warmup

#: Fewer records to check than this are checked in this process (``warmup.MIN_RECORDS``).
MIN_RECORDS = warmup.MIN_RECORDS
#: Commits per segment (a worker's unit of work), at most; shorter chains are cut into
#: about eight segments per worker, so that the workers finish together.
SEGMENT = 1000


def jobs_for(jobs: int | None) -> int:
    """The number of worker processes ``jobs`` asks for (None: every core), at most
    ``warmup.MAX_JOBS``."""
    if jobs is None:
        return min(os.cpu_count() or 1, warmup.MAX_JOBS)
    if not 1 <= jobs <= warmup.MAX_JOBS:
        raise errors.InputError(
            f"{jobs} is not a number of processes to verify with.",
            hint=f"Give 1 to {warmup.MAX_JOBS} (1: all in this process).",
        )
    return jobs


def segment_size(count: int, jobs: int) -> int:
    """Commits per segment when ``jobs`` workers check ``count`` commits."""
    return min(SEGMENT, max(50, -(-count // (8 * jobs))))


def workers_for(count: int, jobs: int) -> int:
    """The worker processes to start for ``count`` commits: ``jobs``, but never more than
    there are segments to give them (``--jobs 300`` on 2,000 commits starts 40)."""
    return max(1, min(jobs, -(-count // segment_size(count, jobs))))


# --- the worker side ------------------------------------------------------------------------

_WORKER: list[commit.Verifier] = []


def _start_worker(path: str, require_user_presence: bool) -> None:
    """A worker's initializer: the repository, opened once, with libgit2's caches kept
    small as in the calling process (a verification reads each object once)."""
    settings = pygit2.settings
    settings.cache_max_size(8 * 1024 * 1024)
    settings.mwindow_size = min(settings.mwindow_size, 16 * 1024 * 1024)
    settings.mwindow_mapped_limit = min(settings.mwindow_mapped_limit, 48 * 1024 * 1024)
    _WORKER.append(commit.Verifier(objects.open_repo(path), require_user_presence))


def _ready() -> bool:
    return bool(_WORKER)


#: One commit's :class:`commit.Checked` as sent back: its fields in order, as a tuple (a
#: tuple of plain values pickles many times faster than a dataclass).
_Row = tuple[Any, ...]


@dataclass(slots=True)
class _Segment:
    """A checked segment: the start it assumed, its end, and each commit's half-check."""

    start: commit.Expected
    end: commit.Expected
    rows: list[_Row]
    without_presence: int
    ledger_id: str | None  # as the segment left it


def _check_segment(
    start: commit.Expected | None, parent: str, seq: int | None, ids: list[str], ledger: str | None
) -> _Segment:
    """Check ``ids`` (oldest first) from ``start``, or, when None, from the facts of a sound
    ``parent`` at ``seq``."""
    v = _WORKER[0]
    v.ledger_id = ledger
    v.signatures.without_presence = 0
    prev = start if start is not None else _assume(v, parent, seq)
    first = prev
    rows = []
    signers: dict[str, str] = {}  # one string per signer: pickled once per segment
    for oid in ids:
        c, prev = v.check_alone(oid, prev, is_first=False)
        signer = signers.setdefault(c.signer, c.signer) if c.signer is not None else None
        rows.append((c.oid, c.seq, c.notes, c.trust_at, signer, c.change, c.genesis, c.claims))
    return _Segment(first, prev, rows, v.signatures.without_presence, v.ledger_id)


def _assume(v: commit.Verifier, parent: str, seq: int | None) -> commit.Expected:
    """What checking ``parent`` returns when the chain up to it is sound (the calling
    process compares it with what it did return)."""
    try:
        raw = v.reader.read(parent, rules.OBJ_COMMIT, "commit")
        tree = objects.parse_commit(raw).tree
    except objects.ObjectError:
        return commit.Expected(parent, seq, None, None, known=False)
    digest = gitobj.object_sha256(gitobj.OBJ_COMMIT, raw)
    return commit.Expected(parent, seq, digest, tree)


# --- the calling side -----------------------------------------------------------------------


class Pool:
    """The worker processes of one verification, started in the background (so that their
    start-up overlaps the walk back, and the first commits checked here) and stopped by
    :meth:`close`."""

    def __init__(self, path: str, jobs: int, require_user_presence: bool) -> None:
        self.jobs = jobs
        self._executor: ProcessPoolExecutor | None = None
        self._started: list[Future[bool]] = []
        self._thread = threading.Thread(
            target=self._start, args=(path, require_user_presence), daemon=True
        )
        self._thread.start()

    def _start(self, path: str, require_user_presence: bool) -> None:
        try:
            context = warmup.forkserver_context()  # (perhaps started early: warmup)
            executor = ProcessPoolExecutor(
                self.jobs,
                mp_context=context,
                initializer=_start_worker,
                initargs=(path, require_user_presence),
            )
            self._started = [executor.submit(_ready) for _ in range(self.jobs)]  # start all now
            self._executor = executor
        except (OSError, ValueError, RuntimeError, BrokenProcessPool):
            self._executor = None  # no workers: everything is checked in the calling process

    def ready(self) -> bool:
        """Whether the workers are up (or could not be started: :meth:`executor` is None)."""
        return not self._thread.is_alive() and all(f.done() for f in self._started)

    def executor(self) -> ProcessPoolExecutor | None:
        """The started executor, or None when the workers could not be started."""
        self._thread.join()
        return self._executor

    def close(self) -> None:
        executor = self.executor()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


@dataclass(slots=True)
class _Task:
    """A segment in flight: its commits (oldest first), the ledger id it was sent with."""

    ids: list[str]
    ledger: str | None
    future: Future[_Segment] | None


#: Commits checked here at a time while the workers start (0: wait for them).
_HERE = 50


def check_forward(
    v: commit.Verifier,
    pool: Pool,
    ids: list[str],
    first: int,
    prev: commit.Expected,
    base_seq: int,
    progress: findings.ProgressFn | None,
) -> commit.Expected:
    """Check the chain ``ids`` (newest first, as walked back) from its ``first`` commit in
    chain order (0: the oldest), whose parent's facts are ``prev``; the oldest commit's seq
    is ``base_seq`` on a sound chain. Until the workers are up, commits are checked here;
    then the workers check segments, settled here in chain order. Returns the facts of the
    head, as the sequential walk would."""
    total = len(ids)
    size = segment_size(total - first, pool.jobs)
    pos = done = first  # the next commit to send / to settle, in chain order
    shift = 0  # seq minus position, as last seen (not 0 after a seq gap)
    pending: deque[_Task] = deque()
    executor: ProcessPoolExecutor | None = None
    waiting = True  # for the workers to start
    while pending or pos < total:
        if waiting and (_HERE == 0 or pool.ready()):
            waiting, executor = False, pool.executor()
        while executor is not None and pos < total and len(pending) < 2 * pool.jobs:
            end = min(pos + size, total)
            chunk = [ids[total - 1 - i] for i in range(pos, end)]
            start = None if pending else prev  # nothing in flight: the start is known
            seq = base_seq + pos - 1 + shift
            parent = ids[total - pos] if pos > 0 else ""
            try:
                future = executor.submit(_check_segment, start, parent, seq, chunk, v.ledger_id)
            except (BrokenProcessPool, RuntimeError):
                executor = None  # lost workers: the rest is checked here
                break
            pending.append(_Task(chunk, v.ledger_id, future))
            pos = end
        if pending:
            task = pending.popleft()
            prev = _settle(v, task, prev)
        else:  # the workers are starting (or lost, or never started): some commits here
            end = min(pos + (_HERE or SEGMENT), total)
            task = _Task([ids[total - 1 - i] for i in range(pos, end)], v.ledger_id, None)
            prev = _settle(v, task, prev)
            pos = end
        done += len(task.ids)
        if prev.seq is not None:
            shift = prev.seq - (base_seq + done - 1)
        if progress is not None:
            progress(done, total)
    return prev


def _settle(v: commit.Verifier, task: _Task, prev: commit.Expected) -> commit.Expected:
    """Settle a task's commits in chain order after ``prev``: from its worker's results when
    they started from ``prev`` with the ledger id as it is here, else by checking them here
    (the assumption did not hold, the worker was lost, or no worker had it)."""
    checked = _result(task.future)
    if checked is None or checked.start != prev or task.ledger != v.ledger_id:
        for oid in task.ids:
            prev = v.check_commit(oid, prev, is_first=False)
        return prev
    for row in checked.rows:
        v.settle(commit.Checked(*row))
    v.checked += len(checked.rows)
    v.signatures.without_presence += checked.without_presence
    v.ledger_id = checked.ledger_id
    return checked.end


def _result(future: Future[_Segment] | None) -> _Segment | None:
    """A segment's result; None when its worker was lost (it is then checked here). Any
    other exception is the checks' own, raised as the sequential walk would raise it."""
    if future is None:
        return None
    try:
        return future.result()
    except (BrokenProcessPool, CancelledError, OSError, EOFError):
        return None
