"""No room on this machine (a full disk, a quota, a file size limit) is a storage error,
exit 6, with what to do about it, and leaves nothing half-made:
- a fetch is never blamed on the remote (exit 8, "check the URL and the network"), and
  nothing half-fetched is kept (over a real git daemon);
- a file named with -o is written whole or not at all;
- 'ledger init' and 'ledger remote init' remove what they made.

The full disk is a real one as far as the process can tell: a file size limit
(RLIMIT_FSIZE) on the command's process, which makes every write past it fail as it would
on a full disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gitservers
import pytest
from gitservers import GitDaemon
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger

from ledger import errors
from ledger.store import Ledger

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon

#: Bytes a file may grow to: more than the config and state files these commands write
#: before fetching, less than any pack of a few records.
LIMIT = 2000


def limited(*args: str | Path, limit: int = LIMIT) -> CliResult:
    """`python -m ledger ARGS` with files limited to ``limit`` bytes (stdout and stderr
    are pipes, which the limit does not touch)."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'ledger', *sys.argv[1:]])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def no_room(r: CliResult) -> None:
    """Exit 6, one paragraph, naming the cause and what to do."""
    assert r.code == 6, r.output
    assert "Traceback" not in r.output and r.err.count("\n") == 1, r.err
    assert r.err.startswith("ledger: storage error:") and "File too large" in r.err, r.err
    assert "Free disk space" in r.err and "network" not in r.err, r.err


def shared(server: GitDaemon, name: str, *ledgers: TestLedger) -> str:
    r = run_cli("remote", "init", server.base / f"{name}.git", "--shared")
    assert r.code == 0, r.output
    url = server.url(f"{name}.git")
    for t in ledgers:
        r = run_cli("remote", "add", "fleet", url, "--shared", "--ledger", t.path)
        assert r.code == 0, r.output
        r = run_cli("push", "--ledger", t.path)
        assert r.code == 0, r.output
    return url


def pushed_to_origin(server: GitDaemon, name: str, t: TestLedger) -> str:
    """A protected one-ledger remote on the server, added to ``t`` as origin and pushed."""
    r = run_cli("remote", "init", server.base / f"{name}.git")
    assert r.code == 0, r.output
    url = server.url(f"{name}.git")
    r = run_cli("remote", "add", "origin", url, "--ledger", t.path)
    assert r.code == 0 and run_cli("push", "--ledger", t.path).code == 0
    return url


def lid(t: TestLedger) -> str:
    return t.ledger.ledger_id


def refs(copy: Path) -> str:
    return git("--git-dir", copy, "for-each-ref", "--format=%(refname) %(objectname)").stdout


def test_ledger_clone_without_room_keeps_nothing(git_daemon: GitDaemon, tmp_path: Path) -> None:
    t = make_ledger(tmp_path, "src", records=6)
    url = pushed_to_origin(git_daemon, f"clone-{tmp_path.name}", t)
    dest = tmp_path / "copy"
    genesis = t.ledger.genesis_id
    r = limited("clone", url, dest, "--trust-genesis", genesis)
    no_room(r)
    assert "Nothing was kept" in r.err and not dest.exists()
    r = run_cli("clone", url, dest, "--trust-genesis", genesis)
    assert r.code == 0, r.output


def test_fleet_clone_and_fetch_without_room(git_daemon: GitDaemon, tmp_path: Path) -> None:
    a, b = make_ledger(tmp_path, "a", records=4), make_ledger(tmp_path, "b", records=4)
    url = shared(git_daemon, f"fleet-{tmp_path.name}", a, b)
    copy = tmp_path / "audit.git"
    no_room(limited("fleet", "clone", url, copy))
    assert not copy.exists()

    r = run_cli("fleet", "clone", url, copy)
    assert r.code == 0, r.output
    before = refs(copy)
    a.append(6)
    assert run_cli("push", "--ledger", a.path).code == 0
    r = limited("fleet", "fetch", "--fleet", copy)
    no_room(r)
    assert "are as they were" in r.err and refs(copy) == before
    # fleet verify fetches first: the same paragraph, after verifying what the copy holds.
    r = limited("fleet", "verify", "--fleet", copy, "--json")
    assert r.code == 6 and "could not be fetched" in r.err and "File too large" in r.err, r.err
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 0 and refs(copy) != before, r.output


