"""The auditor's fleet copy: ``ledger fleet clone``, ``remote add``, ``fetch`` and ``status``
over real servers (git daemon, git http-backend, sshd) serving protected shared remotes made
by ``ledger remote init --shared`` and filled by ``ledger push``; stock git is the judge of
what the copy holds and does what an attacker with the server's disk would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gitservers
import pytest
from gitservers import (
    HTTP_PASSWORD,
    GitDaemon,
    GitHttpServer,
    SshServer,
    free_port,
    init_bare,
)
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger

from ledger import errors, fleet, replicate, verify

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server
ssh_server = gitservers.ssh_server


def shared_on(server: gitservers.GitServer, name: str, *, private: bool = False) -> Path:
    """A protected shared remote made by 'ledger remote init --shared' on the server's disk."""
    path = server.base / ("private" if private else "") / f"{name}.git"
    r = run_cli("remote", "init", path, "--shared")
    assert r.code == 0, r.output
    return path


def push_to(t: TestLedger, url: str, env: dict[str, str] | None = None) -> None:
    """The runner's side: 'ledger remote add fleet URL --shared' and 'ledger push'."""
    if "fleet" not in {r.name for r in replicate.list_remotes(t.path)}:
        r = run_cli("remote", "add", "fleet", url, "--shared", "--ledger", t.path)
        assert r.code == 0, r.output
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 0, r.output


def lid(t: TestLedger) -> str:
    return t.ledger.ledger_id


def refs_of(copy: Path) -> dict[str, str]:
    out = git("--git-dir", copy, "for-each-ref", "--format=%(refname) %(objectname)").stdout
    return dict(line.split() for line in out.splitlines())


def one_paragraph(r: CliResult) -> None:
    assert "Traceback" not in r.output, r.output
    assert r.err.strip() and "\n" not in r.err.strip(), r.err


def remembered(copy: Path, ledger: TestLedger) -> fleet.LedgerState:
    st = fleet.load_ledger(copy, lid(ledger))
    assert st is not None
    return st


