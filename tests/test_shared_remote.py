"""Shared remotes: one git repository holding many ledgers at refs/ledgers/<id>/main, pushed,
fetched and checked like any remote, and protected by a hook that checks each ref as its own
chain. Over real servers (git daemon, git http-backend, sshd)."""

from __future__ import annotations

import json
from pathlib import Path

import gitservers
import pygit2
import pytest
from gitservers import GitDaemon, GitHttpServer, SshServer
from support.cli import run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger, unsigned_commit_on

from ledger import replicate
from ledger.format import records
from ledger.replicate import shared

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server
ssh_server = gitservers.ssh_server


def server_for(
    name: str, git_daemon: GitDaemon, http_server: GitHttpServer
) -> gitservers.GitServer:
    return {"git": git_daemon, "http": http_server}[name]


def shared_on(server: gitservers.GitServer, name: str) -> tuple[str, Path]:
    """A protected shared remote made by 'ledger remote init --shared', served by server."""
    path = server.base / f"{name}.git"
    r = run_cli("remote", "init", path, "--shared")
    assert r.code == 0, r.output
    assert "Created protected shared remote" in r.out
    return server.url(f"{name}.git"), path


def ref_of(t: TestLedger) -> str:
    return f"refs/ledgers/{t.ledger.ledger_id}/main"


def held(path: Path, ref: str) -> str | None:
    out = git("--git-dir", path, "rev-parse", "--verify", "-q", ref, check=False)
    return out.stdout.strip() or None


def work_clone(t: TestLedger, tmp_path: Path, name: str) -> Path:
    work = tmp_path / name
    git("clone", "-q", t.path, work)
    return work


@pytest.mark.parametrize("transport", ["git", "http"])
def test_two_ledgers_share_one_remote_and_push_fetch_status_verify_work(
    transport: str, git_daemon: GitDaemon, http_server: GitHttpServer, tmp_path: Path
) -> None:
    server = server_for(transport, git_daemon, http_server)
    url, path = shared_on(server, f"fleet-{transport}-{tmp_path.name}")
    a, b = make_ledger(tmp_path, "a"), make_ledger(tmp_path, "b", records=5)
    for t in (a, b):
        r = run_cli("remote", "add", "fleet", url, "--shared", "--ledger", t.path)
        assert r.code == 0, r.output
        assert f"Added remote fleet ({transport}, shared)" in r.out
        listed = run_cli("remote", "list", "--json", "--ledger", t.path)
        assert json.loads(listed.out)[0]["shared"] is True
        r = run_cli("push", "--ledger", t.path)
        assert r.code == 0, r.output
        assert f"fleet  pushed {t.seq + 1} records (now at seq {t.seq})" in r.out
    assert held(path, ref_of(a)) == a.head and held(path, ref_of(b)) == b.head
    assert held(path, "refs/heads/main") is None  # nothing else is written there
    # The server keeps one state per ledger, confirmed by post-receive (the pin).
    for t in (a, b):
        slot = shared.read_slot(pygit2.Repository(str(path)), t.ledger.ledger_id)
        assert slot.confirmed is not None and slot.confirmed.head == t.head
        assert slot.pinned == t.ledger.genesis_id

    # The background pusher, then fetch, status and verify --remotes, as for any remote.
    pusher = replicate.BackgroundPusher(a.path).start()
    for _ in range(3):
        pusher.notify(a.append())
    summary = pusher.close(timeout=60)
    assert [o.remote for o in summary.outcomes if o.holds_head] == ["fleet"]
    assert held(path, ref_of(a)) == a.head
    f = run_cli("fetch", "--ledger", a.path)
    assert f.code == 0, f.output
    assert "in sync at seq 6" in f.out
    st = run_cli("status", "--ledger", a.path)
    assert st.code == 0 and "remote fleet: at seq 6" in st.out, st.output
    v = run_cli("verify", "--remotes", "--ledger", b.path)
    assert v.code == 0, v.output
    b.append(2)
    behind = run_cli("fetch", "--ledger", b.path)
    assert behind.code == 0 and "2 record(s) behind" in behind.out, behind.output
    assert run_cli("push", "--ledger", b.path).code == 0
    assert held(path, ref_of(b)) == b.head


