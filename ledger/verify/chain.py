"""The chain walk: verify a ledger's first-parent chain forward from its genesis (or from
the last verified head), commit by commit, while only the commit ids are held in memory.

The steps are those of FORMAT.md §10, numbered as there; step 5, each commit, is
:mod:`ledger.verify.commit`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from ledger import errors
from ledger.verify import commit, findings, objects, parallel, rules, state, warmup


def _check_genesis_arg(value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip().lower()
    if not rules.HEX40.fullmatch(text):
        raise errors.InputError(
            f"{value!r} is not a full commit id; a genesis is pinned by all 40 hex digits.",
            hint="Copy the genesis commit id printed by 'ledger init' (or 'ledger verify').",
        )
    return text


def verify_ledger(
    repo_path: Path | str | pygit2.Repository,
    *,
    ref: str = rules.MAIN_REF,
    trust_genesis: str | None = None,
    since: state.VerifiedState | None = None,
    progress: findings.ProgressFn | None = None,
    commits: Collection[str] = (),
    remembered: state.VerifiedState | None = None,
    require_user_presence: bool = False,
    jobs: int | None = None,
) -> findings.VerifyResult:
    """Verify the ledger's branch ``ref`` (FORMAT.md), reporting every finding.

    ``trust_genesis`` pins the genesis commit (full id); otherwise ``since``'s genesis is
    the pin; otherwise the result is unpinned (``genesis_pinned`` false: the repository's
    own ``ledger.genesis`` config is on the same disk and is not used as a pin).
    ``since`` (a saved :class:`state.VerifiedState`) verifies only the records after its head,
    after checking that the chain still holds that head at its seq (``rewrite``) and has
    not been cut back (``rollback``). ``progress(done, total)`` is called as records are
    verified. ``commits`` are commit ids to look up on the verified chain
    (``result.included``). ``remembered`` (a saved state) verifies the whole chain, as
    without ``since``, and reports how the chain left that head exactly as resuming from it
    would (FORMAT.md §10 step 3: ``rollback``, ``rewrite``). ``require_user_presence``: a
    security key's signature without the user-presence flag is a ``user-presence`` finding
    (FORMAT.md §6; without it such signatures are counted in ``without_presence``).
    ``jobs``: how many worker processes check the commits of a long chain (None: one per
    core when ``repo_path`` is a path, see :func:`verify_chain`; 1: all in this process); the
    result is the same whatever it is. Raises :class:`LedgerNotFound` when there is no
    repository or (without a saved state) no ``ref``.
    """
    if jobs is None and not isinstance(repo_path, pygit2.Repository):
        jobs = parallel.jobs_for(None)  # (verify_chain is given the repository opened here)
    repo = objects.open_repo(repo_path)
    try:
        reference = repo.references.get(ref)
    except (pygit2.GitError, ValueError) as exc:
        raise errors.CorruptLedger(
            f"the ledger at {repo.path.rstrip('/')} is corrupt: its reference {ref} cannot be "
            f"read ({exc}).",
            hint="A damaged or tampered copy: restore it from a remote ('ledger clone'), or "
            "write the reference back from a copy you trust.",
        ) from None
    saved = since or remembered
    if reference is None:
        if saved is not None:
            v = commit.Verifier(repo)
            _check_repository(v)
            v.add("rollback", None, None, f"{ref} does not exist; it was at seq {saved.seq}")
            return findings.VerifyResult(
                findings=v.findings,
                head=None,
                seq=None,
                records_checked=0,
                genesis=saved.genesis,
                state=None,
                genesis_pinned=True,
                ledger_id=saved.ledger_id,
            )
        raise errors.LedgerNotFound(
            f"{repo.path} holds no {ref}; it is not a ledger or it is empty.",
            hint="Point --ledger at a ledger made by 'ledger init' or 'ledger clone'.",
        )
    try:
        target = str(reference.resolve().target)
    except (KeyError, pygit2.GitError) as exc:
        raise errors.StorageError(
            f"the ref {ref} of {repo.path} cannot be resolved: {exc}."
        ) from None
    return verify_chain(
        repo,
        target,
        trust_genesis=trust_genesis,
        since=since,
        progress=progress,
        commits=commits,
        remembered=remembered,
        require_user_presence=require_user_presence,
        jobs=jobs,
    )


def verify_chain(
    repo: Path | str | pygit2.Repository,
    head: str,
    *,
    trust_genesis: str | None = None,
    since: state.VerifiedState | None = None,
    progress: findings.ProgressFn | None = None,
    commits: Collection[str] = (),
    check_repository: bool = True,
    remembered: state.VerifiedState | None = None,
    require_user_presence: bool = False,
    jobs: int | None = None,
) -> findings.VerifyResult:
    """Verify the first-parent chain ending at commit ``head``.

    For a pre-receive hook, pass the repository (with the quarantine directory as an odb
    alternate) and the pushed new head; ``since`` may be the state of the head the remote
    already had. Otherwise as :func:`verify_ledger`.

    ``jobs`` worker processes check the commits when there are at least
    ``parallel.MIN_RECORDS`` of them (:mod:`ledger.verify.parallel`; the result is the same,
    finding for finding). None: one per core (``os.cpu_count()``) when ``repo`` is a path,
    1 when it is an open repository, since workers open it again by its path and would not
    see object directories added to it in this process (a hook's quarantine); pass ``jobs``
    to use workers anyway. Workers are started by multiprocessing's ``forkserver``: as for
    any multiprocessing, a script calling this at its top level needs the
    ``if __name__ == "__main__":`` guard. Code already running in worker processes of its
    own (verifying many ledgers at once) should pass ``jobs=1``.
    """
    if jobs is None and isinstance(repo, pygit2.Repository):
        jobs = 1
    with _bounded_libgit2_memory():
        return _verify_chain(
            repo,
            head,
            trust_genesis=trust_genesis,
            since=since,
            progress=progress,
            commits=commits,
            check_repository=check_repository,
            remembered=None if since is not None else remembered,
            require_user_presence=require_user_presence,
            jobs=parallel.jobs_for(jobs),
        )


_LIMITS_LOCK = threading.Lock()
_LIMITS_SAVED: list[int] = []
_LIMITS_USERS = [0]


@contextmanager
def _bounded_libgit2_memory() -> Iterator[None]:
    """Keep libgit2's caches and pack maps small while verifying.

    A verification reads every object once, so caching them does not help, and by default
    libgit2 keeps up to 256 MB of small objects and maps packs in 1 GB windows (resident
    pages count as the process's memory). The limits are process-wide, so they are put back
    afterwards.
    """
    settings = pygit2.settings
    with _LIMITS_LOCK:
        if not _LIMITS_SAVED:
            _LIMITS_SAVED.extend(
                [settings.cached_memory[1], settings.mwindow_size, settings.mwindow_mapped_limit]
            )
            settings.cache_max_size(8 * 1024 * 1024)
            settings.mwindow_size = min(_LIMITS_SAVED[1], 16 * 1024 * 1024)
            settings.mwindow_mapped_limit = min(_LIMITS_SAVED[2], 48 * 1024 * 1024)
        _LIMITS_USERS[0] += 1
    try:
        yield
    finally:
        with _LIMITS_LOCK:
            _LIMITS_USERS[0] -= 1
            if _LIMITS_USERS[0] == 0:
                cache, window, mapped = _LIMITS_SAVED
                settings.cache_max_size(cache)
                settings.mwindow_size = window
                settings.mwindow_mapped_limit = mapped
                _LIMITS_SAVED.clear()


def _verify_chain(
    repo: Path | str | pygit2.Repository,
    head: str,
    *,
    trust_genesis: str | None,
    since: state.VerifiedState | None,
    progress: findings.ProgressFn | None,
    commits: Collection[str],
    check_repository: bool,
    remembered: state.VerifiedState | None,
    require_user_presence: bool,
    jobs: int,
) -> findings.VerifyResult:
    pin = _check_genesis_arg(trust_genesis)
    repo = objects.open_repo(repo)
    head = head.strip().lower()
    workers = _Workers(repo.path, jobs, require_user_presence)
    try:
        args = (head, pin, since, progress, commits, check_repository, remembered, workers)
        v = commit.Verifier(repo, require_user_presence)
        workers.start_early(v, head, since)
        result = _verify_with(v, *args, True)
        while result is None:  # a plan from the seq index, and findings: walk back instead
            result = _verify_with(commit.Verifier(repo, require_user_presence), *args, False)
        return result
    finally:
        workers.close()


def _verify_with(
    v: commit.Verifier,
    head: str,
    pin: str | None,
    since: state.VerifiedState | None,
    progress: findings.ProgressFn | None,
    commits: Collection[str],
    check_repository: bool,
    remembered: state.VerifiedState | None,
    workers: _Workers,
    planned: bool,
) -> findings.VerifyResult | None:
    """Steps (1)-(6); None when the chain was ``planned`` from the seq index and anything
    was found (the plan may be what is wrong: the caller verifies again, walking back)."""
    if check_repository:
        _check_repository(v)  # (1)
    wanted = {c.strip().lower() for c in commits}
    walk = _planned_walk(v, head, since, wanted, workers) if planned else None
    if walk is None:
        walk = _walk_back(v, head, since, wanted, keep=workers.pool is None)  # (2)
    genesis = walk.ids[-1] if walk.reached_root else (since.genesis if since is not None else None)
    pinned = pin or (since.genesis if since is not None else None)
    if pin is not None and since is not None and since.genesis != pin:
        v.add(
            "genesis-mismatch",
            None,
            None,
            f"the saved state is for genesis {since.genesis}, not the pinned {pin}",
        )
    start = _resume(v, walk, head, since)  # (3)
    if remembered is not None:
        _check_remembered(v, walk, head, remembered)
    if walk.reached_root and pinned is not None and walk.ids[-1] != pinned:  # (4)
        v.add(
            "genesis-mismatch",
            0,
            walk.ids[-1],
            f"the chain starts at {walk.ids[-1]}, the pinned genesis is {pinned}",
        )
    if walk.broken is not None:
        v.add(walk.broken.rule, None, walk.broken_at, f"the chain is broken: {walk.broken.message}")
    last = _verify_forward(v, walk, start, progress, workers)  # (5)
    if walk.planned and v.findings:
        return None
    included = _included(v, walk, wanted, last, since)
    verified = None  # (6)
    ok = not v.findings
    if ok and last.digest is not None and last.seq is not None and v.ledger_id is not None:
        verified = state.VerifiedState(
            genesis=str(genesis),
            head=head if walk.ids else since.head if since is not None else head,
            seq=last.seq,
            prev_sha256=last.digest,
            ledger_id=v.ledger_id,
            keys=v.trust.snapshot(),
            verified_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
    return findings.VerifyResult(
        findings=v.findings,
        head=head,
        seq=last.seq,
        records_checked=v.checked,
        genesis=genesis,
        state=verified,
        genesis_pinned=pinned is not None,
        ledger_id=v.ledger_id,
        since_seq=start.seq if start is not None else None,
        included=included,
        keys=v.trust.snapshot() if v.trust.known else [],
        without_presence=v.signatures.without_presence,
        witnessed=v.witnessed,
    )


# (1) Repository: history substitutions stock git would apply.
def _check_repository(v: commit.Verifier) -> None:
    repo = v.repo
    for name in repo.references:
        if name.startswith("refs/replace/"):
            try:
                target = str(repo.references[name].target)
            except (KeyError, pygit2.GitError):
                target = "?"
            v.add(
                "replace-refs",
                None,
                target if rules.HEX40.fullmatch(target) else None,
                f"{name} exists: it makes stock git show object {name[13:]} as {target}",
            )
    grafts = Path(repo.path) / "info" / "grafts"
    if os.path.lexists(grafts):
        v.add("grafts", None, None, f"{grafts} exists: it rewrites parents for stock git")
    shallow = Path(repo.path) / "shallow"
    if os.path.lexists(shallow):
        v.add(
            "grafts",
            None,
            None,
            f"{shallow} exists: stock git treats the commits it lists as having no parents, "
            "so it shows a shorter history than the objects hold",
        )


@dataclass
class _Walk:
    """The chain as walked back from the head: commit ids only, newest first."""

    ids: list[str] = field(default_factory=list)
    reached_root: bool = False
    found_base: bool = False  # stopped at the saved head
    broken: objects.ObjectError | None = None
    broken_at: str | None = None
    position: dict[str, int] = field(default_factory=dict)  # asked-about id -> index in ids
    planned: bool = False  # taken from the seq index, not walked: see _planned_walk


# (2) Walk back from the head collecting ids only, stopping at the root or at the saved head.
def _walk_back(
    v: commit.Verifier,
    head: str,
    since: state.VerifiedState | None,
    wanted: set[str],
    keep: bool = True,
) -> _Walk:
    walk = _Walk()
    cur: str | None = head
    while cur is not None:
        if since is not None and cur == since.head:
            walk.found_base = True
            break
        try:
            parents = v.reader.parents_of(cur, keep=keep)
        except objects.ObjectError as exc:
            walk.broken, walk.broken_at = exc, cur
            break
        walk.ids.append(cur)
        if cur in wanted:
            walk.position[cur] = len(walk.ids) - 1
        if not parents:
            walk.reached_root = True
            break
        cur = parents[0]
    return walk


#     A whole chain checked by workers may instead be taken from the seq index, so that the
#     workers start at once: only a plan. Its first commit is checked here to have no
#     parent, and step (5) checks that each other commit's first parent is the one before it
#     (a `parents` finding otherwise); so a plan that passes every check is exactly the chain
#     the walk back would have found, and any finding sends the caller back to walking.
def _planned_walk(
    v: commit.Verifier,
    head: str,
    since: state.VerifiedState | None,
    wanted: set[str],
    workers: _Workers,
) -> _Walk | None:
    if since is not None or workers.pool is None:
        return None
    ids = warmup.planned_chain(Path(v.repo.path), head, workers.hint)
    if ids is None:
        return None
    try:
        if v.reader.parents_of(ids[0]):
            return None
    except objects.ObjectError:
        return None
    ids.reverse()  # newest first, as walked back
    walk = _Walk(ids=ids, reached_root=True, planned=True)
    if wanted:
        walk.position = {oid: i for i, oid in enumerate(ids) if oid in wanted}
    return walk


# (3) Resume from the last verified head when the chain still holds it; otherwise say how
#     the chain left it (rollback, rewrite) and verify the whole chain.
def _resume(
    v: commit.Verifier, walk: _Walk, head: str, since: state.VerifiedState | None
) -> state.VerifiedState | None:
    if since is None:
        return None
    if walk.found_base:
        return since
    if walk.broken is None:
        _left(v, walk, head, since)
    return None


def _check_remembered(
    v: commit.Verifier, walk: _Walk, head: str, saved: state.VerifiedState
) -> None:
    """Plain verification of a copy verified before: the same findings as step (3) would
    make when resuming, while the whole chain is verified."""
    if walk.broken is not None:
        return
    at = len(walk.ids) - 1 - saved.seq
    if at >= 0 and walk.ids[at] == saved.head:
        return
    _left(v, walk, head, saved)


def _left(v: commit.Verifier, walk: _Walk, head: str, since: state.VerifiedState) -> None:
    """How a whole chain walked back to its root left the saved head: ``rollback`` (plus
    ``rewrite`` when the head is not the saved head's ancestor) or ``rewrite``."""
    head_seq = len(walk.ids) - 1
    if head_seq < since.seq:
        v.add(
            "rollback",
            head_seq,
            head,
            f"the head is at seq {head_seq}, behind the verified head {since.head} "
            f"at seq {since.seq}",
        )
        if not _is_ancestor(v, head, since.head, since.seq - head_seq):
            v.add("rewrite", head_seq, head, "the head is not an ancestor of the verified head")
    else:
        at = walk.ids[len(walk.ids) - 1 - since.seq]
        v.add(
            "rewrite",
            since.seq,
            at,
            f"the commit at seq {since.seq} is {at}, the verified head was {since.head}",
        )


# (5) Each commit, oldest first, from the saved head, the root, or the break in the chain.
def _verify_forward(
    v: commit.Verifier,
    walk: _Walk,
    start: state.VerifiedState | None,
    progress: findings.ProgressFn | None,
    workers: _Workers,
) -> commit.Expected:
    if start is not None:
        v.ledger_id = start.ledger_id
        v.trust.load(start.keys)
        base_tree: str | None = None
        try:
            base_tree = objects.parse_commit(
                v.reader.read(start.head, rules.OBJ_COMMIT, "commit")
            ).tree
        except objects.ObjectError as exc:
            v.add(exc.rule, start.seq, start.head, exc.message)
        prev = commit.Expected(start.head, start.seq, start.prev_sha256, base_tree)
    elif walk.reached_root:
        prev = commit.Expected(None, None, None, None)
    else:
        v.trust.known = False
        prev = commit.Expected(walk.broken_at, None, None, None, known=False)
    total = len(walk.ids)
    step = max(1, min(1000, total // 100 or 1))
    if progress is not None:
        progress(0, total)
    pool = workers.pool_for(total) if walk.broken is None else None
    if pool is not None and total > 1:  # the genesis here first: its ledger id and trust
        first = 1 if walk.reached_root else 0
        if first:
            prev = v.check_commit(walk.ids[-1], prev, is_first=True)
        base = 0 if start is None else start.seq + 1
        return parallel.check_forward(v, pool, walk.ids, first, prev, base, progress)
    first_commit = True
    for done, oid in enumerate(_reversed(walk.ids), start=1):
        prev = v.check_commit(oid, prev, is_first=first_commit and walk.reached_root)
        first_commit = False
        if progress is not None and (done % step == 0 or done == total):
            progress(done, total)
    return prev


class _Workers:
    """Worker processes for step (5) when there are enough commits and ``jobs`` > 1,
    started as early as possible (before the walk back when the head's own Ledger-Seq, an
    unverified hint used only to decide this, says the chain is long)."""

    def __init__(self, path: str, jobs: int, require_user_presence: bool) -> None:
        self.path = path
        self.jobs = jobs
        self.require_user_presence = require_user_presence
        self.pool: parallel.Pool | None = None
        self.hint = 0  # the records to check, as the head's Ledger-Seq says (unverified)

    def start_early(self, v: commit.Verifier, head: str, since: state.VerifiedState | None) -> None:
        if self.jobs <= 1:
            return
        self.hint = _hinted_count(v, head, since)
        if self.hint >= parallel.MIN_RECORDS:
            self._start(self.hint)

    def pool_for(self, count: int) -> parallel.Pool | None:
        if self.jobs <= 1 or count < parallel.MIN_RECORDS:
            return None
        if self.pool is None:
            self._start(count)
        return self.pool

    def _start(self, count: int) -> None:
        workers = parallel.workers_for(count, self.jobs)  # (never more than the work)
        self.pool = parallel.Pool(self.path, workers, self.require_user_presence)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


_SEQ_TRAILER = re.compile(rb"\nLedger-Seq: ([0-9]{1,12})\n")


def _hinted_count(v: commit.Verifier, head: str, since: state.VerifiedState | None) -> int:
    """How many records the head's Ledger-Seq trailer says there are to check (0 if it
    cannot be read): a hint for starting workers early, never a fact of the result."""
    try:
        raw = v.reader.read(head, rules.OBJ_COMMIT, "commit")
    except objects.ObjectError:
        return 0
    found = _SEQ_TRAILER.search(raw)
    if found is None:
        return 0
    return int(found.group(1)) + 1 - (since.seq + 1 if since is not None else 0)


def _included(
    v: commit.Verifier,
    walk: _Walk,
    wanted: set[str],
    last: commit.Expected,
    since: state.VerifiedState | None,
) -> dict[str, int | None]:
    """Commits asked about: their seq on the chain; walks back past the saved head if needed."""
    included: dict[str, int | None] = {}
    for c in wanted:
        if c in walk.position and last.seq is not None:
            included[c] = last.seq - walk.position[c]
    missing = wanted - walk.position.keys()
    if missing and walk.found_base and since is not None:
        cur: str | None = since.head
        seq_here = since.seq
        while cur is not None and missing:
            if cur in missing:
                included[cur] = seq_here
                missing.discard(cur)
            try:
                parents = v.reader.parents_of(cur)
            except objects.ObjectError:
                break
            cur = parents[0] if parents else None
            seq_here -= 1
    for c in missing:
        included[c] = None
    return included


def _reversed(ids: list[str]) -> Iterator[str]:
    for i in range(len(ids) - 1, -1, -1):
        yield ids[i]


def _is_ancestor(v: commit.Verifier, ancestor: str, descendant: str, steps: int) -> bool:
    """Whether ``ancestor`` is ``steps`` first-parent steps behind ``descendant``."""
    cur = descendant
    try:
        for _ in range(steps):
            parents = v.reader.parents_of(cur)
            if not parents:
                return False
            cur = parents[0]
    except objects.ObjectError:
        return False
    return cur == ancestor
