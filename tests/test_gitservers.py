"""Smoke tests of the git server fixtures, judged by stock git (no ledger code involved)."""

from __future__ import annotations

from pathlib import Path

import gitservers
import pytest
from gitservers import (
    HTTP_PASSWORD,
    HTTP_USER,
    GitDaemon,
    GitHttpServer,
    SshServer,
    port_closed,
)
from support.gitcmd import git

# The server fixtures (session-scoped servers, per-test repositories).
git_daemon = gitservers.git_daemon
http_server = gitservers.http_server
ssh_server = gitservers.ssh_server
stoppable_git_daemon = gitservers.stoppable_git_daemon

pytestmark = pytest.mark.server


def _work(tmp_path: Path, commits: int = 2) -> Path:
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", work)
    for i in range(commits):
        (work / f"f{i}").write_text(f"{i}\n")
        git("add", ".", cwd=work)
        git("commit", "-q", "-m", f"c{i}", cwd=work)
    return work


def _head(repo: Path, ref: str = "refs/heads/main") -> str:
    return git("rev-parse", ref, cwd=repo).stdout.strip()


def test_git_daemon_push_and_protection(git_daemon: GitDaemon, tmp_path: Path) -> None:
    work = _work(tmp_path)
    url, path = git_daemon.make_repo(protected=True)
    git("push", "-q", url, "main", cwd=work)
    assert _head(path) == _head(work)
    # A rewritten history is refused by receive.denyNonFastForwards, even with --force.
    git("commit", "-q", "--amend", "-m", "rewritten", cwd=work)
    forced = git("push", "--force", url, "main", cwd=work, check=False)
    assert forced.returncode != 0
    assert "non-fast-forward" in forced.stderr
    deleted = git("push", url, ":main", cwd=work, check=False)
    assert deleted.returncode != 0
    assert "deletion prohibited" in deleted.stderr
    assert _head(path) != _head(work)


def test_git_daemon_unprotected_accepts_force(git_daemon: GitDaemon, tmp_path: Path) -> None:
    work = _work(tmp_path)
    url, path = git_daemon.make_repo()
    git("push", "-q", url, "main", cwd=work)
    git("commit", "-q", "--amend", "-m", "rewritten", cwd=work)
    git("push", "-q", "--force", url, "main", cwd=work)
    assert _head(path) == _head(work)


def test_http_push_fetch_and_auth(http_server: GitHttpServer, tmp_path: Path) -> None:
    # Enough data that stock git sends the push chunked and gzip-compressed.
    work = _work(tmp_path, commits=3)
    (work / "big").write_bytes(bytes(range(256)) * 8000)
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "big", cwd=work)
    url, path = http_server.make_repo(protected=True)
    git("push", "-q", url, "main", cwd=work)
    assert _head(path) == _head(work)
    clone = tmp_path / "clone"
    git("clone", "-q", "--bare", url, clone)
    assert _head(clone) == _head(work)

    purl, ppath = http_server.make_private_repo()
    refused = git("push", purl, "main", cwd=work, check=False, env={"GIT_TERMINAL_PROMPT": "0"})
    assert refused.returncode != 0
    name = purl.rsplit("/", 1)[1]
    git("push", "-q", http_server.private_url(name, with_credentials=True), "main", cwd=work)
    assert _head(ppath) == _head(work)
    assert HTTP_USER and HTTP_PASSWORD


def test_ssh_push_with_key_and_known_hosts(ssh_server: SshServer, tmp_path: Path) -> None:
    work = _work(tmp_path)
    url, path = ssh_server.make_repo(protected=True)
    git("push", "-q", url, "main", cwd=work, env=ssh_server.git_env())
    assert _head(path) == _head(work)
    stranger = git(
        "push", url, "main", cwd=work, check=False, env=ssh_server.git_env(ssh_server.other_key)
    )
    assert stranger.returncode != 0
    assert "Permission denied" in stranger.stderr
    known = ssh_server.write_known_hosts(tmp_path / "home")
    assert known.read_text().startswith(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 ")


def test_daemon_stop_and_restart_on_same_port(
    stoppable_git_daemon: GitDaemon, tmp_path: Path
) -> None:
    server = stoppable_git_daemon
    work = _work(tmp_path)
    url, path = server.make_repo()
    port = server.port
    server.stop()
    port_closed(port)
    down = git("push", url, "main", cwd=work, check=False)
    assert down.returncode != 0
    server.start(port)
    git("push", "-q", url, "main", cwd=work)
    assert _head(path) == _head(work)