def test_a_shared_remote_rewritten_on_the_server_is_divergence_never_overwritten(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, path = shared_on(git_daemon, f"div-{tmp_path.name}")
    a = make_ledger(tmp_path, "a")
    replicate.add_remote(a.path, "fleet", url, shared=True)
    replicate.push(a.path).check(None)
    # Someone with the server's disk replaces the ref with a different history.
    work = work_clone(a, tmp_path, "w")
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)
    other = unsigned_commit_on(work)
    git("--git-dir", path, "fetch", "-q", work, f"+{other}:{ref_of(a)}")
    assert held(path, ref_of(a)) == other
    a.append()
    r = run_cli("push", "--ledger", a.path)
    assert r.code == 8, r.output
    assert "fleet  DIVERGED" in r.out
    assert held(path, ref_of(a)) == other  # nothing forced
    f = run_cli("fetch", "--ledger", a.path)
    assert f.code == 8 and "DIVERGED" in f.out, f.output
    v = run_cli("verify", "--remotes", "--ledger", a.path)
    assert v.code != 0 and "diverged" in v.output.lower(), v.output


def test_remote_add_shared_and_init_shared_refuse_bad_input(tmp_path: Path) -> None:
    r = run_cli("remote", "init", tmp_path / "x.git", "--shared", "--trust-genesis", "0" * 40)
    assert r.code == 2, r.output  # arguments that do not fit together
    assert "takes no --trust-genesis" in r.err
    assert "Traceback" not in r.output
    # A ledger named with --shared was silently ignored: the remote is no one ledger's.
    r = run_cli("remote", "init", tmp_path / "y.git", "--shared", "--ledger", tmp_path / "l")
    assert r.code == 2 and "takes no --ledger" in r.err, r.output
    assert not (tmp_path / "x.git").exists() and not (tmp_path / "y.git").exists()


@pytest.mark.parametrize("shared", [["--shared"], []])
def test_remote_init_takes_a_local_path_not_a_url_an_empty_path_or_a_file(
    shared: list[str], tmp_path: Path
) -> None:
    # A URL was made a local directory ./git:/127.0.0.1:1/x (Path collapses '//'): refused,
    # with what the command does and where serving it is described (exit 3).
    for url in ("git://127.0.0.1:1/x", f"file://{tmp_path}/x.git", "git@host:x.git"):
        r = run_cli("remote", "init", url, *shared, cwd=tmp_path)
        assert r.code == 3 and f"{url!r} looks like a URL" in r.err, r.output
        assert "on this machine's disk" in r.err and "docs/FLEET.md" in r.err
        assert "\n" not in r.err.strip() and "Traceback" not in r.output
    # An empty path is no path (it was '.', "already exists and is not empty").
    r = run_cli("remote", "init", "", *shared, cwd=tmp_path)
    assert r.code == 3 and "the path given to 'ledger remote init' is empty" in r.err, r.output
    assert list(tmp_path.iterdir()) == []
    # A file is a file, not a non-empty directory (exit 5), left as it was.
    (tmp_path / "afile").write_text("mine")
    r = run_cli("remote", "init", "afile", *shared, cwd=tmp_path)
    assert r.code == 5 and "afile is a file, not a directory" in r.err, r.output
    assert "not empty" not in r.err and (tmp_path / "afile").read_text() == "mine"
    # A local name with a colon is still possible, as a path.
    r = run_cli("remote", "init", "./host:x.git", *shared, cwd=tmp_path)
    assert r.code == 0, r.output
    assert (tmp_path / "host:x.git" / "HEAD").is_file()


