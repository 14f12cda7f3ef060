"""Verifying with worker processes (``jobs`` > 1, ``ledger.verify.parallel``) gives exactly the
sequential result: every finding (rule, seq, commit, message, order), head, seq, records
checked, genesis, state, trust keys, included commits, signatures without presence.

The differential part re-runs every test of test_tamper.py, test_verify.py and
test_witness_record.py (imported below, so pytest collects them here too) with each
verification made three times: jobs=1, then jobs=2 with segments of 1 and of 3 commits (so
that even these short ledgers are split, at every commit: right after a key.added or
key.revoked record, right after a broken commit), and the results compared; the test goes
on with the sequential result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygit2
import pytest
from support.cli import run_cli
from support.tamper import Built, build, forge_append
from test_tamper import *  # noqa: F403  (collected again here, under the differential)
from test_verify import *  # noqa: F403
from test_witness_record import *  # noqa: F403
from test_witness_record import OTHER, head_entry

from ledger import errors
from ledger.fleet import state as fleet_state
from ledger.fleet import warm
from ledger.keys import SigningKey
from ledger.store import Ledger
from ledger.verify import VerifyResult, chain, commit, parallel, verify_ledger, warmup

# The hook's case: objects only in a directory added to this process's repository object,
# which workers (opening the repository by path) do not see; verify_chain with a
# repository object defaults to jobs=1 for that reason (see test_open_repository_...).
del test_verify_chain_with_quarantined_objects  # noqa: F821

_original = chain._verify_chain


def _same(sequential: VerifyResult, other: VerifyResult, label: str) -> None:
    assert other.findings == sequential.findings, label
    for name in (
        "head",
        "seq",
        "records_checked",
        "genesis",
        "state",
        "genesis_pinned",
        "ledger_id",
        "since_seq",
        "included",
        "keys",
        "without_presence",
        "witnessed",
    ):
        assert getattr(other, name) == getattr(sequential, name), f"{label}: {name}"
    assert other == sequential, label


@pytest.fixture(autouse=True)
def _every_verification_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each verification of the test: sequential, and with workers over tiny segments (all
    to workers; then one commit at a time here while the workers start, the rest to them)."""
    monkeypatch.setattr(parallel, "MIN_RECORDS", 1)

    def both(repo: Any, head: str, **kwargs: Any) -> VerifyResult:
        sequential = _original(repo, head, **{**kwargs, "jobs": 1})
        for size, here in ((1, 0), (3, 1)):
            monkeypatch.setattr(parallel, "SEGMENT", size)
            monkeypatch.setattr(parallel, "_HERE", here)
            other = _original(repo, head, **{**kwargs, "jobs": 2, "progress": None})
            _same(sequential, other, f"jobs=2, segments of {size}, {here} here at first")
        return sequential

    monkeypatch.setattr(chain, "_verify_chain", both)


@pytest.fixture(autouse=True)
def _own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state directory per test: the tests imported here run twice in one session, and a
    passed test's tmp_path is reused, so the verified head saved for a path by the first
    run would be a rollback to the second."""
    state = tmp_path_factory.mktemp("state")
    state.chmod(0o700)
    monkeypatch.setenv("LEDGER_STATE_DIR", str(state))


@pytest.fixture(autouse=True, scope="module")
def _no_server_left() -> Iterator[None]:
    """The forkserver and its socket's temporary directory, which multiprocessing keeps
    until the interpreter exits, are removed when this module is done (the session checks
    that its temporary directory is left empty)."""
    yield
    from multiprocessing import forkserver, util

    forkserver._forkserver._stop()  # type: ignore[attr-defined]
    for finalizer in list(util._finalizer_registry.values()):  # type: ignore[attr-defined]
        if getattr(finalizer, "_callback", None) is util._remove_temp_dir:  # type: ignore[attr-defined]
            finalizer()


# --- the parallel path itself ----------------------------------------------------------------


def _counting_parent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commits this process checks itself (workers are other processes)."""
    seen: list[str] = []
    alone = commit.Verifier.check_alone

    def counted(self: commit.Verifier, oid: str, *args: Any) -> Any:
        seen.append(oid)
        return alone(self, oid, *args)

    monkeypatch.setattr(commit.Verifier, "check_alone", counted)
    return seen


