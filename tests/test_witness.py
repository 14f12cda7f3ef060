"""Runner-side witnessing: `ledger fleet witness` and the witness at the start of `ledger run`
append a signed record of the other ledgers' heads that a shared remote holds. Over a real
server (git daemon serving a protected shared repository made by `ledger remote init
--shared`, three ledgers pushing to it); stock git judges what the record says."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import gitservers
import pytest
from gitservers import GitDaemon, SshServer
from support.cli import REPO_ROOT, CliResult, run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger, unsigned_commit_on

from ledger import errors, replicate
from ledger.fleet import WitnessHead, append_heads
from ledger.format import records
from ledger.run import runbook_lock
from ledger.verify import home, local

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
ssh_server = gitservers.ssh_server

HELLO = """\
name: hello
steps:
  - name: greet
    run: echo hello
"""


# --------------------------------------------------------------------------- helpers


class Fleet:
    """A protected shared repository served by git daemon, and three ledgers pushed there."""

    def __init__(self, server: GitDaemon, tmp_path: Path) -> None:
        self.path = server.base / f"fleet-{tmp_path.name}.git"
        r = run_cli("remote", "init", self.path, "--shared")
        assert r.code == 0, r.output
        self.url = server.url(self.path.name)
        self.a, self.b, self.c = (
            make_ledger(tmp_path, n, records=k) for n, k in (("a", 2), ("b", 3), ("c", 4))
        )
        for t in (self.a, self.b, self.c):
            replicate.add_remote(t.path, "fleet", self.url, shared=True)
            replicate.push(t.path).check(None)

    def ls_remote(self) -> dict[str, str]:
        """Stock git's view of the server: ledger id -> head commit."""
        out = git("ls-remote", self.url, "refs/ledgers/*").stdout
        heads = {}
        for line in out.splitlines():
            sha, ref = line.split("\t")
            heads[ref.split("/")[2]] = sha
        return heads


@pytest.fixture()
def fleet(git_daemon: GitDaemon, tmp_path: Path) -> Fleet:
    return Fleet(git_daemon, tmp_path)


def lid(t: TestLedger) -> str:
    return t.ledger.ledger_id