@pytest.mark.parametrize("transport", ["git", "http", "ssh"])
def test_clone_then_fetch_sees_new_moved_and_vanished_ledgers(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> None:
    env: dict[str, str] = {}
    name = f"fc-{transport}-{tmp_path.name}"
    if transport == "git":
        path = shared_on(git_daemon, name)
        url = git_daemon.url(f"{name}.git")
    elif transport == "http":  # a private repository: the password is in the URL
        path = shared_on(http_server, name, private=True)
        url = http_server.private_url(f"{name}.git", with_credentials=True)
    else:
        path = shared_on(ssh_server, name)
        url = ssh_server.url(f"{name}.git")
        ssh_server.write_known_hosts(home)
        env = {"LEDGER_SSH_KEY": str(ssh_server.client_key)}
    web, db = make_ledger(tmp_path, "web1"), make_ledger(tmp_path, "db1", records=5)
    for t in (web, db):
        push_to(t, url, env)

    copy = tmp_path / "audit.git"
    r = run_cli("fleet", "clone", url, copy, env=env)
    assert r.code == 0, r.output
    assert f"{lid(web)}  new on origin at seq 3 ({web.head[:12]})" in r.out
    assert f"{lid(db)}  new on origin at seq 5 ({db.head[:12]})" in r.out
    assert "origin (" in r.out and "2 ledger(s); 2 new" in r.out
    assert HTTP_PASSWORD not in r.output  # (masked everywhere it is shown)
    # The copy: a bare repository, only refs/fleet/<remote>/<id>/main, no git remote.
    assert refs_of(copy) == {
        f"refs/fleet/origin/{lid(web)}/main": web.head,
        f"refs/fleet/origin/{lid(db)}/main": db.head,
    }
    assert git("--git-dir", copy, "config", "ledger.fleet").stdout.strip() == "true"
    assert git("--git-dir", copy, "config", "fleet.remote.origin.url").stdout.strip() == url
    assert git("--git-dir", copy, "config", "--get-regexp", "^remote\\.", check=False).stdout == ""
    git("--git-dir", copy, "fsck", "--strict")
    first = remembered(copy, web).remotes["origin"]
    assert (first.head, first.seq, first.vanished_at) == (web.head, 3, None)
    assert HTTP_PASSWORD not in json.dumps(fleet.load_fleet(copy).to_json())

    # A fetch with nothing new changes nothing remembered.
    r = run_cli("fleet", "fetch", "--fleet", copy, env=env)
    assert r.code == 0, r.output
    assert "2 ledger(s), no change" in r.out
    assert remembered(copy, web).remotes["origin"] == first

    # web moves on, a third ledger appears, db's ref is deleted on the server's disk.
    web.append(2)
    cache = make_ledger(tmp_path, "cache1", records=1)
    for t in (web, cache):
        push_to(t, url, env)
    git("--git-dir", path, "update-ref", "-d", f"refs/ledgers/{lid(db)}/main")
    r = run_cli("fleet", "fetch", env={**env, "LEDGER_FLEET": str(copy)})
    assert r.code == 0, r.output
    assert f"{lid(web)}  moved on origin from seq 3 to seq 5" in r.out
    assert f"{lid(cache)}  new on origin at seq 1" in r.out
    assert f"{lid(db)}  vanished from origin (was at seq 5)" in r.out
    assert "2 ledger(s); 1 new, 1 moved, 1 vanished" in r.out
    assert refs_of(copy) == {
        f"refs/fleet/origin/{lid(web)}/main": web.head,
        f"refs/fleet/origin/{lid(cache)}/main": cache.head,
    }
    moved = remembered(copy, web).remotes["origin"]
    assert (moved.head, moved.seq) == (web.head, 5) and moved.seen_at > first.seen_at
    gone = remembered(copy, db).remotes["origin"]
    assert gone.head == db.head and gone.vanished_at is not None
    seen = fleet.load_fleet(copy).ledgers
    assert set(seen) == {lid(web), lid(db), lid(cache)}
    assert seen[lid(db)].last_seen < seen[lid(web)].last_seen

    # Status: name, host, seq, time of the last record, first sighting, all unverified.
    st = run_cli("fleet", "status", "--fleet", copy)
    assert st.code == 0, st.output
    rows = {line.split()[0]: line for line in st.out.splitlines()[1:4]}
    assert rows[lid(web)].split()[1:4] == ["web1", os.uname().nodename, "5"]
    assert rows[lid(web)].rstrip().endswith("unverified")
    assert "origin: vanished since" in rows[lid(db)] and rows[lid(db)].endswith("vanished")
    assert "not when it was pushed" in st.out


def test_a_shared_remote_no_runner_pushed_to_yet_is_cloned_empty(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    # An auditor sets up before the runners push: the remote holds no ref at all.
    name = f"empty-{tmp_path.name}"
    shared_on(git_daemon, name)
    url = git_daemon.url(f"{name}.git")
    copy = tmp_path / "audit.git"
    r = run_cli("fleet", "clone", url, copy)
    assert r.code == 0, r.output
    assert f"origin ({url}): holds no ledger (an empty repository" in r.out
    assert "'ledger fleet fetch' brings the ledgers" in r.out
    assert "0 ledger(s) in the fleet copy" in r.out
    assert refs_of(copy) == {}
    # The runners push; the next fetch brings their ledgers.
    t = make_ledger(tmp_path, "web1")
    push_to(t, url)
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 0, r.output
    assert f"{lid(t)}  new on origin at seq 3" in r.out
    assert refs_of(copy) == {f"refs/fleet/origin/{lid(t)}/main": t.head}


def test_clone_and_fleet_refuse_an_empty_path_a_file_and_a_url_as_the_copy(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "s.git"
    assert run_cli("remote", "init", shared, "--shared").code == 0
    afile = tmp_path / "afile"
    afile.write_text("mine")
    # A file is a file, not a directory "not empty" (exit 5), and left as it was.
    r = run_cli("fleet", "clone", shared, afile)
    assert r.code == 5 and f"{afile} is a file, not a directory" in r.err, r.output
    assert "not empty" not in r.err and afile.read_text() == "mine"
    one_paragraph(r)
    # An empty DIR is no directory (exit 3), nor is a URL (which Path would make git:/h/x).
    for where, said in (
        ("", "the path given to 'ledger fleet clone' is empty"),
        ("git://127.0.0.1:1/x", "looks like a URL"),
    ):
        r = run_cli("fleet", "clone", shared, where, cwd=tmp_path)
        assert r.code == 3 and said in r.err, r.output
        one_paragraph(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "s.git"]
    # An empty --fleet is refused (exit 3), never the current directory in disguise; an
    # empty $LEDGER_FLEET is unset, as an empty $LEDGER_DIR is.
    for args in (
        ["fleet", "status", "--fleet", ""],
        ["fleet", "fetch", "--fleet", ""],
        ["fleet", "remote", "add", "m", str(shared), "--fleet", ""],
        ["fleet", "verify", "--fleet", ""],
    ):
        r = run_cli(*args, cwd=tmp_path)
        assert r.code == 3 and "--fleet is empty" in r.err, (args, r.output)
        one_paragraph(r)
    r = run_cli("fleet", "status", cwd=tmp_path, env={"LEDGER_FLEET": ""})
    assert r.code == 5 and f"{tmp_path} is not a fleet copy" in r.err, r.output


def test_status_says_verified_only_for_the_head_fleet_verify_verified(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    name = f"st-{tmp_path.name}"
    server = shared_on(git_daemon, name)
    url = git_daemon.url(f"{name}.git")
    web, db = make_ledger(tmp_path, "web1"), make_ledger(tmp_path, "db1")
    for t in (web, db):
        replicate.add_remote(t.path, "fleet", url, shared=True)
        replicate.push(t.path).check(None)
    copy = tmp_path / "audit.git"
    fleet.clone(url, copy)
    # What 'ledger fleet verify' leaves behind for web: its verified state at its head.
    result = verify.verify_ledger(web.path, trust_genesis=web.ledger.genesis_id)
    assert result.ok and result.state is not None
    st = remembered(copy, web)
    st.verified = result.state
    fleet.save_ledger(copy, st)

    doc = json.loads(run_cli("fleet", "status", "--json", "--fleet", copy).out)
    by = {d["ledger_id"]: d for d in doc["ledgers"]}
    assert by[lid(web)]["check"] == "verified" and by[lid(web)]["verified"] is True
    assert by[lid(db)]["check"] == "unverified" and by[lid(db)]["verified"] is False
    assert by[lid(web)]["name"] == "web1" and by[lid(web)]["seq"] == 3
    assert by[lid(web)]["remotes"]["origin"]["first_seen"] is not None

    # web moves on: its new head is not the verified one, whatever its records say.
    web.append()
    replicate.push(web.path).check(None)
    assert run_cli("fleet", "fetch", "--fleet", copy).code == 0
    doc = json.loads(run_cli("fleet", "status", "--json", "--fleet", copy).out)
    line = next(d for d in doc["ledgers"] if d["ledger_id"] == lid(web))
    assert (line["check"], line["seq"], line["verified_seq"]) == ("unverified", 4, 3)

    # A forged head written on the server's disk (no hook ran): whatever its records claim,
    # they are shown tamed and unverified.
    work = tmp_path / "forge"
    git("clone", "-q", db.path, work)
    (work / "events").mkdir(exist_ok=True)
    fake = {"host": "\x1b]0;pwned\x07evil\u202e", "time": "2030-01-01T00:00:00.000000Z"}
    (work / "events" / "x.json").write_text(json.dumps(fake))
    git("add", "events/x.json", cwd=work)
    git("commit", "-q", "-m", "x\n\nLedger-Seq: 99\nLedger-Record: events/x.json", cwd=work)
    git("--git-dir", server, "fetch", "-q", work, f"+HEAD:refs/ledgers/{lid(db)}/main")
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 0 and f"{lid(db)}  moved on origin from seq 3 to seq 99" in r.out, r.output
    doc = json.loads(run_cli("fleet", "status", "--json", "--fleet", copy).out)
    line = next(d for d in doc["ledgers"] if d["ledger_id"] == lid(db))
    assert (line["check"], line["seq"], line["name"]) == ("unverified", 99, "db1")
    assert line["host"] == "?]0;pwned?evil?" and line["last_record_time"].startswith("2030")
    out = run_cli("fleet", "status", "--fleet", copy).out
    assert "\x1b" not in out and "\u202e" not in out

    # A last verification with findings is said, even at the verified head.
    st = remembered(copy, db)
    st.outcome = fleet.Outcome(False, [{"rule": "rollback"}], "2026-11-27T00:00:00.000000Z")
    fleet.save_ledger(copy, st)
    out = run_cli("fleet", "status", "--fleet", copy).out
    assert next(ln for ln in out.splitlines() if ln.startswith(lid(db))).endswith("findings")


def test_two_remotes_in_one_copy_and_refs_that_are_not_ledgers(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    names = (f"one-{tmp_path.name}", f"two-{tmp_path.name}")
    one, two = (shared_on(git_daemon, n) for n in names)
    url1, url2 = (git_daemon.url(f"{n}.git") for n in names)
    a, b, c = (make_ledger(tmp_path, n, records=2) for n in ("a", "b", "c"))
    for t in (a, b):
        replicate.add_remote(t.path, "fleet", url1, shared=True)
        replicate.push(t.path).check(None)
    for t in (a, c):
        replicate.add_remote(t.path, "mirror", url2, shared=True)
        replicate.push(t.path, ["mirror"]).check(None)
    a.append()
    replicate.push(a.path, ["fleet"]).check(None)  # the mirror is one record behind
    # Refs that are no ledger's, written on the server's disk (bypassing the hook).
    git("--git-dir", two, "update-ref", "refs/heads/main", c.head)
    git("--git-dir", two, "update-ref", f"refs/ledgers/{lid(c)}/other", c.head)

    copy = tmp_path / "audit.git"
    r = run_cli("fleet", "clone", url1, copy, "--name", "primary")
    assert r.code == 0, r.output
    r = run_cli("fleet", "remote", "add", "mirror", url2, "--fleet", copy)
    assert r.code == 0 and f"Added shared remote mirror: {url2}" in r.out, r.output
    r = run_cli("fleet", "fetch", "--fleet", copy, "--remote", "mirror")
    assert r.code == 0, r.output
    assert f"{lid(a)}  new on mirror at seq 2" in r.out
    assert f"{lid(c)}  new on mirror at seq 2" in r.out
    assert "mirror: ignored refs/heads/main (not refs/ledgers/<32 hex>/main)" in r.out
    assert f"mirror: ignored refs/ledgers/{lid(c)}/other" in r.out
    assert "2 other ref(s) ignored" in r.out and "primary" not in r.out
    assert fleet.heads(fleet.open_copy(copy)) == {
        lid(a): {"mirror": _ref(two, a), "primary": a.head},
        lid(b): {"primary": b.head},
        lid(c): {"mirror": c.head},
    }
    assert not [r for r in refs_of(copy) if not r.startswith("refs/fleet/")]
    # Both remotes: one line each, nothing new.
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 0, r.output
    assert "primary (" in r.out and "mirror (" in r.out and "new on" not in r.out
    doc = json.loads(run_cli("fleet", "status", "--json", "--fleet", copy).out)
    line = next(d for d in doc["ledgers"] if d["ledger_id"] == lid(a))
    assert line["seq"] == 3 and set(line["remotes"]) == {"mirror", "primary"}
    assert line["remotes"]["mirror"]["seq"] == 2

    # A ref rewound on the server's disk: the copy follows (it shows what the server holds
    # now), the old head stays in the auditor's memory until then, and the fetch says so.
    older = _ref(two, a)
    git("--git-dir", one, "update-ref", f"refs/ledgers/{lid(a)}/main", older)
    r = run_cli("fleet", "fetch", "--fleet", copy, "--remote", "primary")
    assert r.code == 0, r.output
    assert f"{lid(a)}  moved on primary from seq 3 to seq 2 (NOT forward" in r.out
    assert refs_of(copy)[f"refs/fleet/primary/{lid(a)}/main"] == older
    held = remembered(copy, a).remotes["primary"]
    assert held.head == older and held.rewound_from is not None
    assert (held.rewound_from["head"], held.rewound_from["seq"]) == (a.head, 3)
    assert git("--git-dir", copy, "cat-file", "-t", a.head).stdout.strip() == "commit"


def _ref(server_repo: Path, t: TestLedger) -> str:
    return git("--git-dir", server_repo, "rev-parse", f"refs/ledgers/{lid(t)}/main").stdout.strip()


def test_concurrent_fetches_of_one_copy_take_turns(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    """Two fetches at once: the state lock serialises them; one sees the change, once."""
    name = f"cc-{tmp_path.name}"
    shared_on(git_daemon, name)
    url = git_daemon.url(f"{name}.git")
    ts = [make_ledger(tmp_path, n, records=1) for n in ("a", "b", "c")]
    for t in ts[:2]:
        replicate.add_remote(t.path, "fleet", url, shared=True)
        replicate.push(t.path).check(None)
    copy = tmp_path / "audit.git"
    fleet.clone(url, copy)
    for t in ts:
        if t is ts[2]:
            replicate.add_remote(t.path, "fleet", url, shared=True)
        t.append()
        replicate.push(t.path).check(None)
    cmd = [sys.executable, "-m", "ledger", "fleet", "fetch", "--fleet", str(copy)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    text = "".join(outs)
    assert text.count(f"{lid(ts[2])}  new on origin") == 1, outs
    for t in ts[:2]:
        assert text.count(f"{lid(t)}  moved on origin from seq 1 to seq 2") == 1, outs
    assert fleet.heads(fleet.open_copy(copy)) == {lid(t): {"origin": t.head} for t in ts}
    assert [remembered(copy, t).remotes["origin"].seq for t in ts] == [2, 2, 2]


def test_bad_input_is_one_paragraph_with_its_exit_code_and_leaves_nothing_behind(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    name = f"bad-{tmp_path.name}"
    path = shared_on(git_daemon, name)
    url = git_daemon.url(f"{name}.git")
    t = make_ledger(tmp_path, "a")
    replicate.add_remote(t.path, "fleet", url, shared=True)
    replicate.push(t.path).check(None)

    # Clone into a non-empty directory: refused, its files untouched (exit 5).
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    r = run_cli("fleet", "clone", url, busy)
    assert r.code == 5 and "already exists and is not empty" in r.err, r.output
    one_paragraph(r)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    # Unreachable, and not a shared remote (a one-ledger remote): nothing left (exit 8).
    r = run_cli("fleet", "clone", f"git://127.0.0.1:{free_port()}/x.git", tmp_path / "c1")
    assert r.code == 8 and "unreachable" in r.err, r.output
    one_paragraph(r)
    assert not (tmp_path / "c1").exists()
    plain = init_bare(git_daemon.base / f"plain-{tmp_path.name}.git")
    git("--git-dir", plain, "fetch", "-q", t.path, "main:main")
    empty = tmp_path / "c2"
    empty.mkdir()
    r = run_cli("fleet", "clone", git_daemon.url(plain.name), empty)
    assert r.code == 8 and "is not a shared remote" in r.err and "refs/heads/main" in r.err
    one_paragraph(r)
    assert list(empty.iterdir()) == []
    r = run_cli("fleet", "clone", git_daemon.url(f"nothing-{tmp_path.name}.git"), tmp_path / "c3")
    assert r.code == 8, r.output
    one_paragraph(r)
    assert not (tmp_path / "c3").exists()

    copy = tmp_path / "audit.git"
    assert run_cli("fleet", "clone", url, copy).code == 0
    # Fetch where there is no fleet copy: the current directory, a ledger (exit 5).
    for where in ([], ["--fleet", t.path], ["--fleet", tmp_path / "nowhere"]):
        r = run_cli("fleet", "fetch", *where, cwd=tmp_path)
        assert r.code == 5 and "is not a fleet copy" in r.err, r.output
        one_paragraph(r)
    r = run_cli("fleet", "status", cwd=tmp_path)
    assert r.code == 5, r.output
    # An unknown remote (exit 8); a bad name, URL or a name taken (exit 3).
    r = run_cli("fleet", "fetch", "--remote", "nope", "--fleet", copy)
    assert r.code == 8 and "no remote named 'nope' (its remotes: origin)" in r.err, r.output
    one_paragraph(r)
    for args, said in (
        (["bad..name", url], "not a valid remote name"),
        (["m", "ftp://host/x"], "unsupported scheme"),
        (["origin", url], "already has a remote named 'origin'"),
    ):
        r = run_cli("fleet", "remote", "add", *args, "--fleet", copy)
        assert r.code == 3 and said in r.err, r.output
        one_paragraph(r)
    # A remote that went down: the others are fetched, it is named (exit 8), nothing of it
    # is forgotten.
    r = run_cli(
        "fleet", "remote", "add", "down", f"git://127.0.0.1:{free_port()}/x.git", "--fleet", copy
    )
    assert r.code == 0, r.output
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 8 and "could not fetch down (" in r.err and "unreachable" in r.err
    assert "origin (" in r.out and "no change" in r.out
    one_paragraph(r)
    assert remembered(copy, t).remotes["origin"].head == t.head
    assert path.exists()


def test_the_copy_is_untrusted_and_the_state_is_checked(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    names = (f"real-{tmp_path.name}", f"evil-{tmp_path.name}")
    for n in names:
        shared_on(git_daemon, n)
    real, evil = (git_daemon.url(f"{n}.git") for n in names)
    t, stranger = make_ledger(tmp_path, "a"), make_ledger(tmp_path, "stranger")
    replicate.add_remote(t.path, "fleet", real, shared=True)
    replicate.push(t.path).check(None)
    replicate.add_remote(stranger.path, "fleet", evil, shared=True)
    replicate.push(stranger.path).check(None)
    copy = tmp_path / "audit.git"
    assert run_cli("fleet", "clone", real, copy).code == 0

    # Someone who can write the copy points origin at another server: not followed.
    git("--git-dir", copy, "config", "fleet.remote.origin.url", evil)
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 8, r.output
    assert f"points remote origin at {evil}, not at {real}" in r.err
    one_paragraph(r)
    assert set(fleet.heads(fleet.open_copy(copy))) == {lid(t)}
    assert fleet.load_ledger(copy, lid(stranger)) is None
    git("--git-dir", copy, "config", "fleet.remote.origin.url", real)
    assert run_cli("fleet", "fetch", "--fleet", copy).code == 0
    # ... or adds a remote of its own: not contacted until the auditor adds it.
    git("--git-dir", copy, "config", "fleet.remote.evil.url", evil)
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 8 and "evil" in r.err and "was not added on this machine" in r.err
    one_paragraph(r)
    assert fleet.load_ledger(copy, lid(stranger)) is None
    r = run_cli("fleet", "remote", "add", "evil", real, "--fleet", copy)  # (not that URL)
    assert r.code == 3 and "already has a remote named 'evil'" in r.err, r.output
    r = run_cli("fleet", "remote", "add", "evil", evil, "--fleet", copy)  # (accepted)
    assert r.code == 0, r.output
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 0 and f"{lid(stranger)}  new on evil" in r.out, r.output

    # A malformed state file: named, exit 6, never believed or overwritten.
    state_file = fleet.state_dir(copy) / "fleet.json"
    state_file.write_text("{not json")
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 6 and str(state_file) in r.err and "malformed" in r.err, r.output
    one_paragraph(r)
    assert state_file.read_text() == "{not json"
    with pytest.raises(errors.StorageError):
        fleet.load_fleet(copy)
    ledger_file = fleet.state_dir(copy) / "ledgers" / f"{lid(t)}.json"
    ledger_file.write_text(json.dumps({"format": 1, "ledger_id": lid(stranger)}))
    with pytest.raises(errors.StorageError, match="state of ledger"):
        fleet.load_ledger(copy, lid(t))
    assert fleet.load_ledger(copy, "0" * 32) is None
    # A state directory others can write is refused (exit 6).
    state_file.unlink()
    ledger_file.unlink()
    os.chmod(fleet.state_dir(copy), 0o770)  # noqa: S103 (group-writable, on purpose)
    r = run_cli("fleet", "status", "--fleet", copy)
    assert r.code == 6 and "not private" in r.err, r.output
    os.chmod(fleet.state_dir(copy), 0o700)
    # Without fleet.json no remote's URL is remembered: each is accepted again.
    r = run_cli("fleet", "fetch", "--fleet", copy)
    assert r.code == 8 and r.err.count("was not added on this machine") == 2, r.output
    for n, u in (("origin", real), ("evil", evil)):
        assert run_cli("fleet", "remote", "add", n, u, "--fleet", copy).code == 0
    assert run_cli("fleet", "fetch", "--fleet", copy).code == 0


def test_ssh_host_keys_are_checked_as_ledger_clone_checks_them(
    ssh_server: SshServer, home: Path, tmp_path: Path
) -> None:
    name = f"hk-{tmp_path.name}"
    shared_on(ssh_server, name)
    url = ssh_server.url(f"{name}.git")
    env = {"LEDGER_SSH_KEY": str(ssh_server.client_key)}
    t = make_ledger(tmp_path, "a")
    ssh_server.write_known_hosts(home)
    push_to(t, url, env)
    (home / ".ssh" / "known_hosts").unlink()

    r = run_cli("fleet", "clone", url, tmp_path / "c1", env=env)
    assert r.code == 8 and "host key refused" in r.err and "is unknown" in r.err, r.output
    one_paragraph(r)
    assert not (tmp_path / "c1").exists()
    r = run_cli("fleet", "clone", url, tmp_path / "c2", "--insecure-host-key", env=env)
    assert r.code == 0, r.output
    # A key the server does not know: authentication refused, the copy unchanged.
    stranger = str(ssh_server.other_key)
    r = run_cli(
        "fleet", "fetch", "--fleet", tmp_path / "c2", "--insecure-host-key", "--ssh-key", stranger
    )
    assert r.code == 8 and "auth failed" in r.err, r.output
    assert fleet.heads(fleet.open_copy(tmp_path / "c2")) == {lid(t): {"origin": t.head}}


def test_the_state_round_trips_privately(home: Path, tmp_path: Path) -> None:
    """What fleet verify and the witness read and write: the contract's JSON, 0600 files in
    0700 directories, written atomically."""
    copy = tmp_path / "audit.git"
    fleet.init_copy(str(tmp_path / "shared.git"), copy)
    lid_ = "ab" * 16
    st = fleet.LedgerState(
        lid_,
        remotes={"origin": fleet.RemoteHead("1" * 40, 7, "2026-11-27T00:00:00.000000Z")},
        claims=[{"by_ledger": "cd" * 16, "ledger": lid_, "seq": 7}],
        outcome=fleet.Outcome(True, [], "2026-11-27T00:00:01.000000Z"),
    )
    written = fleet.save_ledger(copy, st)
    assert fleet.load_ledger(copy, lid_) == st
    doc = json.loads(written.read_text())
    assert doc["remotes"]["origin"] == {
        "head": "1" * 40,
        "seq": 7,
        "seen_at": "2026-11-27T00:00:00.000000Z",
        "vanished_at": None,
        "rewound_from": None,
    }
    assert set(doc) == {"format", "ledger_id", "verified", "remotes", "claims", "outcome"}
    where = fleet.state_dir(copy)
    assert where == fleet.state_dir(fleet.open_copy(copy))
    for d in (where.parent, where, where / "ledgers"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    for f in (written, where / "fleet.json"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert fleet.load_fleet(copy).remotes == {"origin": str(tmp_path / "shared.git")}
    assert [p.name for p in (where / "ledgers").iterdir()] == [f"{lid_}.json"]  # (no temp)
    with pytest.raises(errors.InputError):
        fleet.load_ledger(copy, "../escape")


def test_a_remote_removed_from_the_copys_config_is_an_error_until_added_again(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    names = (f"rm1-{tmp_path.name}", f"rm2-{tmp_path.name}")
    for n in names:
        shared_on(git_daemon, n)
    url1, url2 = (git_daemon.url(f"{n}.git") for n in names)
    a = make_ledger(tmp_path, "a", records=2)
    push_to(a, url1)
    replicate.add_remote(a.path, "mirror", url2, shared=True)
    replicate.push(a.path, ["mirror"]).check(None)
    copy = tmp_path / "audit.git"
    assert run_cli("fleet", "clone", url1, copy).code == 0
    assert run_cli("fleet", "remote", "add", "mirror", url2, "--fleet", copy).code == 0
    assert run_cli("fleet", "fetch", "--fleet", copy).code == 0
    a.append()
    replicate.push(a.path, ["fleet"]).check(None)
    # Someone who can write the copy removes the mirror: it is no longer fetched, silently.
    git("--git-dir", copy, "config", "--remove-section", "fleet.remote.mirror")
    for cmd in (["fetch"], ["verify"]):
        r = run_cli("fleet", *cmd, "--fleet", copy)
        assert r.code == 8, r.output
        assert "could not fetch mirror (" in r.err and url2 in r.err, r.output
        assert "the copy's config no longer has it" in r.err
        assert "ledger fleet remote add mirror URL" in r.err
        assert "Traceback" not in r.output
    # Added again with its URL: fetched, and nothing of it was forgotten.
    r = run_cli("fleet", "remote", "add", "mirror", url2, "--fleet", copy)
    assert r.code == 0, r.output
    r = run_cli("fleet", "verify", "--fleet", copy)
    assert r.code == 0 and "1 mirror behind" in r.out, r.output
    assert remembered(copy, a).remotes["mirror"].seq == 2


def _state_files(copy: Path) -> dict[str, bytes]:
    where = fleet.state_dir(copy)
    return {
        str(p.relative_to(where)): p.read_bytes()
        for p in sorted(where.rglob("*"))
        if p.is_file() and p.name != "fleet.lock"
    }


def test_a_copy_made_again_keeps_the_state_only_for_the_same_remote(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    names = (f"st1-{tmp_path.name}", f"st2-{tmp_path.name}")
    servers = [shared_on(git_daemon, n) for n in names]
    url1, url2 = (git_daemon.url(f"{n}.git") for n in names)
    a, b = make_ledger(tmp_path, "a", records=2), make_ledger(tmp_path, "b", records=1)
    push_to(a, url1)
    push_to(b, url2)
    copy = tmp_path / "c2"
    unreachable = f"git://127.0.0.1:{free_port()}/x.git"

    # A failed clone leaves no state behind (and takes over none later).
    for bad in (unreachable, str(tmp_path / "missing.git")):
        r = run_cli("fleet", "clone", bad, copy)
        assert r.code == 8, r.output
        assert not fleet.state_dir(copy).exists()
    assert run_cli("fleet", "clone", url1, copy).code == 0
    assert run_cli("fleet", "verify", "--fleet", copy).code == 0

    # Made again from the same remote (a damaged copy moved aside): the state is kept, and
    # a rollback on the server in between is still judged against what was verified.
    old = a.head
    a.append()
    push_to(a, url1)
    assert run_cli("fleet", "verify", "--fleet", copy).code == 0
    shutil.rmtree(copy)
    git("--git-dir", servers[0], "update-ref", f"refs/ledgers/{lid(a)}/main", old)
    r = run_cli("fleet", "clone", url1, copy)
    assert r.code == 0 and "moved aside" not in r.output, r.output
    r = run_cli("fleet", "verify", "--fleet", copy, "--json")
    assert r.code == 7 and '"rule": "rollback"' in r.out.replace(" ", " "), r.output
    git("--git-dir", servers[0], "update-ref", f"refs/ledgers/{lid(a)}/main", a.head)
    assert run_cli("fleet", "verify", "--fleet", copy).code == 0
    before = _state_files(copy)

    # A failed clone at that path changes nothing of its state.
    shutil.rmtree(copy)
    for bad in (unreachable, url2.replace(names[1], "nothing")):
        r = run_cli("fleet", "clone", bad, copy)
        assert r.code == 8, r.output
        assert _state_files(copy) == before
    assert [p.name for p in fleet.state_dir(copy).parent.iterdir()] == [fleet.state_dir(copy).name]

    # Another remote at that path: a fresh state, said in one line, the old one moved aside.
    r = run_cli("fleet", "clone", url2, copy)
    assert r.code == 0, r.output
    assert r.err.count("ledger: warning:") == 1 and "moved aside to" in r.err, r.output
    assert "1 new" in r.out and "vanished" not in r.out
    (aside,) = [p for p in fleet.state_dir(copy).parent.iterdir() if p != fleet.state_dir(copy)]
    assert aside.name.startswith(fleet.state_dir(copy).name + ".replaced-")
    assert oct(aside.stat().st_mode & 0o777) == "0o700"
    r = run_cli("fleet", "verify", "--fleet", copy)
    assert r.code == 0 and "[vanished]" not in r.out and "ok 0, new 1," in r.out, r.output
    assert fleet.load_ledger(copy, lid(a)) is None