def _trust_story(tmp_path: Path) -> Any:
    """Key added (5), an untrusted key's key.added (not applied) and its use, witness records
    by an untrusted and a trusted key, bob revoked and then used, a commit with a broken prev
    digest, then good records again."""
    built = build(tmp_path)
    heads = {"heads": [head_entry(OTHER, 3, "c" * 40)]}
    eve = SigningKey.generate()
    pub = eve.public_key
    added = {"principal": "eve", "key": pub.openssh(), "fingerprint": pub.fingerprint}
    forge_append(built, eve, principal="eve", kind="key.added", data={**added, "comment": ""})
    forge_append(built, eve, principal="eve")
    forge_append(built, eve, principal="eve", kind="witness", data=heads)
    forge_append(built, built.bob, principal="bob", kind="witness", data=heads)
    forge_append(
        built,
        built.alice,
        kind="key.revoked",
        data={"fingerprint": built.bob.public_key.fingerprint, "reason": "left"},
    )
    forge_append(built, built.bob, principal="bob")

    def bad_prev(trailers: dict[str, str]) -> None:
        trailers["Ledger-Prev-Sha256"] = "0" * 64

    forge_append(built, built.alice, edit_trailers=bad_prev)
    for _ in range(3):
        forge_append(built, built.alice)
    return built


def test_every_split_of_a_chain_with_trust_changes_and_findings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _trust_story(tmp_path)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1))
    rules = {f.rule for f in sequential.findings}
    assert {"untrusted-key", "revoked-key", "prev-digest"} <= rules
    assert len(sequential.witnessed) == 1  # bob's, not eve's
    n = sequential.records_checked
    seen = _counting_parent(monkeypatch)
    monkeypatch.setattr(parallel, "_HERE", 0)  # all to the workers
    for size in range(1, n):
        monkeypatch.setattr(parallel, "SEGMENT", size)
        seen.clear()
        other = _original(built.path, built.head(), **_defaults(jobs=2))
        _same(sequential, other, f"segments of {size}")
        assert seen == [built.genesis]  # every other commit was checked by a worker


def test_a_seq_gap_is_checked_again_here_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build(tmp_path)
    forge_append(built, built.alice, seq=len(built.ids) + 5)  # a gap: seqs and positions part
    for _ in range(4):
        forge_append(built, built.alice)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1))
    assert [f.rule for f in sequential.findings] == ["seq"]
    seen = _counting_parent(monkeypatch)
    monkeypatch.setattr(parallel, "SEGMENT", 2)
    monkeypatch.setattr(parallel, "_HERE", 0)
    other = _original(built.path, built.head(), **_defaults(jobs=2))
    _same(sequential, other, "after a gap")
    assert len(seen) < sequential.records_checked  # only what the gap shifted


def test_resumed_verification_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build(tmp_path)
    first = verify_ledger(built.path, jobs=1)
    assert first.state is not None
    ledger = Ledger.open(built.path)
    for i in range(6):
        ledger.append("event", {"message": f"more {i}", "data": None}, key=built.bob)
    monkeypatch.setattr(parallel, "SEGMENT", 2)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1, since=first.state))
    other = _original(built.path, built.head(), **_defaults(jobs=2, since=first.state))
    assert sequential.ok and sequential.records_checked == 6
    _same(sequential, other, "resumed")


def test_progress_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = build(tmp_path, events_after_key=6)
    monkeypatch.setattr(parallel, "SEGMENT", 4)
    monkeypatch.setattr(parallel, "_HERE", 0)
    calls: list[tuple[int, int]] = []
    result = _original(
        built.path,
        built.head(),
        **_defaults(jobs=2, progress=lambda done, total: calls.append((done, total))),
    )
    n = result.records_checked
    assert calls[0] == (0, n) and calls[-1] == (n, n) and len(calls) > 2
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