@pytest.mark.parametrize("transport", ["git", "http"])
def test_the_shared_hook_refuses_each_bad_update_and_says_why(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = server_for(transport, git_daemon, http_server)
    url, path = shared_on(server, f"hook-{transport}-{tmp_path.name}")
    a, b = make_ledger(tmp_path, "a"), make_ledger(tmp_path, "b")
    for t in (a, b):
        replicate.add_remote(t.path, "fleet", url, shared=True)
        replicate.push(t.path).check(None)
    work = work_clone(a, tmp_path, "wa")

    def push(*spec: str) -> str:
        r = git("push", url, *spec, cwd=work, check=False)
        assert r.returncode != 0, r.stderr
        assert "pre-receive hook declined" in r.stderr, r.stderr
        return r.stderr

    # A ref outside refs/ledgers/<32 hex>/main.
    assert "[rule: shared-ref]" in push("HEAD:refs/heads/main")
    assert "[rule: shared-ref]" in push("HEAD:refs/ledgers/notanid/main")
    assert "[rule: shared-ref]" in push(f"HEAD:refs/ledgers/{a.ledger.ledger_id}/other")
    # A chain whose records name another ledger than its ref (A's chain at B's id, new ref).
    lone = "0123456789abcdef" * 2
    said = push(f"HEAD:refs/ledgers/{lone}/main")
    assert f"belong to ledger {a.ledger.ledger_id}, not to {lone}" in said
    assert "[rule: ledger-id]" in said
    # Rewinding and deleting a ledger's ref.
    assert "[rule: fast-forward]" in push(f"+HEAD~1:{ref_of(a)}")
    assert "[rule: no-delete]" in push(f":{ref_of(a)}")
    # B's ref rewritten with A's chain: not a fast-forward either.
    assert "[rule: fast-forward]" in push(f"+HEAD:{ref_of(b)}")
    # An unsigned record on A's chain: the verifier's finding reaches the pusher.
    forged = unsigned_commit_on(work)
    said = push(f"HEAD:{ref_of(a)}")
    assert forged in said and "[rule: unsigned]" in said
    assert held(path, ref_of(a)) == a.head and held(path, ref_of(b)) == b.head

    # A genesis other than the pinned one: the ref is gone (removed on the server's disk),
    # and another chain claiming A's id comes to recreate it.
    git("--git-dir", path, "update-ref", "-d", ref_of(a))
    monkeypatch.setattr(records, "new_ledger_id", lambda: a.ledger.ledger_id)
    impostor = make_ledger(tmp_path, "impostor")
    assert impostor.ledger.ledger_id == a.ledger.ledger_id
    r = git("push", url, f"main:{ref_of(a)}", cwd=impostor.path, check=False)
    assert r.returncode != 0 and "[rule: genesis-mismatch]" in r.stderr, r.stderr
    assert a.ledger.genesis_id in r.stderr
    assert held(path, ref_of(a)) is None
    # The honest chain may come back.
    assert git("push", url, f"main:{ref_of(a)}", cwd=a.path, check=False).returncode == 0
    assert held(path, ref_of(a)) == a.head


@pytest.mark.parametrize("transport", ["git", "http", "ssh"])
def test_a_refused_record_reaches_ledger_push_in_the_servers_words(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> None:
    server = {"git": git_daemon, "http": http_server, "ssh": ssh_server}[transport]
    ssh_server.write_known_hosts(home)
    env = {"LEDGER_SSH_KEY": str(ssh_server.client_key)}
    url, path = shared_on(server, f"rej-{transport}-{tmp_path.name}")
    a = make_ledger(tmp_path, "a")
    replicate.add_remote(a.path, "fleet", url, shared=True)
    first = run_cli("push", "--ledger", a.path, env=env)
    assert first.code == 0, first.output
    good = a.head
    assert held(path, ref_of(a)) == good
    work = work_clone(a, tmp_path, "forge")
    forged = unsigned_commit_on(work)
    git("push", "-q", "origin", "main", cwd=work)
    # (a ledger that does not verify is pushed only when told: here, to see the hook refuse it)
    assert run_cli("push", "--ledger", a.path, env=env).code == 7
    r = run_cli("push", "--allow-unverified", "--ledger", a.path, env=env)
    assert r.code == 8, r.output
    assert f"fleet  rejected: {ref_of(a)}:" in r.out
    assert forged in r.out and "[rule: unsigned]" in r.out
    assert held(path, ref_of(a)) == good


def test_the_hook_resumes_from_the_refs_own_state(git_daemon: GitDaemon, tmp_path: Path) -> None:
    """Each push verifies only its new records, from the ref's own state on the server."""
    url, path = shared_on(git_daemon, f"inc-{tmp_path.name}")
    a, b = make_ledger(tmp_path, "a", records=20), make_ledger(tmp_path, "b", records=30)
    out = git("push", url, f"main:{ref_of(a)}", cwd=a.path)
    assert "(seq 20; 21 new record(s) verified)" in out.stderr, out.stderr
    out = git("push", url, f"main:{ref_of(b)}", cwd=b.path)
    assert "(seq 30; 31 new record(s) verified)" in out.stderr, out.stderr
    a.append(2)
    out = git("push", url, f"main:{ref_of(a)}", cwd=a.path)
    assert "(seq 22; 2 new record(s) verified)" in out.stderr, out.stderr
    slot = shared.read_slot(pygit2.Repository(str(path)), a.ledger.ledger_id)
    assert slot.confirmed is not None and slot.confirmed.head == a.head
    # Its state lost: the next push verifies that ledger whole, from its own genesis.
    shared.slot_path(pygit2.Repository(str(path)), a.ledger.ledger_id).unlink()
    a.append()
    out = git("push", url, f"main:{ref_of(a)}", cwd=a.path)
    assert "(seq 23; 24 new record(s) verified)" in out.stderr, out.stderr


def test_the_light_post_receive_hook_reads_the_layout_the_check_writes() -> None:
    from ledger import hook

    assert hook.SHARED_REF_RE.pattern == shared.SHARED_REF_RE.pattern
    assert hook.SHARED_STATE_SUBDIR == shared.STATE_SUBDIR
