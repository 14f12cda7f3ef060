"""A shared ledger remote on gitolite over ssh: each runner its own gitolite user and key,
allowed to write only refs/ledgers/<its ledger id>/ with RW (no rewind, no delete), an
auditor reading everything, and our verifier as the repository's pre-receive hook."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest
from support import gitolite
from support.cli import run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger, ssh_signed_commit_on, unsigned_commit_on

from ledger import replicate
from ledger.replicate import shared

pytestmark = pytest.mark.server

gitolite_server = gitolite.gitolite_server


def ref_of(t: TestLedger) -> str:
    return f"refs/ledgers/{t.ledger.ledger_id}/main"


def held(server: gitolite.Gitolite, ref: str) -> str | None:
    out = git("--git-dir", server.repo_path, "rev-parse", "--verify", "-q", ref, check=False)
    return out.stdout.strip() or None


def runner(
    server: gitolite.Gitolite, tmp_path: Path, user: str, records: int = 3
) -> tuple[TestLedger, dict[str, str]]:
    """A ledger whose runner is gitolite user ``user``, with the fleet as shared remote."""
    t = make_ledger(tmp_path, user, records=records)
    server.add_runner(user, t.ledger.ledger_id)
    replicate.add_remote(t.path, "fleet", server.url, shared=True)
    return t, {"LEDGER_SSH_KEY": str(server.key(user))}


@pytest.fixture()
def two(
    gitolite_server: gitolite.Gitolite, home: Path, tmp_path: Path
) -> tuple[TestLedger, dict[str, str], TestLedger, dict[str, str]]:
    gitolite_server.write_known_hosts(home)
    a, env_a = runner(gitolite_server, tmp_path, f"ra-{tmp_path.name[-12:]}")
    b, env_b = runner(gitolite_server, tmp_path, f"rb-{tmp_path.name[-12:]}", records=5)
    return a, env_a, b, env_b


def test_an_honest_push_from_each_of_two_runners_lands(
    gitolite_server: gitolite.Gitolite,
    two: tuple[TestLedger, dict[str, str], TestLedger, dict[str, str]],
) -> None:
    a, env_a, b, env_b = two
    for t, env in ((a, env_a), (b, env_b)):
        r = run_cli("push", "--ledger", t.path, env=env)
        assert r.code == 0, r.output
        assert f"fleet  pushed {t.seq + 1} records (now at seq {t.seq})" in r.out
        assert held(gitolite_server, ref_of(t)) == t.head
    # The post-receive step confirmed each ledger's verified state (its pin) on the server.
    repo = pygit2.Repository(str(gitolite_server.repo_path))
    for t in (a, b):
        assert shared.read_slot(repo, t.ledger.ledger_id).pinned == t.ledger.genesis_id
    a.append(2)
    r = run_cli("push", "--ledger", a.path, env=env_a)
    assert r.code == 0 and "pushed 2 records" in r.out, r.output
    f = run_cli("verify", "--remotes", "--ledger", a.path, env=env_a)
    assert f.code == 0, f.output
    # The auditor reads every ledger and writes none.
    ls = git("ls-remote", gitolite_server.url, env=gitolite_server.git_env("auditor"))
    assert f"{a.head}\t{ref_of(a)}" in ls.stdout and f"{b.head}\t{ref_of(b)}" in ls.stdout
    denied = git(
        "push", gitolite_server.url, f"main:{ref_of(a)}",
        cwd=a.path, env=gitolite_server.git_env("auditor"), check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and "DENIED" in denied.stderr, denied.stderr
    # A key gitolite does not know gets nowhere.
    stranger = run_cli(
        "push", "--ledger", a.path, env={"LEDGER_SSH_KEY": str(gitolite_server.key("nobody"))}
    )
    assert stranger.code == 8 and "auth failed" in stranger.out, stranger.output


def test_runner_a_cannot_write_runner_bs_ref_nor_rewind_or_delete_its_own(
    gitolite_server: gitolite.Gitolite,
    two: tuple[TestLedger, dict[str, str], TestLedger, dict[str, str]],
    tmp_path: Path,
) -> None:
    a, env_a, b, env_b = two
    for t, env in ((a, env_a), (b, env_b)):
        assert run_cli("push", "--ledger", t.path, env=env).code == 0
    user_a = next(u for u, lid in gitolite_server.runners.items() if lid == a.ledger.ledger_id)
    as_a = gitolite_server.git_env(user_a)
    # B's genuine next records, pushed by A: our hook finds the chain good, gitolite's
    # per-ref rule refuses the writer.
    b.append(2)
    r = git("push", gitolite_server.url, f"main:{ref_of(b)}", cwd=b.path, env=as_a, check=False)
    assert r.returncode != 0, r.stderr
    assert f"W {ref_of(b)} fleet {user_a} DENIED" in r.stderr, r.stderr
    assert held(gitolite_server, ref_of(b)) != b.head
    # That refused update pinned nothing and moved nothing: B's own push lands.
    assert run_cli("push", "--ledger", b.path, env=env_b).code == 0
    assert held(gitolite_server, ref_of(b)) == b.head
    # A rewinds or deletes its own ref: refused.
    good = a.head
    work = tmp_path / "wa"
    git("clone", "-q", a.path, work)
    rewind = git(
        "push", gitolite_server.url, f"+HEAD~1:{ref_of(a)}", cwd=work, env=as_a, check=False
    )
    assert rewind.returncode != 0 and "[rule: fast-forward]" in rewind.stderr, rewind.stderr
    delete = git("push", gitolite_server.url, f":{ref_of(a)}", cwd=work, env=as_a, check=False)
    assert delete.returncode != 0 and "[remote rejected]" in delete.stderr, delete.stderr
    assert held(gitolite_server, ref_of(a)) == good
    # A ref of its own prefix that is not a ledger's main: gitolite allows it, the hook not.
    other = git(
        "push",
        gitolite_server.url,
        f"HEAD:refs/ledgers/{a.ledger.ledger_id}/x",
        cwd=work,
        env=as_a,
        check=False,
    )
    assert other.returncode != 0 and "[rule: shared-ref]" in other.stderr, other.stderr


def test_unsigned_or_untrusted_records_are_refused_in_the_hooks_words(
    gitolite_server: gitolite.Gitolite,
    two: tuple[TestLedger, dict[str, str], TestLedger, dict[str, str]],
    tmp_path: Path,
) -> None:
    a, env_a, _b, _env_b = two
    assert run_cli("push", "--ledger", a.path, env=env_a).code == 0
    good = a.head
    work = tmp_path / "forge"
    git("clone", "-q", a.path, work)
    forged = unsigned_commit_on(work)
    git("push", "-q", "origin", "main", cwd=work)  # into the runner's own ledger directory
    # (a ledger that does not verify is pushed only when told: here, to see the hook refuse it)
    assert run_cli("push", "--ledger", a.path, env=env_a).code == 7
    r = run_cli("push", "--allow-unverified", "--ledger", a.path, env=env_a)
    assert r.code == 8, r.output
    assert f"fleet  rejected: {ref_of(a)}:" in r.out
    assert forged in r.out and "[rule: unsigned]" in r.out
    assert held(gitolite_server, ref_of(a)) == good

    stranger = gitolite_server.key("stranger-signer")
    work2 = tmp_path / "stranger"
    git("clone", "-q", "--branch", "main", str(a.path), work2)
    git("reset", "-q", "--hard", good, cwd=work2)
    signed = ssh_signed_commit_on(work2, stranger)
    user_a = next(u for u, lid in gitolite_server.runners.items() if lid == a.ledger.ledger_id)
    r2 = git(
        "push", gitolite_server.url, f"HEAD:{ref_of(a)}",
        cwd=work2, env=gitolite_server.git_env(user_a), check=False,
    )  # fmt: skip
    assert r2.returncode != 0 and "pre-receive hook declined" in r2.stderr, r2.stderr
    assert signed in r2.stderr
    assert "[rule: untrusted-key]" in r2.stderr or "[rule: bad-signature]" in r2.stderr
    assert held(gitolite_server, ref_of(a)) == good