@pytest.mark.parametrize("here", [50, 0])  # 0: wait for the workers, which never come
def test_workers_that_cannot_start_leave_it_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, here: int
) -> None:
    built = _trust_story(tmp_path)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1))

    def refuse(method: str) -> Any:
        raise ValueError(f"no {method} here")

    monkeypatch.setattr(warmup.multiprocessing, "get_context", refuse)
    monkeypatch.setattr(parallel, "SEGMENT", 2)
    monkeypatch.setattr(parallel, "_HERE", here)
    _same(sequential, _original(built.path, built.head(), **_defaults(jobs=2)), "no workers")


def test_no_more_workers_start_than_there_are_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's start submits one task per worker, which starts a process each: with a
    --jobs larger than the work, only as many as there are segments are started."""
    assert parallel.workers_for(2000, warmup.MAX_JOBS) == 2000 // 50  # (segments of 50)
    assert parallel.workers_for(10**6, 4) == 4
    built = build(tmp_path, events_after_key=6)
    started: list[tuple[int, int]] = []  # (processes at most, processes started)
    close = parallel.Pool.close

    def counted(pool: parallel.Pool) -> None:
        executor: Any = pool.executor()
        assert executor is not None
        started.append((executor._max_workers, len(executor._processes)))
        close(pool)

    monkeypatch.setattr(parallel.Pool, "close", counted)
    monkeypatch.setattr(parallel, "SEGMENT", 4)
    monkeypatch.setattr(parallel, "_HERE", 0)
    result = _original(built.path, built.head(), **_defaults(jobs=12))
    assert result.ok
    segments = -(-(result.records_checked - 1) // 4)  # (the genesis is checked here)
    assert segments < 12 and len(started) == 1, started
    assert started[0][0] <= segments and started[0][1] <= segments, (started, segments)


def test_open_repository_defaults_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build(tmp_path)
    asked: list[int] = []
    monkeypatch.setattr(chain, "_verify_chain", lambda *a, **k: asked.append(k["jobs"]))
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 7)
    chain.verify_chain(built.path, built.head())
    chain.verify_chain(pygit2.Repository(str(built.path)), built.head())
    chain.verify_chain(pygit2.Repository(str(built.path)), built.head(), jobs=3)
    verify_ledger(built.path)
    verify_ledger(pygit2.Repository(str(built.path)))
    assert asked == [7, 1, 3, 7, 1]
    with pytest.raises(errors.InputError):
        verify_ledger(built.path, jobs=0)


#: A child process's start: every commit but the first goes to the verifier's workers, and
#: those it checks itself are listed in ``here``; what it does then follows, indented.
_ALL_TO_WORKERS = """
import sys
from pathlib import Path
from ledger import replicate
from ledger.verify import commit, parallel, verify_ledger
here = []
def counted(self, oid, *args, **kwargs):  # (in this process only: the workers' is theirs)
    here.append(oid)
    return alone(self, oid, *args, **kwargs)
if __name__ == "__main__":
    parallel.MIN_RECORDS = 1; parallel.SEGMENT = 2; parallel._HERE = 0  # all to the workers
    alone, commit.Verifier.check_alone = commit.Verifier.check_alone, counted
"""

_DEEP_TMPDIR_CHILD = (
    _ALL_TO_WORKERS
    + """    result = verify_ledger(Path(sys.argv[1]), jobs=2)
    print(result.ok, result.records_checked, len(here))
"""
)


def test_workers_start_under_a_tmpdir_too_deep_for_their_socket(tmp_path: Path) -> None:
    """The forkserver's socket goes in a directory made under TMPDIR; a path over a Unix
    socket's limit would keep the workers from starting (everything checked here)."""
    built = build(tmp_path, events_after_key=6)
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    script = tmp_path / "child.py"
    script.write_text(_DEEP_TMPDIR_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(built.path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(deep)},
    )
    assert proc.returncode == 0, proc.stderr
    ok, checked, here = proc.stdout.split()
    assert ok == "True" and int(checked) == len(built.ids)
    assert here == "1"  # the genesis; every other commit went to a worker
    assert list(deep.iterdir()) == []