def test_fleet_witness_without_room_appends_nothing(git_daemon: GitDaemon, tmp_path: Path) -> None:
    other, me = make_ledger(tmp_path, "other", records=6), make_ledger(tmp_path, "me")
    shared(git_daemon, f"wit-{tmp_path.name}", other, me)
    head = me.head
    r = limited("fleet", "witness", "--ledger", me.path, "--key", me.key_path)
    no_room(r)
    assert "No witness record was appended" in r.err and me.head == head
    r = run_cli("fleet", "witness", "--ledger", me.path, "--key", me.key_path)
    assert r.code == 0, r.output


def test_ledger_fetch_without_room_is_a_storage_error(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path, "mine", records=1)
    url = pushed_to_origin(git_daemon, f"fetch-{tmp_path.name}", t)
    # The remote moves on (another copy of the same ledger appends and pushes).
    other = tmp_path / "other"
    r = run_cli("clone", url, other, "--trust-genesis", t.ledger.genesis_id)
    assert r.code == 0, r.output
    for i in range(6):
        Ledger.open(other).append("event", {"message": f"e{i}", "data": None}, key=t.key)
    assert run_cli("push", "--ledger", other).code == 0  # (to its origin, the clone's URL)
    head = t.head
    r = limited("fetch", "--ledger", t.path)
    no_room(r)
    assert "were not touched" in r.err and t.head == head
    # verify --remotes checks the remote the same way: the same storage error.
    no_room(limited("verify", "--ledger", t.path, "--remotes"))
    r = run_cli("fetch", "--ledger", t.path)
    assert r.code == 0 and "6 record(s) ahead of us" in r.out, r.output


def test_what_the_server_says_of_its_own_disk_stays_the_servers() -> None:
    """Only this machine's failure to store is a storage error here: a server's own full
    disk, in the words it sends back, is still the remote's problem."""
    assert errors.no_room("cannot extend packfile '/x/objects/pack/p': No space left on device")
    assert errors.no_room("failed to write out file: Disk quota exceeded")
    assert not errors.no_room("remote: fatal: No space left on device")
    assert not errors.no_room("remote error: unpack failed: File too large")
    assert not errors.no_room("failed to connect to 127.0.0.1: Connection refused")


def test_an_output_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """`-o FILE` without room: exit 6, FILE as it was (absent, or its old content), no
    temporary file beside it; with room, FILE whole. A device is written as it is."""
    t = make_ledger(tmp_path, "out", records=2)
    report = tmp_path / "report.md"
    report.write_text("the previous report\n")
    r = limited("report", "--ledger", t.path, "--since", "2000-01-01", "-o", report, limit=100)
    assert r.code == 6 and "cannot write the report to" in r.err, r.output
    assert "File too large" in r.err and "Free disk space" in r.err and "Traceback" not in r.err
    assert report.read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    r = run_cli("report", "--ledger", t.path, "--since", "2000-01-01", "-o", report)
    assert r.code == 0 and len(report.read_text()) > 100, r.output
    assert f"Report written to {report}\n" == r.err, r.err
    signers = tmp_path / "signers"
    r = limited("keys", "allowed-signers", "--ledger", t.path, "-o", signers, limit=10)
    assert r.code == 6 and "cannot write the allowed-signers file" in r.err, r.output
    assert not signers.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    link = tmp_path / "link.md"
    link.symlink_to(report)
    r = run_cli("report", "--ledger", t.path, "--since", "2000-01-01", "-o", link)
    assert r.code == 0 and link.is_symlink() and link.read_text() == report.read_text()
    r = run_cli("keys", "allowed-signers", "--ledger", t.path, "-o", "/dev/stdout")
    assert r.code == 0 and "operator@example.com" in r.out, r.output
    r = run_cli("keys", "allowed-signers", "--ledger", t.path, "-o", tmp_path / "no" / "dir")
    assert r.code == 3 and "cannot write the allowed-signers file" in r.err, r.output


def test_a_fleet_report_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """`fleet report -o FILE` as `report -o`: no room is exit 6 with FILE as it was; a
    destination that cannot be written (no such directory) is the user's input: exit 3."""
    copy = tmp_path / "copy.git"
    git("init", "-q", "--bare", copy)
    git("--git-dir", copy, "config", "ledger.fleet", "true")
    fleet_report = ("fleet", "report", "--since", "2026-01-01", "--fleet", copy, "-o")
    report = tmp_path / "fleet.md"
    report.write_text("the previous report\n")
    r = limited(*fleet_report, report, limit=100)
    assert r.code == 6 and "cannot write the report to" in r.err, r.output
    assert report.read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    r = run_cli(*fleet_report, tmp_path / "no" / "fleet.md")
    assert r.code == 3 and "cannot write the report to" in r.err, r.output
    assert "directory exists and is writable" in r.err
    r = run_cli(*fleet_report, report)
    assert r.code == 0 and report.read_text() != "the previous report\n", r.output


