"""Remote and clone decisions read only what the user verified or chose, over real git
servers.

Each test is an attack by someone who can write the ledger directory (its config, its refs)
but holds no trusted key and cannot write the user's state directory:

- the remote state is kept under the *verified* ledger id, so a ledger claiming another
  ledger's id (config, or the ``Ledger-Id`` of a forged head) never reads or writes that
  ledger's remote state;
- a remote put into the ledger's config by someone else is unknown: never contacted, never
  counted by ``push --require``, a finding of ``verify --remotes``, until the user trusts it;
- ``ledger clone`` verifies the whole chain before adopting anything, and pins only through
  an explicit anchor, or says that it trusts on first use (exit 14 under ``--require-pin``).
"""

from __future__ import annotations

import json
from pathlib import Path

import gitservers
import pytest
from gitservers import HTTP_PASSWORD, GitDaemon, GitHttpServer
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger, remote_head, unsigned_commit_on

from ledger import replicate
from ledger.errors import LedgerNotFound
from ledger.store import Ledger
from ledger.verify import local

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own state directory (children inherit it through the environment)."""
    d = tmp_path / "state"
    monkeypatch.setenv("LEDGER_STATE_DIR", str(d))
    return d


def served(server: gitservers.GitServer, t: TestLedger, name: str) -> tuple[str, Path]:
    """A protected remote (``ledger remote init``, pinned to t's genesis) on ``server``."""
    path = server.base / f"{name}.git"
    replicate.init_remote(path, genesis=t.ledger.genesis_id)
    return server.url(f"{name}.git"), path


def copy_on(server: gitservers.GitServer, t: TestLedger, name: str) -> tuple[str, Path]:
    """A plain repository on ``server`` holding t's chain (stock git pushes it there)."""
    url, path = server.make_repo(f"{name}.git")
    git("--git-dir", t.path, "push", "-q", str(path), "main:refs/heads/main")
    return url, path


def cli(t: TestLedger, *args: str | Path, env: dict[str, str] | None = None) -> CliResult:
    return run_cli(*args, "--ledger", t.path, env=env)


# --- item 1: the remote state's key -----------------------------------------------------------


def test_remote_state_is_kept_under_the_verified_ledger_id(
    git_daemon: GitDaemon, tmp_path: Path, state_dir: Path
) -> None:
    a = make_ledger(tmp_path, "a")
    b = make_ledger(tmp_path, "b")
    for t in (a, b):
        url, _ = served(git_daemon, t, f"{t.path.name}-{tmp_path.name}")
        assert run_cli("remote", "add", "origin", url, "--ledger", t.path).code == 0
        assert run_cli("push", "--ledger", t.path).code == 0
    a_id, b_id = a.ledger.ledger_id, b.ledger.ledger_id
    b_file = state_dir / "remotes" / f"{b_id}.json"
    b_state = b_file.read_bytes()
    assert (state_dir / "remotes" / f"{a_id}.json").stat().st_mode & 0o777 == 0o600

    # A head forged with stock git, claiming to be a record of ledger b.
    good_main = a.head
    tree = git("--git-dir", a.path, "rev-parse", "main^{tree}").stdout.strip()
    message = f"forged\n\nLedger-Id: {b_id}\nLedger-Seq: {a.seq + 1}\n"
    forged = git(
        "--git-dir", a.path, "commit-tree", tree, "-p", good_main, "-m", message
    ).stdout.strip()
    git("--git-dir", a.path, "update-ref", "refs/heads/main", forged)
    # (push --allow-unverified: past the chain's own verification, to the id check)
    for command in (
        ("push", "--allow-unverified"),
        ("fetch",),
        ("remote", "add", "x", str(tmp_path / "x.git")),
    ):
        r = run_cli(*command, "--ledger", a.path)
        assert r.code == 7, (command, r.output)
        assert b_id in r.err and a_id in r.err and "Ledger-Id of its head" in r.err, r.output
    # status reads only the verified chain: refused, or shown under a warning.
    assert run_cli("status", "--ledger", a.path).code == 7
    st = run_cli("status", "--allow-unverified", "--ledger", a.path)
    assert st.code == 0 and "could not be read" in st.out, st.output
    assert b_file.read_bytes() == b_state  # b's state was neither read into a's nor changed

    # The config claiming b's id: refused the same way.
    git("--git-dir", a.path, "update-ref", "refs/heads/main", good_main)
    git("--git-dir", a.path, "config", "ledger.id", b_id)
    r = run_cli("push", "--ledger", a.path)
    assert r.code == 7 and "ledger.id" in r.err and b_id in r.err, r.output
    assert b_file.read_bytes() == b_state
    git("--git-dir", a.path, "config", "ledger.id", a_id)
    assert run_cli("push", "--ledger", a.path).code == 0


def test_a_copy_never_verified_here_has_no_remote_state_until_verified(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    url, path = served(git_daemon, t, f"o-{tmp_path.name}")
    assert cli(t, "remote", "add", "origin", url).code == 0
    assert cli(t, "push").code == 0
    elsewhere = {"LEDGER_STATE_DIR": str(tmp_path / "elsewhere")}  # another user's state
    r = cli(t, "push", env=elsewhere)
    assert r.code == 14 and "never verified on this machine" in r.err, r.output
    assert cli(t, "verify", env=elsewhere).code == 0  # trust on first use, said so
    # Verified now; but origin was not added by this user: not contacted, not counted.
    t.append()
    r = cli(t, "push", env=elsewhere)
    assert r.code == 8 and "unknown remote" in r.out, r.output
    assert remote_head(path) != t.head
    assert cli(t, "remote", "trust", "origin", env=elsewhere).code == 0
    assert cli(t, "push", env=elsewhere).code == 0
    assert remote_head(path) == t.head


# --- item 2: remotes this user added ------------------------------------------------------


def test_a_remote_someone_else_added_is_unknown_until_trusted(
    git_daemon: GitDaemon, tmp_path: Path, state_dir: Path
) -> None:
    t = make_ledger(tmp_path)
    good, good_path = served(git_daemon, t, f"good-{tmp_path.name}")
    assert cli(t, "remote", "add", "good", good).code == 0
    assert cli(t, "push").code == 0
    # The attacker's copy, added to the ledger's config with stock git.
    evil, evil_path = copy_on(git_daemon, t, f"evil-{tmp_path.name}")
    git("--git-dir", t.path, "remote", "add", "evil", evil)
    t.append()
    evil_head = remote_head(evil_path)

    r = cli(t, "push", "--require", "2")
    assert r.code == 8, r.output
    assert "evil  unknown remote" in r.out and "ledger remote trust evil" in r.out, r.output
    assert remote_head(evil_path) == evil_head  # never contacted
    assert remote_head(good_path) == t.head
    assert cli(t, "push").code == 8  # 'all' includes it: it does not hold our head
    r = cli(t, "push", "--require", "1")
    assert r.code == 0 and "evil  unknown remote" in r.out, r.output
    j = json.loads(cli(t, "push", "--require", "1", "--json").out)
    assert {o["remote"]: o["status"] for o in j["outcomes"]}["evil"] == "unknown remote"

    v = cli(t, "verify", "--remotes")
    assert v.code == 7 and "FINDING [unknown-remote]" in v.out and "evil" in v.out, v.output
    assert "remote good" in v.out and "in sync" in v.out
    doc = json.loads(cli(t, "verify", "--remotes", "--json").out)
    assert [f["rule"] for f in doc["findings"]] == ["unknown-remote"]
    f = cli(t, "fetch")
    assert f.code == 8 and "unknown remote" in f.err, f.output
    st = cli(t, "status")
    assert st.code == 0 and "remote evil: never pushed or fetched" in st.out, st.output
    assert "not added by you" in st.out
    kept = (state_dir / "remotes" / f"{t.ledger.ledger_id}.json").read_text()
    assert evil not in kept  # nothing is kept about a remote the user did not add
    assert remote_head(evil_path) == evil_head

    # The user accepts it (after checking its URL): counted from now on.
    r = cli(t, "remote", "trust", "evil")
    assert r.code == 0 and evil in r.out, r.output
    assert cli(t, "push", "--require", "2").code == 0
    assert remote_head(evil_path) == t.head
    assert cli(t, "verify", "--remotes").code == 0
    # Removing and adding again with the tool: known; a URL changed behind the user's back
    # is not (pushes do not go there).
    other, other_path = copy_on(git_daemon, t, f"other-{tmp_path.name}")
    git("--git-dir", t.path, "config", "remote.evil.url", other)
    t.append()
    r = cli(t, "push")
    assert r.code == 8 and "evil  unknown remote" in r.out and "URL" in r.out, r.output
    assert remote_head(other_path) != t.head
    assert cli(t, "remote", "trust", "nope").code == 8


def test_a_password_in_a_known_url_is_kept_only_as_a_salted_digest(
    http_server: GitHttpServer, tmp_path: Path, state_dir: Path
) -> None:
    t = make_ledger(tmp_path)
    _, path = http_server.make_private_repo(f"p-{tmp_path.name}.git")
    url = http_server.private_url(f"p-{tmp_path.name}.git", with_credentials=True)
    assert cli(t, "remote", "add", "web", url).code == 0
    r = cli(t, "push")
    assert r.code == 0, r.output
    assert remote_head(path) == t.head
    kept = (state_dir / "remotes" / f"{t.ledger.ledger_id}.json").read_text()
    assert HTTP_PASSWORD not in kept and "url_sha256" in kept
    # Another password in the config (the masked URL is the same): not the user's URL.
    git("--git-dir", t.path, "config", "remote.web.url", url.replace(HTTP_PASSWORD, "guess"))
    t.append()
    r = cli(t, "push")
    assert r.code == 8 and "unknown remote" in r.out and HTTP_PASSWORD not in r.output, r.output


# --- item 3: clones -------------------------------------------------------------------------


def test_clone_adopts_only_a_verified_chain_and_pins_only_through_an_anchor(
    git_daemon: GitDaemon, tmp_path: Path, state_dir: Path
) -> None:
    t = make_ledger(tmp_path)
    url, path = copy_on(git_daemon, t, f"c-{tmp_path.name}")
    lid, genesis = t.ledger.ledger_id, t.ledger.genesis_id
    auditor = tmp_path / "auditor"
    env = {"LEDGER_STATE_DIR": str(auditor)}
    audit = tmp_path / "audit"

    def pinned() -> str:
        pins = auditor / "pins"
        return pins.read_text() if pins.exists() else ""

    # An auditor's pin file naming another genesis for this ledger id: an impostor.
    pins = tmp_path / "pins"
    pins.write_text(f"{lid} {'a' * 40}\n")
    r = run_cli("clone", url, audit, "--pins", pins, env=env)
    assert r.code == 7 and "genesis-mismatch" in r.err and lid in r.err, r.output
    assert not audit.exists() and lid not in pinned()
    r = run_cli("clone", url, audit, env={**env, "LEDGER_TRUST_GENESIS": "b" * 40})
    assert r.code == 7 and "not at the trusted genesis" in r.err, r.output
    assert not audit.exists()

    # No pin anywhere, and the auditor requires one: nothing kept, nothing pinned.
    r = run_cli("clone", url, audit, "--require-pin", env=env)
    assert r.code == 14 and genesis in r.err and "Nothing was kept" in r.err, r.output
    assert not audit.exists() and lid not in pinned()
    assert not (auditor / "remotes").exists()

    # The right pin file: pinned through it, no trust on first use.
    pins.write_text(f"# from the owner\n{lid} {genesis}\n")
    r = run_cli("clone", url, audit, "--pins", pins, "--require-pin", env=env)
    assert r.code == 0, r.output
    assert "genesis matches the pin (pin file)" in r.out and "NOT PINNED" not in r.err
    assert f"{lid} {genesis}" in pinned()
    copy = Ledger.open(audit)
    assert (copy.ledger_id, copy.genesis_id) == (lid, genesis)
    # origin is the user's own remote of the copy, known and in sync.
    v = run_cli("verify", "--remotes", "--require-pin", "--ledger", audit, env=env)
    assert v.code == 0 and "remote origin" in v.out and "in sync" in v.out, v.output

    # Nothing given: trust on first use, said prominently.
    fresh = {"LEDGER_STATE_DIR": str(tmp_path / "fresh")}
    r = run_cli("clone", url, tmp_path / "tofu", env=fresh)
    assert r.code == 0 and "NOT PINNED" in r.err and "trusted on first use" in r.err, r.output

    # A chain that does not verify: nothing adopted, nothing pinned, findings named.
    work = tmp_path / "work"
    git("clone", "-q", path, work)
    forged = unsigned_commit_on(work)
    git("push", "-q", "origin", "main", cwd=work)
    other = {"LEDGER_STATE_DIR": str(tmp_path / "other")}
    r = run_cli("clone", url, tmp_path / "bad", env=other)
    assert r.code == 7 and forged in r.err and "unsigned" in r.err, r.output
    assert not (tmp_path / "bad").exists()
    assert not (tmp_path / "other" / "pins").exists()
    assert not (tmp_path / "other" / "remotes").exists()


def test_adopt_writes_the_config_only_from_the_verified_head(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    before = t.head
    result = local.verify_local(t.path).result
    assert result.state is not None
    t.append()  # main moved past what was verified
    git("--git-dir", t.path, "config", "ledger.id", "f" * 32)
    with pytest.raises(LedgerNotFound, match=before):
        Ledger.adopt(t.path, result.state)
    assert git("--git-dir", t.path, "config", "ledger.id").stdout.strip() == "f" * 32
    git("--git-dir", t.path, "update-ref", "refs/heads/main", before)
    adopted = Ledger.adopt(t.path, result.state)
    assert adopted.ledger_id == result.state.ledger_id == t.ledger.ledger_id


# --- other remote decisions ---------------------------------------------------------------


def test_remote_init_pins_the_pinned_genesis_not_the_config(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    git("--git-dir", t.path, "config", "ledger.genesis", "f" * 40)  # the attacker's edit
    r = cli(t, "remote", "init", tmp_path / "prot.git")
    assert r.code == 0, r.output
    pinned = git("--git-dir", tmp_path / "prot.git", "config", "ledger.genesis").stdout.strip()
    assert pinned == t.ledger.genesis_id and "f" * 40 not in r.out
    unpinned = make_ledger(tmp_path, "fresh")
    r = cli(unpinned, "remote", "init", tmp_path / "p2.git", env={"LEDGER_STATE_DIR": "/nope"})
    assert r.code in (6, 14) and not (tmp_path / "p2.git").exists(), r.output


def test_a_changed_url_is_compared_without_the_users_credentials(
    http_server: GitHttpServer, tmp_path: Path
) -> None:
    t = make_ledger(tmp_path)
    creds = {"LEDGER_HTTP_USER": gitservers.HTTP_USER, "LEDGER_HTTP_PASSWORD": HTTP_PASSWORD}
    url, _ = http_server.make_private_repo(f"mine-{tmp_path.name}.git")
    assert cli(t, "remote", "add", "web", url).code == 0
    assert cli(t, "push", env=creds).code == 0
    assert cli(t, "fetch", env=creds).code == 0
    # Pointed at another server path that asks for credentials (the attacker's, say).
    other, _ = http_server.make_private_repo(f"theirs-{tmp_path.name}.git")
    git("--git-dir", t.path, "config", "remote.web.url", other)
    f = cli(t, "fetch", "--json", env=creds)
    assert f.code == 8, f.output
    state = json.loads(f.out)["remotes"][0]
    assert state["condition"] == "url changed", state
    assert "without your credentials" in state["message"] and "auth" in state["message"]