def witness(t: TestLedger, *args: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cli("fleet", "witness", "--ledger", t.path, "--key", t.key_path, *args, env=env)


def raw_commit(gitdir: Path, sha: str) -> bytes:
    """The commit's content as stock git prints it."""
    return subprocess.run(
        ["git", "--git-dir", str(gitdir), "cat-file", "commit", sha],
        capture_output=True,
        check=True,
    ).stdout


def expected_head(server: Path, ledger_id: str, sha: str) -> dict[str, Any]:
    """What a witness must say of ledger_id's head sha, judged by stock git on the server."""
    raw = raw_commit(server, sha)
    seq = next(
        int(line.split(": ", 1)[1])
        for line in raw.decode().splitlines()
        if line.startswith("Ledger-Seq: ")
    )
    digest = hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()
    return {"ledger": ledger_id, "seq": seq, "commit": sha, "sha256": digest}


def records_of(t: TestLedger) -> list[tuple[str, str, dict[str, Any]]]:
    """(commit, kind, record) of every commit of main, oldest first, read by stock git."""
    out = git("--git-dir", t.path, "log", "--reverse", "--format=%H", "main").stdout.split()
    found = []
    for sha in out:
        message = git("--git-dir", t.path, "log", "-1", "--format=%B", sha).stdout
        trailers = records.parse_trailers(message)
        blob = git("--git-dir", t.path, "show", f"{sha}:{trailers['Ledger-Record']}").stdout
        found.append((sha, trailers["Ledger-Kind"], json.loads(blob)))
    return found


def witness_records(t: TestLedger) -> list[tuple[str, dict[str, Any]]]:
    return [(sha, rec) for sha, kind, rec in records_of(t) if kind == "witness"]


def write_book(tmp_path: Path) -> Path:
    book = tmp_path / "hello.yaml"
    book.write_text(HELLO)
    return book


def run_book(
    t: TestLedger, book: Path, *extra: str, env: dict[str, str] | None = None
) -> CliResult:
    return run_cli(
        "run", book, "--ledger", t.path, "--key", t.key_path, "--no-push", *extra, env=env
    )


# --------------------------------------------------------------------------- fleet witness


def test_fleet_witness_records_the_heads_the_server_holds(fleet: Fleet, tmp_path: Path) -> None:
    a, b, c = fleet.a, fleet.b, fleet.c
    b.append(2)
    replicate.push(b.path).check(None)
    r = witness(a)
    assert r.code == 0, r.output
    assert "Witnessed 2 other ledger(s), 2 head(s), on fleet" in r.out
    served = fleet.ls_remote()
    assert set(served) == {lid(a), lid(b), lid(c)}
    ((sha, rec),) = witness_records(a)
    assert rec["run"] is None and rec["files"] == {}
    assert rec["data"]["heads"] == [
        expected_head(fleet.path, i, served[i]) for i in sorted((lid(b), lid(c)))
    ]
    assert lid(a) not in {h["ledger"] for h in rec["data"]["heads"]}  # never its own
    assert f"seq {rec['seq']}" in r.out and sha in r.out
    for h in rec["data"]["heads"]:
        assert f"  {h['ledger']}  seq {h['seq']}  {h['commit']}" in r.out

    # The new kind verifies; stock git accepts the signed commit.
    v = run_cli("verify", "--ledger", a.path)
    assert v.code == 0, v.output
    signers = tmp_path / "signers"
    assert run_cli("keys", "allowed-signers", "-o", signers, "--ledger", a.path).code == 0
    ok = git(
        "--git-dir",
        a.path,
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "verify-commit",
        sha,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert git("--git-dir", a.path, "fsck", "--strict", check=False).returncode == 0

    # Foreign objects never enter the ledger; they are in the runner's witness cache.
    for other in (b, c):
        assert git("--git-dir", a.path, "cat-file", "-e", other.head, check=False).returncode != 0
    cache = home.state_root() / "witness" / f"{lid(a)}.git"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert git("--git-dir", cache, "config", "--bool", "ledger.fleet").stdout.strip() == "true"
    assert git("--git-dir", cache, "config", "fleet.remote.fleet.url").stdout.strip() == fleet.url
    assert (
        git("--git-dir", cache, "rev-parse", f"refs/fleet/fleet/{lid(b)}/main").stdout.strip()
        == b.head
    )


def test_fleet_witness_json_and_a_second_remote(
    fleet: Fleet, git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """One entry per distinct (ledger, commit): a ledger two remotes hold at different heads
    is listed twice, at the same head once."""
    a, b, c = fleet.a, fleet.b, fleet.c
    second = git_daemon.base / f"fleet2-{tmp_path.name}.git"
    assert run_cli("remote", "init", second, "--shared").code == 0
    url2 = git_daemon.url(second.name)
    for t in (a, b, c):
        replicate.add_remote(t.path, "fleet2", url2, shared=True)
        replicate.push(t.path).check(None)
    old_b = b.head
    b.append()
    replicate.push(b.path, ["fleet"]).check(None)  # fleet2 still holds b's older head
    r = witness(a, "--json")
    assert r.code == 0, r.output
    doc = json.loads(r.out)
    assert doc["remotes"] == ["fleet", "fleet2"] and doc["ledgers"] == 2 and doc["warnings"] == []
    want = sorted(
        [
            expected_head(fleet.path, lid(b), b.head),
            expected_head(second, lid(b), old_b),
            expected_head(fleet.path, lid(c), c.head),
        ],
        key=lambda h: (h["ledger"], h["commit"]),
    )
    assert doc["heads"] == want
    ((sha, rec),) = witness_records(a)
    assert rec["data"]["heads"] == want
    assert doc["records"] == [{"seq": rec["seq"], "commit": sha}]
    only = witness(a, "--remote", "fleet2", "--json")
    assert only.code == 0, only.output
    from_second = [expected_head(second, lid(b), old_b), expected_head(second, lid(c), c.head)]
    assert json.loads(only.out)["heads"] == sorted(
        from_second, key=lambda h: (h["ledger"], h["commit"])
    )


def test_what_a_witness_skips_and_what_the_server_no_longer_holds(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A ref whose head has no Ledger-Seq is skipped with a warning (a witness says what it
    saw and does not verify others); a ledger gone from the server is no longer witnessed."""
    a, b = fleet.a, fleet.b
    work = tmp_path / "work"
    git("clone", "-q", b.path, work)
    stray = unsigned_commit_on(work)
    bogus = "f" * 32
    # Written on the server's disk directly (no hook runs): what a broken server could hold.
    git("--git-dir", fleet.path, "fetch", "-q", work, f"+{stray}:refs/ledgers/{bogus}/main")
    git("--git-dir", fleet.path, "update-ref", "-d", f"refs/ledgers/{lid(fleet.c)}/main")
    r = witness(a, "--json")
    assert r.code == 0, r.output
    assert f"ledger {bogus} on remote fleet is not witnessed" in r.err
    assert "no Ledger-Seq trailer" in r.err
    assert [h["ledger"] for h in json.loads(r.out)["heads"]] == [lid(b)]
    assert run_cli("verify", "--ledger", a.path).code == 0
    # A cache others could write is refused like the rest of the state directory.
    cache = home.state_root() / "witness" / f"{lid(a)}.git"
    cache.chmod(0o777)
    try:
        bad = witness(a)
        assert bad.code == 6 and str(cache) in bad.err, bad.output
        assert "Traceback" not in bad.output
    finally:
        cache.chmod(0o700)


def test_a_damaged_cache_fails_the_witness_and_deleting_it_heals(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A head the cache fetched but cannot read is the cache's damage, not the server's: the
    witness fails (exit 6), names the cache and says to delete it, and appends nothing, so no
    record leaves a head out for this machine's fault; the next witness fetches again."""
    a = fleet.a
    assert witness(a).code == 0
    witnessed_before = len(witness_records(a))
    cache = home.state_root() / "witness" / f"{lid(a)}.git"
    for pack in (cache / "objects" / "pack").glob("*.pack"):
        pack.chmod(0o600)
        with pack.open("r+b") as fh:  # bit rot in the middle of every object's data
            size = fh.seek(0, os.SEEK_END)
            for at in range(200, size - 40, 97):
                fh.seek(at)
                fh.write(b"\xff")
    r = witness(a)
    assert r.code == 6 and "Traceback" not in r.output, r.output
    assert f"witness cache {cache} is damaged" in r.err and "delete it" in r.err, r.err
    assert "Nothing was appended" in r.err and len(witness_records(a)) == witnessed_before
    # At a run's start the same failure is one warning line, and the run goes on.
    run = run_book(a, write_book(tmp_path))
    assert run.code == 0, run.output
    assert "no witness record at the start of this run" in run.err and "is damaged" in run.err
    assert len(witness_records(a)) == witnessed_before
    shutil.rmtree(cache)
    r = witness(a, "--json")
    assert r.code == 0 and "damaged" not in r.err, r.output
    witnessed = {h["ledger"] for h in json.loads(r.out)["heads"]}
    assert witnessed == {lid(fleet.b), lid(fleet.c)}


def test_over_ssh_with_the_credentials_and_host_key_checks_of_push(
    ssh_server: SshServer, home: Path, tmp_path: Path
) -> None:
    known = ssh_server.write_known_hosts(home)
    env = {"LEDGER_SSH_KEY": str(ssh_server.client_key)}
    path = ssh_server.base / f"fleet-ssh-{tmp_path.name}.git"
    assert run_cli("remote", "init", path, "--shared").code == 0
    a, b = make_ledger(tmp_path, "a"), make_ledger(tmp_path, "b")
    for t in (a, b):
        replicate.add_remote(t.path, "fleet", ssh_server.url(path.name), shared=True)
        assert run_cli("push", "--ledger", t.path, env=env).code == 0
    r = witness(a, "--json", env=env)
    assert r.code == 0, r.output
    assert json.loads(r.out)["heads"] == [expected_head(path, lid(b), b.head)]
    # An unknown host key: refused as 'ledger push' refuses it, nothing appended.
    known.unlink()
    before = a.head
    r = witness(a, env=env)
    assert r.code == 8 and "host key" in r.err, r.output
    assert git("--git-dir", a.path, "rev-parse", "main").stdout.strip() == before
    run = run_book(a, write_book(tmp_path), env=env)
    assert run.code == 0, run.output
    warned = [line for line in run.err.splitlines() if "witness" in line]
    assert len(warned) == 1 and "host key" in warned[0], run.err
    assert [k for _s, k, _r in records_of(a)].count("witness") == 1


def test_fleet_witness_refuses_bad_input_with_a_clear_error(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.a
    before = a.head
    lone = make_ledger(tmp_path, "lone")
    r = witness(lone)
    assert r.code == 8 and "has no shared remote" in r.err, r.output
    replicate.add_remote(lone.path, "backup", str(tmp_path / "backup.git"))
    r = witness(lone, "--remote", "backup")
    assert r.code == 3 and "not a shared remote" in r.err, r.output
    r = witness(a, "--remote", "nope")
    assert r.code == 8 and "no remote named 'nope'" in r.err, r.output
    # A one-ledger remote added with --shared by mistake: no record that saw "no ledger".
    replicate.add_remote(a.path, "mislabeled", str(fleet.b.path), shared=True)
    r = witness(a, "--remote", "mislabeled")
    assert r.code == 8 and "mislabeled" in r.err and "is not a shared remote" in r.err, r.output
    assert "refs/heads/main" in r.err and "No witness record was appended" in r.err
    git("--git-dir", a.path, "remote", "remove", "mislabeled")
    # Unreachable: nothing is appended.
    port = gitservers.free_port()
    replicate.add_remote(a.path, "down", f"git://127.0.0.1:{port}/x.git", shared=True)
    r = witness(a, env={"LEDGER_REMOTE_CONNECT_TIMEOUT": "3"})
    assert r.code == 8, r.output
    assert "shared remote down" in r.err and "cannot be fetched" in r.err
    assert (
        a.ledger.head() is not None
        and git("--git-dir", a.path, "rev-parse", "main").stdout.strip() == before
    )
    # A shared remote someone else put in the config is never contacted.
    git("--git-dir", a.path, "remote", "remove", "down")
    git("--git-dir", a.path, "remote", "add", "sneaky", f"git://127.0.0.1:{port}/x.git")
    git("--git-dir", a.path, "config", "remote.sneaky.ledgerShared", "true")
    r = witness(a, "--remote", "sneaky")
    assert r.code == 8 and "not added by you" in r.err, r.output
    assert "Traceback" not in r.output


def test_the_writer_refuses_malformed_witness_data(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, "w", records=0)
    other = "0" * 32
    good = {"ledger": other, "seq": 1, "commit": "a" * 40, "sha256": "b" * 64}
    bad = [
        {"heads": [good, good]},
        {"heads": [{**good, "commit": "b" * 40}, good]},
        {"heads": [{**good, "seq": -1}]},
        {"heads": [{**good, "seq": True}]},
        {"heads": [{**good, "extra": 1}]},
        {"heads": [{**good, "ledger": lid(t)}]},
        {"heads": [good], "more": 1},
        {"heads": "x"},
    ]
    for data in bad:
        with pytest.raises(errors.InputError):
            t.ledger.append("witness", data, key=t.key)
    with pytest.raises(errors.InputError):
        t.ledger.append("witness", {"heads": []}, key=t.key, run="20261121T235959Z-0a1b2c3d")
    assert t.seq == 0
    t.ledger.append("witness", {"heads": [good]}, key=t.key)
    assert run_cli("verify", "--ledger", t.path).code == 0


def test_more_heads_than_one_record_holds_make_several_records(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, "many", records=0)
    heads = [WitnessHead(f"{i:032x}", "a" * 40, i, "b" * 64) for i in range(10_001)]
    done = append_heads(t.ledger, t.key, heads)
    assert [a.seq for a in done] == [1, 2]
    assert [len(a.record["data"]["heads"]) for a in done] == [10_000, 1]
    assert done[1].record["data"]["heads"] == [heads[-1].as_data()]
    assert run_cli("verify", "--ledger", t.path).code == 0


# --------------------------------------------------------------------------- at run start


def test_a_run_witnesses_before_run_started_unless_turned_off(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.a
    book = write_book(tmp_path)
    r = run_book(a, book)
    assert r.code == 0, r.output
    assert "Witnessed 2 other ledger(s) on fleet" in r.err
    kinds = [kind for _sha, kind, _rec in records_of(a)]
    start = kinds.index("run.started")
    assert kinds[start - 1] == "witness" and kinds.count("witness") == 1
    ((_sha, rec),) = witness_records(a)
    served = fleet.ls_remote()
    assert rec["data"]["heads"] == [
        expected_head(fleet.path, i, served[i]) for i in sorted((lid(fleet.b), lid(fleet.c)))
    ]
    v = run_cli("verify", "--ledger", a.path)
    assert v.code == 0, v.output
    # The run's records (the witness included) count as verified for the next run.
    saved = local.load_state(a.path)
    assert saved is not None and saved.head == a.head

    git("--git-dir", a.path, "config", "ledger.witness", "false")
    r = run_book(a, book)
    assert r.code == 0, r.output
    assert "Witnessed" not in r.err
    kinds = [kind for _sha, kind, _rec in records_of(a)]
    assert kinds.count("witness") == 1 and kinds.count("run.started") == 2


def test_a_run_refused_for_a_held_lock_leaves_no_witness_record(
    fleet: Fleet, tmp_path: Path
) -> None:
    a = fleet.a
    book = tmp_path / "locked.yaml"
    book.write_text(HELLO.replace("name: hello\n", "name: locked\nlock: restart-api\n"))
    head = a.head
    with runbook_lock(a.ledger, "restart-api", "20260101T000000Z-0000abcd"):
        r = run_book(a, book)
    assert r.code == 6, r.output
    assert "Witnessed" not in r.err
    assert a.head == head and witness_records(a) == []
    r = run_book(a, book)  # the lock released: the witness, then the run
    assert r.code == 0, r.output
    kinds = [kind for _sha, kind, _rec in records_of(a)]
    assert kinds.count("witness") == 1 and kinds.index("witness") == kinds.index("run.started") - 1


def test_a_run_with_an_unreachable_shared_remote_still_runs_and_records(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, "u")
    port = gitservers.free_port()
    replicate.add_remote(t.path, "fleet", f"git://127.0.0.1:{port}/fleet.git", shared=True)
    r = run_book(t, write_book(tmp_path), env={"LEDGER_REMOTE_CONNECT_TIMEOUT": "3"})
    assert r.code == 0, r.output
    warned = [line for line in r.err.splitlines() if "witness" in line]
    assert len(warned) == 1 and "no witness record at the start of this run" in warned[0], r.err
    assert "shared remote fleet" in warned[0]
    kinds = [kind for _sha, kind, _rec in records_of(t)]
    assert "witness" not in kinds and kinds[-1] == "run.finished"
    assert run_cli("verify", "--ledger", t.path).code == 0


def test_a_run_without_a_shared_remote_loads_no_network_code(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, "n")
    replicate.add_remote(t.path, "backup", str(tmp_path / "backup.git"))  # not shared
    book = write_book(tmp_path)
    code = (
        "import sys\n"
        "from ledger.cli import main\n"
        "try:\n"
        f"    main(['run', {str(book)!r}, '--ledger', {str(t.path)!r}, '--key', "
        f"{str(t.key_path)!r}, '--no-push'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('ledger.replicate.transport', "
        "'ledger.replicate.pushes', 'ledger.fleet.witness')))\n"
        "print('LOADED', loaded)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "LOADED []", proc.stdout
    assert "witness" not in [kind for _sha, kind, _rec in records_of(t)]