def test_init_without_room_leaves_nothing_half_made(tmp_path: Path) -> None:
    """'ledger init' and 'ledger remote init' that fail part-way (no room) remove what they
    made, so that trying again works: an absent path stays absent, an empty directory stays
    an empty directory."""
    key = make_ledger(tmp_path, "keyholder", records=0).key_path
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (tmp_path / "new", empty):
        r = limited("init", path, "--key", key, "--name", "n", limit=200)
        assert r.code == 6 and "could not create the ledger" in r.err, r.output
        assert list(empty.iterdir()) == [] if path == empty else not path.exists()
        r = run_cli("init", path, "--key", key, "--name", "n")
        assert r.code == 0, r.output
    for shared in ([], ["--shared"]):
        remote = tmp_path / f"remote{len(shared)}.git"
        r = limited("remote", "init", remote, *shared, limit=200)
        assert r.code == 6 and "nothing was left there" in r.err and not remote.exists(), r.err
        assert run_cli("remote", "init", remote, *shared).code == 0


def test_a_run_that_fills_the_disk_stops_with_its_evidence_and_resumes(tmp_path: Path) -> None:
    """A step whose output cannot be written: the run stops with a storage error (exit 6),
    the ledger still verifies, the step's write-ahead record is the evidence, and once there
    is room the run is resumed by running that step again."""
    t = make_ledger(tmp_path, "runner", records=0)
    book = tmp_path / "big.yaml"
    book.write_text(
        'name: big\nsteps:\n  - name: out\n    run: python3 -c "import os, base64; '
        'print(base64.b64encode(os.urandom(30000)).decode())"\n  - name: after\n'
        "    run: echo after\n"
    )
    r = limited("run", book, "--ledger", t.path, "--key", t.key_path, limit=3000)
    assert r.code == 6 and "could not append to the ledger" in r.err, r.err[-500:]
    assert "Traceback" not in r.err
    assert run_cli("verify", "--ledger", t.path).code == 0
    runs = run_cli("runs", "--ledger", t.path)
    assert runs.code == 0 and "unfinished" in runs.out, runs.output
    run_id = runs.out.split()[0]
    r = run_cli("resume", run_id, "--ledger", t.path, "--key", t.key_path)
    assert r.code == 12 and "out of disk space" in r.err, r.output
    r = run_cli("resume", run_id, "--rerun-unfinished", "--ledger", t.path, "--key", t.key_path)
    assert r.code == 0, r.err[-500:]
    runs = run_cli("runs", "--ledger", t.path)
    assert "succeeded" in runs.out and "unfinished" not in runs.out, runs.output


def test_a_fleet_state_that_cannot_be_saved_is_said_with_the_verdict(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """No room for the auditor's state loses no verdict: every ledger is verified and shown,
    the command says what it could not save and exits 6, and what was not saved is verified
    again next time."""
    fleet = [make_ledger(tmp_path, n, records=k) for n, k in (("a", 2), ("b", 3))]
    url = shared(git_daemon, f"unsaved-{tmp_path.name}", *fleet)
    copy = tmp_path / f"unsaved-{os.getpid()}.git"
    assert run_cli("fleet", "clone", url, copy).code == 0
    args = ["fleet", "verify", "--fleet", copy, "--no-fetch"]
    r = limited(*args, "--json", limit=1)
    assert r.code == 6 and "could not be saved" in r.err and "Traceback" not in r.err, r.err
    doc = json.loads(r.out)
    assert doc["summary"]["ok"] is True and doc["summary"]["records_checked"] == 7
    assert {led["status"] for led in doc["ledgers"]} == {"new"}
    assert doc["state_saved"] is False
    assert any(f"{lid(fleet[0])}.json" in e and "File too large" in e for e in doc["state_errors"])
    # Text: the ledgers' lines, then the one paragraph.
    r = limited(*args, limit=1)
    assert r.code == 6 and "Fleet verified: 2 ledger(s)" in r.out, r.err
    assert r.err.count("ledger: storage error:") == 1 and "File too large" in r.err
    # Nothing was saved: the next verification reads every record again, then saves.
    r = run_cli(*args, "--json")
    doc = json.loads(r.out)
    assert r.code == 0 and doc["state_saved"] is True and doc["state_errors"] == []
    checked = {led["ledger_id"]: led["records_checked"] for led in doc["ledgers"]}
    assert checked == {lid(t): t.seq + 1 for t in fleet}
    r = run_cli(*args, "--json")
    assert r.code == 0 and json.loads(r.out)["summary"]["records_checked"] == 0
