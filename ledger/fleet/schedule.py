"""The work of a fleet verification: which chains to verify (:class:`Plan`, one per ledger,
from the copy's heads and the auditor's state) and running them (:func:`run`), in this
process or in worker processes started fresh.

Everything decided here is scheduling: which heads need reading, in which order, where. A
head on the verified chain needs none (it is the verified head or behind it); a head the
commit graph puts under another head is verified as part of that head's chain; the
verifier's results then decide (:mod:`ledger.fleet.audit`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from ledger import errors, store
from ledger.fleet import claims, state, warm
from ledger.verify import chain, findings, warmup
from ledger.verify import state as verify_state

#: ``progress(done, total)``: verification tasks finished so far.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Task:
    """One chain to verify in a worker: picklable, and nothing but what the verifier needs."""

    copy: str
    ledger_id: str
    head: str
    pin: str | None
    since: verify_state.VerifiedState | None
    commits: tuple[str, ...]
    size: int = 0  # records to read, as the head's unverified trailer says (scheduling only)
    check_repository: bool = True  # replace refs, grafts, shallow: see run()
    jobs: int = 1  # the verifier's own worker processes: never inside a worker (see run())
    remembered: verify_state.VerifiedState | None = None  # a full check of a known chain


@dataclass
class Plan:
    """One ledger: what the copy holds, what the auditor knew, and how it is pinned."""

    ledger_id: str
    heads: dict[str, str]
    prev: state.LedgerState | None
    pin: str | None
    pin_source: str | None
    since: verify_state.VerifiedState | None
    unpinned: bool = False  # a pin file was given and does not name this ledger
    tasks: list[Task] = field(default_factory=list)
    behind: dict[str, findings.VerifyResult] = field(default_factory=dict)
    """Heads on the verified chain, behind its head: nothing to verify (lag, or rollback)."""
    covered: dict[str, str] = field(default_factory=dict)
    """Heads whose commit another head's chain seems to hold: verified as part of that one."""
    asked: list[str] = field(default_factory=list)

    @property
    def is_new(self) -> bool:
        return self.prev is None or self.prev.verified is None


def last_held(remote: state.RemoteHead) -> tuple[str, int | None]:
    """The head a remote held when the auditor last accepted it: the one a fetch found it
    rewound from (kept until a verification judged it), else the one it holds."""
    back = remote.rewound_from
    if isinstance(back, dict) and isinstance(back.get("head"), str):
        seq = back.get("seq")
        return back["head"], seq if isinstance(seq, int) else None
    return remote.head, remote.seq


# --- planning ---------------------------------------------------------------------------------


def make_plan(
    path: Path | str,
    repo: pygit2.Repository,
    lid: str,
    heads: dict[str, str],
    pin_map: dict[str, str] | None,
    own: dict[str, str],
    *,
    added: set[str],
    full: bool = False,
) -> Plan:
    """One ledger's plan. ``added``: the remotes the auditor added (what is remembered of
    any other name is not judged). ``full``: every head's whole chain is read again, none
    skipped as verified before; the verified head is still what rollbacks and rewrites are
    judged against (the verifier's ``remembered``), and its genesis is the pin if none is
    given."""
    prev = state.load_ledger(path, lid)
    if prev is not None:
        prev.remotes = {n: r for n, r in prev.remotes.items() if n in added}
    if pin_map is not None:
        pin = pin_map.get(lid)
        source = "pin file" if pin else None
    else:
        pin = own.get(lid)
        source = "this machine" if pin else None
    since = prev.verified if prev is not None else None
    if since is not None and (
        (pin is not None and since.genesis != pin) or (pin_map is not None and pin is None)
    ):
        since = None  # another genesis's head, or an auditor's pin file without this ledger
    plan = Plan(lid, dict(heads), prev, pin, source, since, pin_map is not None and pin is None)
    before = {last_held(r)[0] for r in prev.remotes.values()} if prev is not None else set()
    distinct = sorted(set(heads.values()))
    asked = sorted(set(distinct) | before)
    if since is not None and not full:
        for head in distinct:
            if head != since.head and claims.on_verified_chain(repo, head, since.head):
                plan.behind[head] = _known(repo, head, asked, since)
    ahead = [h for h in distinct if h not in plan.behind]
    moved = (
        full or since is None or any(h != since.head for h in ahead) or bool(before - {*distinct})
    )
    if distinct and not moved and since is not None and since.head in ahead:
        plan.behind[since.head] = _known(repo, since.head, asked, since)  # nothing to read
    elif distinct and moved:
        # A head the commit graph puts under another head is verified as part of that one's
        # chain (only scheduling: the verifier's ``included`` then decides where it is).
        tips = [h for h in ahead if not any(claims.below(repo, h, o) for o in ahead if o != h)]
        for head in ahead:
            if head not in tips:
                plan.covered[head] = next(t for t in tips if claims.below(repo, head, t))
        resume, remembered = (None, since) if full else (since, None)
        task_pin = pin or (remembered.genesis if remembered is not None else None)
        for head in tips:
            others = tuple(h for h in asked if h != head)
            size = _size(repo, head, resume)
            plan.tasks.append(
                Task(str(path), lid, head, task_pin, resume, others, size, remembered=remembered)
            )
    plan.asked = asked
    return plan


