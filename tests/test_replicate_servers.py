"""Replication against real git servers on 127.0.0.1: git daemon, git http-backend, sshd."""

from __future__ import annotations

import base64
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import gitservers
import pytest
from gitservers import (
    HTTP_PASSWORD,
    HTTP_USER,
    GitDaemon,
    GitHttpServer,
    SshServer,
    free_port,
    require,
    ssh_keygen,
)
from support.cli import run_cli
from support.gitcmd import git
from support.replicas import (
    TestLedger,
    make_ledger,
    remote_head,
    ssh_signed_commit_on,
    unsigned_commit_on,
)

import ledger
from ledger import replicate

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server
ssh_server = gitservers.ssh_server
stoppable_git_daemon = gitservers.stoppable_git_daemon


def protected_on(server: gitservers.GitServer, t: TestLedger, name: str) -> tuple[str, Path]:
    """A remote made by `ledger remote init` (pinned to t's genesis), served by ``server``."""
    path = server.base / f"{name}.git"
    replicate.init_remote(path, genesis=t.ledger.genesis_id)
    return server.url(f"{name}.git"), path


def ssh_env(ssh: SshServer) -> dict[str, str]:
    return {"LEDGER_SSH_KEY": str(ssh.client_key)}


@pytest.fixture()
def three(
    stoppable_git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> tuple[TestLedger, dict[str, Path]]:
    """A ledger with protected remotes over git://, http:// and ssh://."""
    ssh_server.write_known_hosts(home)
    t = make_ledger(tmp_path)
    paths = {}
    for name, server in (
        ("gitd", stoppable_git_daemon),
        ("web", http_server),
        ("sshd", ssh_server),
    ):
        url, path = protected_on(server, t, f"{name}-{tmp_path.name}")
        replicate.add_remote(t.path, name, url)
        paths[name] = path
    return t, paths


def test_one_push_reaches_three_transports_and_a_later_push_catches_up(
    three: tuple[TestLedger, dict[str, Path]],
    stoppable_git_daemon: GitDaemon,
    ssh_server: SshServer,
) -> None:
    t, paths = three
    r = run_cli("push", "--ledger", t.path, env=ssh_env(ssh_server))
    assert r.code == 0, r.output
    lines = dict(line.split(None, 1) for line in r.out.splitlines())
    for name in ("gitd", "web", "sshd"):
        assert lines[name] == "pushed 4 records (now at seq 3)", r.out
        assert remote_head(paths[name]) == t.head, name
    assert "warning" not in r.err  # none of them is a direct-write path remote

    # One remote goes down; a run goes on, its records pushed in the background.
    port = stoppable_git_daemon.port
    stoppable_git_daemon.stop()
    os.environ["LEDGER_SSH_KEY"] = str(ssh_server.client_key)
    try:
        pusher = replicate.BackgroundPusher(t.path).start()
        for _ in range(3):
            pusher.notify(t.append())
        summary = pusher.close(timeout=60)
    finally:
        del os.environ["LEDGER_SSH_KEY"]
    by = {o.remote: o for o in summary.outcomes}
    assert by["gitd"].status is replicate.PushStatus.UNREACHABLE
    assert by["web"].holds_head and by["sshd"].holds_head
    assert remote_head(paths["web"]) == t.head and remote_head(paths["sshd"]) == t.head
    assert t.seq == 6  # the run's records are all safe locally

    st = run_cli("status", "--ledger", t.path)
    assert st.code == 0, st.output
    assert "remote gitd: at seq 3" in st.out and "3 record(s) behind" in st.out
    assert "remote web: at seq 6" in st.out and "0 record(s) behind" in st.out

    down = run_cli("push", "--ledger", t.path, env=ssh_env(ssh_server))
    assert down.code == 8 and "gitd  unreachable" in down.out
    assert run_cli("push", "--require", "2", "--ledger", t.path, env=ssh_env(ssh_server)).code == 0

    stoppable_git_daemon.start(port)
    r = run_cli("push", "--ledger", t.path, env=ssh_env(ssh_server))
    assert r.code == 0, r.output
    assert "gitd  pushed 3 records (now at seq 6)" in r.out
    assert "web   up to date (seq 6)" in r.out
    assert remote_head(paths["gitd"]) == t.head
    lag = {x.name: x.behind for x in replicate.status(t.path).remotes}
    assert lag == {"gitd": 0, "sshd": 0, "web": 0}


def test_stock_git_cannot_force_delete_or_forge_over_git_daemon(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    url, path = protected_on(git_daemon, t, f"prot-{tmp_path.name}")
    replicate.add_remote(t.path, "prot", url)
    replicate.push(t.path).check(None)
    head = t.head

    work = tmp_path / "work"
    git("clone", "-q", url, work)
    git("commit", "-q", "--amend", "-m", "rewritten history", cwd=work)
    forced = git("push", "--force", "origin", "main", cwd=work, check=False)
    assert forced.returncode != 0
    assert "[remote rejected]" in forced.stderr
    assert remote_head(path) == head

    deleted = git("push", "origin", ":main", cwd=work, check=False)
    assert deleted.returncode != 0 and "[remote rejected]" in deleted.stderr
    assert "a ledger is never deleted" in deleted.stderr
    assert remote_head(path) == head

    git("reset", "-q", "--hard", "origin/main", cwd=work)
    forged = unsigned_commit_on(work)
    r = git("push", "origin", "main", cwd=work, check=False)
    assert r.returncode != 0 and "pre-receive hook declined" in r.stderr
    assert f"remote: ledger:   commit {forged} (seq 4)" in r.stderr
    assert "[rule: unsigned]" in r.stderr
    assert remote_head(path) == head

    stranger = ssh_keygen(tmp_path / "stranger")
    git("reset", "-q", "--hard", "origin/main", cwd=work)
    signed = ssh_signed_commit_on(work, stranger)
    r = git("push", "origin", "main", cwd=work, check=False)
    assert r.returncode != 0 and signed in r.stderr
    assert "[rule: untrusted-key]" in r.stderr or "[rule: bad-signature]" in r.stderr
    assert remote_head(path) == head


def _forge_local(t: TestLedger, tmp_path: Path) -> str:
    """Append an unsigned commit made with stock git to the local ledger's main."""
    work = tmp_path / "forge"
    git("clone", "-q", t.path, work)
    forged = unsigned_commit_on(work)
    git("push", "-q", "origin", "main", cwd=work)
    return forged


@pytest.mark.parametrize("transport", ["git", "http", "ssh"])
def test_server_rejection_reaches_ledger_push(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> None:
    server = {"git": git_daemon, "http": http_server, "ssh": ssh_server}[transport]
    ssh_server.write_known_hosts(home)
    t = make_ledger(tmp_path)
    url, path = protected_on(server, t, f"rej-{tmp_path.name}")
    replicate.add_remote(t.path, "prot", url)
    good = t.head
    forged = _forge_local(t, tmp_path)
    # (a ledger that does not verify is pushed only when told: here, to see the hook refuse it)
    assert run_cli("push", "--ledger", t.path, env=ssh_env(ssh_server)).code == 7
    r = run_cli("push", "--allow-unverified", "--ledger", t.path, env=ssh_env(ssh_server))
    assert r.code == 8, r.output
    assert "prot  rejected: refs/heads/main:" in r.out
    assert forged in r.out and "[rule: unsigned]" in r.out  # the server's own words
    assert remote_head(path) is None
    assert good != forged
    assert replicate.read_remote_state(t.path)["prot"]["status"] == "rejected"


def test_remote_rewritten_on_disk_is_reported_and_not_overwritten(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    url, path = protected_on(git_daemon, t, f"rw-{tmp_path.name}")
    replicate.add_remote(t.path, "prot", url)
    replicate.push(t.path).check(None)
    # Directly on the server's disk (no hooks, no rules): another chain replaces main.
    other = make_ledger(tmp_path, "other", records=5)
    git("--git-dir", path, "fetch", "-q", other.path, "main:refs/evil")
    git("--git-dir", path, "update-ref", "refs/heads/main", other.head)
    t.append()
    mine = t.head

    r = run_cli("push", "--ledger", t.path)
    assert r.code == 8, r.output
    assert "DIVERGED" in r.out and other.head in r.out and mine in r.out
    assert remote_head(path) == other.head and t.head == mine

    f = run_cli("fetch", "--ledger", t.path)
    assert f.code == 8 and "DIVERGED" in f.out and other.head in f.out
    states = replicate.check_remotes(t.path)
    assert [s.rule for s in states] == ["diverged"]
    assert t.head == mine


def test_unknown_and_changed_ssh_host_keys_are_refused(
    ssh_server: SshServer, home: Path, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    url, path = protected_on(ssh_server, t, f"hk-{tmp_path.name}")
    replicate.add_remote(t.path, "s", url)
    env = ssh_env(ssh_server)
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 8, r.output
    assert "host key refused" in r.out and "is unknown" in r.out
    assert remote_head(path) is None

    # A known_hosts entry with another key for this host and port: a changed host key.
    other = ssh_keygen(tmp_path / "otherhost")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    (home / ".ssh").mkdir(exist_ok=True)
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{ssh_server.port} {kind} {blob}\n")
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 8 and "CHANGED" in r.out

    r = run_cli("push", "--insecure-host-key", "--ledger", t.path, env=env)
    assert r.code == 0, r.output
    assert remote_head(path) == t.head

    ssh_server.write_known_hosts(home)
    (home / ".ssh" / "known_hosts").write_text(ssh_server.known_hosts_line())
    t.append()
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 0, r.output
    assert "pushed 1 record" in r.out


def test_bad_input_and_failures_lose_nothing(
    ssh_server: SshServer, http_server: GitHttpServer, home: Path, tmp_path: Path
) -> None:
    ssh_server.write_known_hosts(home)
    t = make_ledger(tmp_path)
    head = t.head
    # Malformed URL and unknown remote name.
    r = run_cli("remote", "add", "x", "ssh://127.0.0.1:99999/x.git", "--ledger", t.path)
    assert r.code == 3 and "invalid port" in r.err
    r = run_cli("fetch", "nope", "--ledger", t.path)
    assert r.code == 8 and "no remote named 'nope'" in r.err

    # Unreachable host (nothing listens on the port).
    replicate.add_remote(t.path, "down", f"git://127.0.0.1:{free_port()}/x.git")
    # Authentication failures: an SSH key the server does not know; HTTP without a password.
    url, _ = protected_on(ssh_server, t, f"auth-{tmp_path.name}")
    replicate.add_remote(t.path, "ssh", url)
    purl, ppath = http_server.make_private_repo()
    replicate.add_remote(t.path, "web", purl)
    stranger = ssh_keygen(tmp_path / "stranger")
    r = run_cli("push", "--ssh-key", stranger, "--ledger", t.path)
    assert r.code == 8, r.output
    lines = dict(line.split(None, 1) for line in r.out.splitlines())
    assert lines["down"].startswith("unreachable")
    assert lines["ssh"].startswith("auth failed") and str(stranger) in lines["ssh"]
    assert lines["web"].startswith("auth failed")
    r = run_cli("fetch", "--ssh-key", stranger, "--ledger", t.path)
    assert r.code == 8 and "could not check" in r.err
    assert t.head == head and t.seq == 3

    # HTTP credentials from the environment work; so does git's credential store file.
    r = run_cli(
        "push",
        "web",
        "--ledger",
        t.path,
        env={"LEDGER_HTTP_USER": HTTP_USER, "LEDGER_HTTP_PASSWORD": HTTP_PASSWORD},
    )
    assert r.code == 0, r.output
    assert remote_head(ppath) == t.head
    t.append()
    # Malformed lines of the file (an unbalanced IPv6 bracket, a port that is no number)
    # are skipped, as git skips them.
    (home / ".git-credentials").write_text(
        "http://u:p@[::1\nhttp://u:p@127.0.0.1:port\n"
        f"http://{HTTP_USER}:{HTTP_PASSWORD}@127.0.0.1:{http_server.port}\n"
    )
    git("--git-dir", t.path, "config", "credential.helper", "store")
    summary = replicate.push(t.path, ["web"])
    assert summary.outcomes[0].status is replicate.PushStatus.PUSHED, summary.outcomes[0]
    assert remote_head(ppath) == t.head


def test_token_from_environment_and_clone_over_http(
    http_server: GitHttpServer, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    purl, ppath = http_server.make_private_repo()
    replicate.add_remote(t.path, "web", purl)
    creds = replicate.Credentials.from_env(
        environ={"LEDGER_HTTP_TOKEN": HTTP_PASSWORD, "LEDGER_HTTP_USER": HTTP_USER}
    )
    replicate.push(t.path, credentials=creds).check(None)
    assert remote_head(ppath) == t.head

    url, _path = protected_on(http_server, t, f"pub-{tmp_path.name}")
    replicate.add_remote(t.path, "pub", url)
    replicate.push(t.path, ["pub"]).check(None)
    r = run_cli("clone", url, tmp_path / "audit", "--trust-genesis", t.ledger.genesis_id)
    assert r.code == 0, r.output
    assert git("--git-dir", tmp_path / "audit", "rev-parse", "main").stdout.strip() == t.head
    wrong = run_cli("clone", url, tmp_path / "audit2", "--trust-genesis", "0" * 40)
    assert wrong.code == 7 and not (tmp_path / "audit2").exists()
    assert json.loads(run_cli("status", "--json", "--ledger", tmp_path / "audit").out)["seq"] == 3
    assert base64  # (imported for symmetry with the server's basic auth)


def _python_without_ledger(venv: Path) -> Path:
    """An interpreter that imports this one's third-party packages (pygit2, ...) but not
    ``ledger``: a venv whose site-packages lists ours by a path line. A path line does not
    run the ``.pth`` files found there, so the editable install of ``ledger`` stays out."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    where = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(where, "system.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_a_protected_remote_runs_the_ledger_it_was_made_with(tmp_path: Path) -> None:
    # `ledger remote init` run by an interpreter that finds `ledger` only on its PYTHONPATH;
    # git daemon then runs the hook with an environment that names no PYTHONPATH at all.
    require(gitservers.GIT_DAEMON)
    python = _python_without_ledger(tmp_path / "venv")
    bare_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    alone = subprocess.run(
        [python, "-c", "import ledger"], env=bare_env, cwd=tmp_path, capture_output=True, text=True
    )
    assert "No module named 'ledger'" in alone.stderr  # the server cannot import it itself
    t = make_ledger(tmp_path)
    daemon = GitDaemon(tmp_path / "gitd" / "repos", env=bare_env)
    remote = daemon.path("prot.git")
    made = subprocess.run(
        [
            python,
            "-c",
            "import sys; from pathlib import Path; from ledger import replicate; "
            "replicate.init_remote(Path(sys.argv[1]), genesis=sys.argv[2])",
            str(remote),
            t.ledger.genesis_id,
        ],
        env={**bare_env, "PYTHONPATH": str(Path(ledger.__file__).parent.parent)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    daemon.start()
    try:
        replicate.add_remote(t.path, "prot", daemon.url("prot.git"))
        summary = replicate.push(t.path)
    finally:
        daemon.stop()
    assert summary.outcomes[0].status is replicate.PushStatus.PUSHED, summary.outcomes[0].line()
    assert remote_head(remote) == t.head


# --- divergence and an ahead remote over every transport ------------------------------


def _served_remote(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    t: TestLedger,
    name: str,
) -> tuple[str, Path, dict[str, str]]:
    """A remote for ``t`` over ``transport``: (URL, path on disk, environment for the CLI).
    Over http it is a private repository, so that every connection asks for credentials."""
    if transport == "http":
        url, path = http_server.make_private_repo()
        return url, path, {"LEDGER_HTTP_USER": HTTP_USER, "LEDGER_HTTP_PASSWORD": HTTP_PASSWORD}
    server = {"git": git_daemon, "ssh": ssh_server}[transport]
    url, path = protected_on(server, t, name)
    return url, path, ssh_env(ssh_server)


def _other_copy(t: TestLedger, tmp_path: Path, name: str) -> TestLedger:
    """A copy of ``t`` (same ledger, same key) that can grow on its own."""
    from ledger.store import Ledger

    copy = tmp_path / name
    git("clone", "-q", "--bare", t.path, copy)
    git("--git-dir", copy, "remote", "remove", "origin")
    for key in ("ledger.id", "ledger.genesis", "ledger.name"):
        value = git("--git-dir", t.path, "config", key, check=False).stdout.strip()
        if value:
            git("--git-dir", copy, "config", key, value)
    return TestLedger(copy, t.key, t.key_path, Ledger.open(copy))


@pytest.mark.parametrize("transport", ["git", "http", "ssh"])
def test_diverged_and_ahead_remotes_are_reported_as_such_over_every_transport(
    transport: str,
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> None:
    ssh_server.write_known_hosts(home)
    t = make_ledger(tmp_path)
    url, path, env = _served_remote(
        transport, git_daemon, http_server, ssh_server, t, f"div-{tmp_path.name}"
    )
    replicate.add_remote(t.path, "r", url)
    first = run_cli("push", "--ledger", t.path, env=env)
    assert first.code == 0, first.output

    # Ahead: another copy of the same ledger pushed two more records there.
    other = _other_copy(t, tmp_path, "other")
    other.append(2)
    replicate.add_remote(other.path, "r", url)
    creds = replicate.Credentials.from_env(environ={**os.environ, **env})
    replicate.push(other.path, credentials=creds).check(None)
    assert remote_head(path) == other.head
    assert t.seq == 3 and other.seq == 5, (t.seq, other.seq)
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 0, r.output
    assert "r  ahead: the remote holds 2 record(s) beyond our head" in r.out, r.output
    assert "auth" not in r.output
    f = run_cli("fetch", "--ledger", t.path, env=env)
    assert f.code == 0, f.output
    assert "2 record(s) ahead of us" in f.out and "its extra records verify" in f.out

    # Diverged: ours grows on its own; the remote is not a prefix of ours nor ours of it.
    t.append()
    mine = t.head
    r = run_cli("push", "--ledger", t.path, env=env)
    assert r.code == 8, r.output
    assert "r  DIVERGED:" in r.out and other.head in r.out and mine in r.out, r.output
    assert "auth" not in r.output
    assert remote_head(path) == other.head and t.head == mine
    j = run_cli("push", "--json", "--ledger", t.path, env=env)
    assert j.code == 8 and json.loads(j.out)["outcomes"][0]["status"] == "diverged"
    f = run_cli("fetch", "--ledger", t.path, env=env)
    assert f.code == 8 and "DIVERGED" in f.out and "auth" not in f.output, f.output
    v = run_cli("verify", "--remotes", "--json", "--ledger", t.path, env=env)
    assert v.code == 7, v.output
    doc = json.loads(v.out)
    assert doc["ok"] is False and doc["remotes"][0]["condition"] == "diverged"

    # The background pusher of a run says the same.
    os.environ.update(env)
    try:
        pusher = replicate.BackgroundPusher(t.path).start()
        pusher.notify(t.head)
        summary = pusher.close(timeout=60)
    finally:
        for k in env:
            del os.environ[k]
    assert summary.outcomes[0].status is replicate.PushStatus.DIVERGED, summary.outcomes[0]


def test_verify_remotes_fails_closed_when_a_remote_cannot_be_checked(
    git_daemon: GitDaemon,
    http_server: GitHttpServer,
    ssh_server: SshServer,
    home: Path,
    tmp_path: Path,
) -> None:
    t = make_ledger(tmp_path)
    good, _ = protected_on(git_daemon, t, f"good-{tmp_path.name}")
    replicate.add_remote(t.path, "good", good)
    replicate.push(t.path).check(None)
    assert run_cli("verify", "--remotes", "--ledger", t.path).code == 0

    replicate.add_remote(t.path, "down", f"git://127.0.0.1:{free_port()}/x.git")
    purl, _ = http_server.make_private_repo()
    replicate.add_remote(t.path, "web", purl)  # no credentials given: 401
    surl, _ = protected_on(ssh_server, t, f"hk-{tmp_path.name}")
    replicate.add_remote(t.path, "hostkey", surl)  # no known_hosts entry
    env = ssh_env(ssh_server)
    r = run_cli("verify", "--remotes", "--ledger", t.path, env=env)
    assert r.code == 8, r.output
    assert "Verified 4 record(s)" in r.out
    for name, words in (
        ("down", "unreachable"),
        ("web", "auth failed"),
        ("hostkey", "host key refused"),
    ):
        assert name in r.err and words in r.err, (name, r.output)
    assert f"remote good ({good}): in sync" in r.out
    assert f"remote hostkey ({surl}): host key refused" in r.out

    j = run_cli("verify", "--remotes", "--json", "--ledger", t.path, env=env)
    assert j.code == 8, j.output
    doc = json.loads(j.out)
    assert doc["ok"] is False and doc["findings"] == []
    assert sorted(doc["remotes_unchecked"]) == ["down", "hostkey", "web"]
    assert {s["remote"]: s["url"] for s in doc["remotes"]}["web"] == purl

    # An SSH key the server does not know: authentication failure, named too.
    ssh_server.write_known_hosts(home)
    stranger = ssh_keygen(tmp_path / "stranger")
    r = run_cli("verify", "--remotes", "--ledger", t.path, env={"LEDGER_SSH_KEY": str(stranger)})
    assert r.code == 8 and "hostkey (" in r.err and "auth failed" in r.err, r.output

    skips = ["--skip-remote", "down", "--skip-remote", "web", "--skip-remote", "hostkey"]
    r = run_cli(
        "verify", "--remotes", *skips, "--ledger", t.path, env={"LEDGER_SSH_KEY": str(stranger)}
    )
    assert r.code == 0, r.output
    assert "(may be skipped)" in r.out
    j = run_cli("verify", "--remotes", "--json", *skips[:4], "--ledger", t.path, env=env)
    assert j.code == 0, j.output  # hostkey is reachable with the right key now
    doc = json.loads(j.out)
    assert doc["ok"] is True and sorted(doc["remotes_skipped"]) == ["down", "web"]
    r = run_cli("verify", "--remotes", "--skip-remote", "nope", "--ledger", t.path)
    assert r.code == 2 and "nope" in r.err


def test_a_remote_url_pointed_at_a_doctored_copy_does_not_verify(
    git_daemon: GitDaemon, home: Path, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    url, _path = protected_on(git_daemon, t, f"orig-{tmp_path.name}")
    r = run_cli("remote", "add", "origin", url, "--ledger", t.path)
    assert r.code == 0, r.output
    assert run_cli("push", "--ledger", t.path).code == 0
    assert run_cli("verify", "--remotes", "--ledger", t.path).code == 0
    # What the remote held is kept in the user's own state, not in the ledger directory.
    assert not (t.path / "ledger-state" / "remotes.json").exists()
    kept = list((home / ".local" / "state" / "runbook-ledger" / "remotes").glob("*.json"))
    assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    assert t.head in kept[0].read_text()

    def doctored(name: str, head: str) -> str:
        """A copy of our chain up to ``head`` (or another chain), served by the daemon."""
        durl, dpath = git_daemon.make_repo(f"{name}-{tmp_path.name}.git")
        git("--git-dir", t.path, "push", "-q", str(dpath), f"{head}:refs/heads/main")
        return durl

    def point_at(new_url: str) -> None:
        git("--git-dir", t.path, "config", "remote.origin.url", new_url)

    # A copy missing our last two records (someone hides them from the witness): a rollback
    # of what that remote held, also when the ledger-state files are deleted.
    first = git("--git-dir", t.path, "rev-parse", "main~2").stdout.strip()
    point_at(doctored("short", first))
    (t.path / "ledger-state" / "remotes.json").unlink(missing_ok=True)  # the attacker's part
    v = run_cli("verify", "--remotes", "--ledger", t.path)
    assert v.code == 7, v.output
    assert "rollback" in v.out and "was not made with 'ledger remote add'" in v.out

    # The same chain as ours elsewhere: nothing diverges, but the change itself fails closed.
    point_at(doctored("same", t.head))
    v = run_cli("verify", "--remotes", "--json", "--ledger", t.path)
    assert v.code == 8, v.output
    doc = json.loads(v.out)
    assert doc["ok"] is False and doc["remotes"][0]["condition"] == "url changed"
    f = run_cli("fetch", "--ledger", t.path)
    assert f.code == 8 and "doctored copy" in f.err, f.output
    assert "changed without 'ledger remote add'" in run_cli("status", "--ledger", t.path).out

    # Another history altogether: divergence, loudly.
    other = make_ledger(tmp_path, "other", records=5)
    durl, dpath = git_daemon.make_repo(f"other-{tmp_path.name}.git")
    git("--git-dir", other.path, "push", "-q", str(dpath), "main:refs/heads/main")
    point_at(durl)
    v = run_cli("verify", "--remotes", "--ledger", t.path)
    assert v.code == 7 and "DIVERGED" in v.out, v.output

    # The witness removed from the config: named, not silently gone.
    git("--git-dir", t.path, "config", "--remove-section", "remote.origin")
    v = run_cli("verify", "--remotes", "--ledger", t.path)
    assert v.code == 8 and "origin" in v.err and "missing" in v.err, v.output

    # The user's own change, made with the tool, is accepted.
    r = run_cli("remote", "add", "origin", doctored("moved", t.head), "--ledger", t.path)
    assert r.code == 0, r.output
    v = run_cli("verify", "--remotes", "--ledger", t.path)
    assert v.code == 0, v.output