_CLONE_CHILD = (
    _ALL_TO_WORKERS
    + """    done = replicate.clone(sys.argv[1], Path(sys.argv[2]), trust_genesis=sys.argv[3])
    print(done.head, len(here))
"""
)


def test_a_clone_is_verified_by_workers(tmp_path: Path) -> None:
    """'ledger clone' verifies the fetched chain with the verifier's workers (the new
    repository holds every object, so they can open it by its path)."""
    built = build(tmp_path, events_after_key=6)
    script = tmp_path / "child.py"
    script.write_text(_CLONE_CHILD)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    proc = subprocess.run(
        [sys.executable, str(script), str(built.path), str(tmp_path / "copy"), built.genesis],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LEDGER_STATE_DIR": str(state)},
    )
    assert proc.returncode == 0, proc.stderr
    head, here = proc.stdout.split()
    assert head == built.head()
    assert here == "1"  # the genesis; every other commit went to a worker


# --- a plan from the seq index ----------------------------------------------------------------


def _walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The heads this process walks back from (step 2 of FORMAT.md §10)."""
    heads: list[str] = []
    walk_back = chain._walk_back

    def counted(v: commit.Verifier, head: str, *args: Any, **kwargs: Any) -> Any:
        heads.append(head)
        return walk_back(v, head, *args, **kwargs)

    monkeypatch.setattr(chain, "_walk_back", counted)
    return heads


def test_a_whole_chain_for_workers_is_taken_from_the_seq_index_not_walked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build(tmp_path, events_after_key=8)
    asked = _defaults(commits=(built.ids[3], built.ids[-2], "f" * 40))
    sequential = _original(built.path, built.head(), **{**asked, "jobs": 1})
    assert sequential.ok and sequential.included[built.ids[3]] == 3
    walks = _walks(monkeypatch)
    monkeypatch.setattr(parallel, "SEGMENT", 3)
    _same(sequential, _original(built.path, built.head(), **{**asked, "jobs": 2}), "planned")
    assert walks == []  # the workers had the chain from the index at once


def _lie(built: Built, how: str) -> list[str]:
    """The seq index's ids, made to lie ``how``."""
    ids = list(built.ids)
    if how == "swapped":
        ids[3], ids[4] = ids[4], ids[3]
    elif how == "a tree":
        ids[6] = str(built.repo[ids[6]].tree_id)
    elif how == "missing":
        ids[2] = "0" * 40
    elif how == "no root":
        ids[0] = ids[1]
    elif how == "another chain":  # the same head after another ledger's chain, held here too
        other = build(built.path.parent, "other", events_after_key=8)
        fetch = ["git", "-C", str(built.path), "fetch", "-q", str(other.path), "main:other"]
        subprocess.run(fetch, check=True)
        ids = other.ids[:-1] + ids[-1:]
    return ids


def _index(built: Built, ids: list[str]) -> None:
    index = built.path / "ledger-state" / "seq-index"
    index.write_bytes(b"".join(bytes.fromhex(oid) for oid in ids))


@pytest.mark.parametrize("how", ["swapped", "a tree", "missing", "no root", "another chain"])
def test_a_seq_index_that_lies_gives_what_walking_back_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    built = build(tmp_path, events_after_key=8)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1))
    assert sequential.ok
    _index(built, _lie(built, how))
    walks = _walks(monkeypatch)
    monkeypatch.setattr(parallel, "SEGMENT", 3)
    _same(sequential, _original(built.path, built.head(), **_defaults(jobs=2)), how)
    assert walks == [built.head()]  # the plan failed (or was refused): walked back