def _size(repo: pygit2.Repository, head: str, since: verify_state.VerifiedState | None) -> int:
    """How many records verifying ``head`` will read, as its ``Ledger-Seq`` trailer claims:
    unverified, so it only orders and places the work (a lie costs time, never a verdict)."""
    try:
        seq = claims.seq_of(repo.odb.read(head)[1])
    except (KeyError, ValueError, pygit2.GitError):
        seq = None
    if seq is None:
        return warm.IN_PROCESS_BELOW  # unknown: worth a worker
    return max(1, seq - (since.seq if since is not None else -1))


def _known(
    repo: pygit2.Repository, head: str, asked: list[str], since: verify_state.VerifiedState
) -> findings.VerifyResult:
    """A head on the verified chain (the verified head, or behind it), as if verified now:
    nothing to read. Its seq is a verified commit's trailer; ``included``, which of the
    commits asked about its chain holds."""
    seq: int | None = since.seq
    if head != since.head:
        try:
            seq = claims.seq_of(repo.odb.read(head)[1])
        except (KeyError, ValueError, pygit2.GitError):
            seq = None
    return findings.VerifyResult(
        findings=[],
        head=head,
        seq=seq,
        records_checked=0,
        genesis=since.genesis,
        state=since if head == since.head else None,
        ledger_id=since.ledger_id,
        genesis_pinned=True,
        included={h: 0 if claims.on_verified_chain(repo, h, head) else None for h in asked},
    )


# --- running: in this process or in workers ---------------------------------------------------


def history_substituted(copy: str) -> bool:
    """Whether the copy has anything that makes stock git show other history than the
    objects hold: a ``refs/replace/`` ref, ``info/grafts`` or ``shallow`` (FORMAT.md §1)."""
    repo = pygit2.Repository(copy, store.OPEN_FLAGS)
    gitdir = Path(repo.path)
    if os.path.lexists(gitdir / "info" / "grafts") or os.path.lexists(gitdir / "shallow"):
        return True
    return any(name.startswith("refs/replace/") for name in repo.references)


def verify_task(task: Task) -> findings.VerifyResult:
    """A worker's job: one chain, never an exception (a chain that cannot be read is a finding)."""
    try:
        return chain.verify_chain(
            task.copy,
            task.head,
            trust_genesis=task.pin,
            since=task.since,
            remembered=task.remembered,
            commits=task.commits,
            check_repository=task.check_repository,
            jobs=task.jobs,
        )
    except errors.LedgerError as exc:
        return findings.VerifyResult(
            findings=[findings.Finding("object-missing", None, task.head, exc.message)],
            head=task.head,
            seq=None,
            records_checked=0,
            genesis=None,
        )


def run(
    tasks: list[Task], jobs: int, progress: Progress | None, *, small_here: bool = True
) -> dict[tuple[str, str], findings.VerifyResult]:
    """Each task's result, keyed by (ledger id, head). In this process with one job, one
    task, or (``small_here``: the job count was not asked for) little work in all."""
    done: dict[tuple[str, str], findings.VerifyResult] = {}
    if tasks and not history_substituted(tasks[0].copy):
        # The copy-wide check (every ref of the copy) once here, not once per task: each
        # task repeats it, and reports what it finds, only when there is something to find.
        tasks = [dataclasses.replace(t, check_repository=False) for t in tasks]
    total = len(tasks)
    if progress is not None:
        progress(0, total)
    small = small_here and sum(t.size for t in tasks) < warm.IN_PROCESS_BELOW
    if jobs <= 1 or total <= 1 or small:
        for task in tasks:
            # In this process a long chain may use the verifier's own workers (one ledger of
            # 50,000 records); tasks sent to workers below never do (no nested pools).
            done[(task.ledger_id, task.head)] = verify_task(dataclasses.replace(task, jobs=jobs))
            if progress is not None:
                progress(len(done), total)
        return done
    with futures.ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=_context()) as pool:
        pending = {pool.submit(verify_task, t): t for t in tasks}
        for fut in futures.as_completed(pending):
            task = pending[fut]
            done[(task.ledger_id, task.head)] = fut.result()
            if progress is not None:
                progress(len(done), total)
    return done


def _context() -> multiprocessing.context.BaseContext:
    """Workers are started fresh ("forkserver", else "spawn"), never forked from this
    process: it holds libgit2 handles and maybe threads. The server imports this module
    (and so the verifier) once, before forking the workers (``ledger fleet verify`` starts
    it at the command's start: :func:`ledger.fleet.warm.start_early`)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        return warmup.forkserver_context(warm.PRELOAD)
    return multiprocessing.get_context("spawn")