def test_a_planned_chain_with_findings_is_verified_again_by_walking_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = _trust_story(tmp_path)
    sequential = _original(built.path, built.head(), **_defaults(jobs=1))
    assert not sequential.ok
    chain_ids = subprocess.run(
        ["git", "-C", str(built.path), "rev-list", "--first-parent", "--reverse", "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    _index(built, chain_ids)  # true, the forged records too
    walks = _walks(monkeypatch)
    monkeypatch.setattr(parallel, "SEGMENT", 3)
    _same(sequential, _original(built.path, built.head(), **_defaults(jobs=2)), "findings")
    assert walks == [built.head()]


_SMALL_SEGMENTS_CLI = (
    "import sys; from ledger.verify import parallel; "
    "parallel.MIN_RECORDS = 1; parallel.SEGMENT = 2; parallel._HERE = 1; "
    "from ledger import cli; cli.main(sys.argv[1:])"
)


def _cli(*args: str | Path) -> tuple[int, dict[str, Any]]:
    """`ledger ARGS` in a child process whose verifier splits any chain in 2-commit segments."""
    proc = subprocess.run(
        [sys.executable, "-c", _SMALL_SEGMENTS_CLI, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    doc = json.loads(proc.stdout)
    doc.pop("pinned_now"), doc.pop("pin_source"), doc.pop("state_saved")
    return proc.returncode, doc


def test_ledger_verify_jobs(tmp_path: Path) -> None:
    built = _trust_story(tmp_path)
    one = _cli("verify", "-L", built.path, "--json", "--jobs", "1", "--no-progress")
    two = _cli("verify", "-L", built.path, "--json", "--jobs", "2", "--no-progress")
    assert one[0] == two[0] == 7
    assert one[1] == two[1] and len(one[1]["findings"]) >= 3
    clean = build(tmp_path, "clean", events_after_key=5)
    pin = ("--trust-genesis", clean.genesis)
    one = _cli("verify", "-L", clean.path, *pin, "--json", "--jobs", "1")
    two = _cli("verify", "-L", clean.path, *pin, "--json", "--jobs", "2")
    assert one == two and one[0] == 0 and one[1]["ok"]
    for jobs in ("0", str(warmup.MAX_JOBS + 1), "99999999999999999999"):
        res = run_cli("verify", "-L", clean.path, "--jobs", jobs)
        assert res.code == 2 and "--jobs" in res.err, res.output
    with pytest.raises(errors.InputError):
        verify_ledger(clean.path, jobs=warmup.MAX_JOBS + 1)


def test_fleet_jobs_are_bounded_as_verify_jobs(tmp_path: Path) -> None:
    copy = tmp_path / "copy.git"
    subprocess.run(["git", "init", "-q", "--bare", str(copy)], check=True)
    subprocess.run(["git", "--git-dir", str(copy), "config", "ledger.fleet", "true"], check=True)
    verify = ("fleet", "verify", "--fleet", copy, "--no-fetch")
    report = ("fleet", "report", "--since", "2026-01-01", "--fleet", copy, "-o", tmp_path / "r")
    for command in (verify, report):
        for jobs in ("0", "300", "99999999999999999999"):
            res = run_cli(*command, "--jobs", jobs)
            assert res.code == 2 and "--jobs" in res.err and "256" in res.err, res.output
        res = run_cli(*command, "--jobs", str(warmup.MAX_JOBS))
        assert res.code == 0, res.output
    assert warmup.MAX_JOBS == 256  # (as README and the options' help say)


def _defaults(**given: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "trust_genesis": None,
        "since": None,
        "progress": None,
        "commits": (),
        "check_repository": True,
        "remembered": None,
        "require_user_presence": False,
    }
    return {**base, **given}


# --- the fleet's workers, started early -------------------------------------------------------

_FLEET_EARLY_CHILD = """
import sys
from concurrent import futures
from multiprocessing import forkserver
from pathlib import Path
from ledger.fleet import warm
from ledger.verify import warmup
if __name__ == "__main__":
    warm.start_early(Path(sys.argv[1]), int(sys.argv[2]))
    started = forkserver._forkserver._forkserver_pid is not None
    preloaded = None
    if started:  # a worker of that server: has it the fleet's verifier without importing it?
        context = warmup.forkserver_context(warm.PRELOAD)
        with futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            asked = "{'ledger.fleet.schedule', 'nacl.bindings'} <= set(__import__('sys').modules)"
            preloaded = pool.submit(eval, asked).result()
    print(started, preloaded)
"""


def test_the_fleet_early_start_is_decided_before_the_verifier_is_imported() -> None:
    """``ledger fleet verify`` decides and starts its workers' server first thing, so that the
    server's imports overlap the command's own: deciding needs neither git, crypto nor the
    verifier, and the auditor's state directory it looks in is the one the fleet's state
    reads and writes."""
    code = (
        "import sys\n"
        "from ledger.fleet import warm\n"
        "heavy = ('pygit2', 'cryptography', 'nacl', 'ledger.verify.chain', 'ledger.fleet.state')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    copy = Path("/some/copy.git")
    assert warm.state_dir(copy) == fleet_state.state_dir(copy)


_FLEET_VERIFY_ORDER_CHILD = """
import sys
from ledger.verify import warmup
seen = []
warmup.start_server = lambda preload: seen.append("ledger.verify.chain" in sys.modules)
import ledger.cli
try:
    ledger.cli.main(["fleet", "verify", "--fleet", sys.argv[1], "--no-fetch", "--jobs", "2"])
except SystemExit:
    pass
print(seen)
"""


def test_fleet_verify_starts_its_workers_before_it_imports_the_verifier(tmp_path: Path) -> None:
    """The command asks for its workers' server before anything imports the verifier (here
    the path then turns out not to be a fleet copy: the server was asked for all the same)."""
    copy = tmp_path / "copy.git"
    (copy / "objects" / "pack").mkdir(parents=True)
    with open(copy / "objects" / "pack" / "pack-1.pack", "wb") as fh:
        fh.truncate(warm.IN_PROCESS_BELOW * warm.PACK_BYTES)
    script = tmp_path / "child.py"
    script.write_text(_FLEET_VERIFY_ORDER_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(copy)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "[False]", proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("pack_bytes", "jobs", "verified_before", "expected"),
    [
        (warm.IN_PROCESS_BELOW * warm.PACK_BYTES, 2, False, "True True"),
        (warm.IN_PROCESS_BELOW * warm.PACK_BYTES - 1, 2, False, "False None"),
        (warm.IN_PROCESS_BELOW * warm.PACK_BYTES, 1, False, "False None"),
        (None, 2, False, "False None"),
        (warm.IN_PROCESS_BELOW * warm.PACK_BYTES, 2, True, "False None"),
    ],
)
def test_fleet_workers_start_early_for_a_first_verification_of_a_large_copy(
    tmp_path: Path, pack_bytes: int | None, jobs: int, verified_before: bool, expected: str
) -> None:
    """``ledger fleet verify`` starts its workers' server before fetching and planning when
    the copy's packs look large enough (a hint: sparse files here) and this auditor has
    verified none of its ledgers before; that server has imported the fleet's verifier, so
    a worker does not import it again."""
    copy = tmp_path / "copy.git"
    if pack_bytes is not None:
        (copy / "objects" / "pack").mkdir(parents=True)
        with open(copy / "objects" / "pack" / "pack-1.pack", "wb") as fh:
            fh.truncate(pack_bytes)
    if verified_before:  # (this test's state directory: LEDGER_STATE_DIR, which the child inherits)
        ledgers = fleet_state.state_dir(copy) / warm.LEDGERS_DIR
        ledgers.mkdir(parents=True)
        (ledgers / f"{'a' * 32}.json").write_text("{}")
    script = tmp_path / "child.py"
    script.write_text(_FLEET_EARLY_CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(copy), str(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected.split()
