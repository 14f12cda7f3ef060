"""Replication without servers: URLs, remote config, path remotes, divergence, rollback,
status, the background pusher, verified clones and the pre-receive check (run by stock git,
which does run hooks when it pushes to a local path)."""

from __future__ import annotations

import json
import os
import site
import subprocess
from pathlib import Path

import pygit2
import pytest
from support.cli import run_cli
from support.gitcmd import git
from support.replicas import (
    make_ledger,
    plain_bare,
    remote_head,
    ssh_signed_commit_on,
    unsigned_commit_on,
)

from ledger import replicate
from ledger.errors import InputError, LedgerExists, RemoteError, VerificationFailed
from ledger.replicate import protect, transport
from ledger.store import Ledger
from ledger.verify import warmup

# --- URLs and remote configuration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "transport"),
    [
        ("/srv/ledger.git", "path"),
        ("relative/dir", "path"),
        ("file:///srv/ledger.git", "file"),
        ("git://example.com/ledger.git", "git"),
        ("git://127.0.0.1:9418/ledger.git", "git"),
        ("ssh://git@example.com:2222/srv/ledger.git", "ssh"),
        ("git@github.com:acme/ledger.git", "ssh"),
        ("example.com:ledger.git", "ssh"),
        ("http://127.0.0.1:8080/ledger.git", "http"),
        ("https://gitlab.example.com/acme/ledger.git", "https"),
    ],
)
def test_classify_valid_urls(url: str, transport: str) -> None:
    assert replicate.classify_url(url) == transport


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("", "empty"),
        ("ftp://example.com/x.git", "unsupported scheme"),
        ("http://", "host"),
        ("https:///path.git", "host"),
        ("ssh://host:notaport/x.git", "port"),
        ("git://example.com/", "no repository path"),
        ("https://exa mple.com/x.git", "white space"),
        ("file://otherhost/x.git", "absolute local path"),
        ("ssh://u:pw@example.com/x.git", "password"),
        ("git://bad_host!/x", "host"),
        ("/tmp/x\n.git", "control"),
        ("http://[::1", "malformed"),
        ("https://u:pw@[::1/x.git", "malformed"),
        ("git://[zz]/x.git", "malformed"),
    ],
)
def test_classify_rejects_malformed_urls(url: str, words: str) -> None:
    with pytest.raises(InputError) as info:
        replicate.classify_url(url)
    assert words in info.value.message
    assert info.value.hint


def test_a_malformed_url_is_invalid_input_in_every_command_that_takes_one(
    tmp_path: Path,
) -> None:
    # Python's URL parser raises ValueError for an unbalanced IPv6 bracket: each command
    # names the URL's problem (exit 3), never "unexpected failure".
    t = make_ledger(tmp_path, records=0)
    url = "http://[::1"
    for args in (
        ["fleet", "clone", url, tmp_path / "copy"],
        ["fleet", "remote", "add", "m3", url, "--fleet", tmp_path / "copy"],
        ["remote", "add", "fl5", url, "--shared", "--ledger", t.path],
        ["remote", "add", "fl5", url, "--ledger", t.path],
        ["clone", url, tmp_path / "clone"],
    ):
        r = run_cli(*args)
        assert r.code == 3 and f"the remote URL '{url}' is malformed" in r.err, (args, r.output)
        assert "unexpected" not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "copy").exists() and not (tmp_path / "clone").exists()


def test_commands_that_need_a_ledger_say_first_that_a_repository_is_not_one(
    tmp_path: Path,
) -> None:
    # A fleet copy, a plain bare repository and a work tree are no ledger: every command
    # says so (exit 5), never a later symptom ("genesis not pinned ... run 'ledger verify'",
    # exit 14; "no remotes", exit 8).
    shared = tmp_path / "s.git"
    assert run_cli("remote", "init", shared, "--shared").code == 0
    copy = tmp_path / "copy.git"
    assert run_cli("fleet", "clone", shared, copy).code == 0, "(an empty shared remote)"
    plain, work = tmp_path / "plain.git", tmp_path / "work"
    git("init", "-q", "--bare", plain)
    git("init", "-q", work)
    for where, said in (
        (copy, f"{copy} is a fleet copy (ledger fleet clone), not a ledger"),
        (plain, f"{plain} is a git repository but not a ledger"),
        (work, f"{work} is a git work tree, not a ledger"),
    ):
        for args in (
            ["remote", "add", "x", shared, "--shared"],
            ["remote", "list"],
            ["push"],
            ["fetch"],
            ["status"],
            ["verify"],
        ):
            r = run_cli(*args, "--ledger", where)
            assert r.code == 5 and said in r.err, (args, r.output)
            assert "\n" not in r.err.strip()


def test_remote_add_list_remove_and_bad_input(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, records=0)
    r = run_cli("remote", "add", "backup", tmp_path / "backup.git", "--ledger", t.path)
    assert r.code == 0, r.output
    assert "local path" in r.err and "pre-receive" in r.err  # warned: rules cannot run there
    r = run_cli("remote", "add", "gh", "git@github.com:acme/ledger.git", "--ledger", t.path)
    assert r.code == 0 and "warning" not in r.err
    # Stored as ordinary git remotes, readable by stock git.
    cfg = git("--git-dir", t.path, "config", "--get-regexp", r"^remote\.").stdout
    assert f"remote.backup.url {tmp_path / 'backup.git'}" in cfg
    assert "remote.gh.url git@github.com:acme/ledger.git" in cfg
    assert "remote.gh.fetch +refs/heads/main:refs/remotes/gh/main" in cfg
    assert "refs/heads/main:refs/heads/main" not in cfg

    r = run_cli("remote", "list", "--json", "--ledger", t.path)
    listed = {x["name"]: x for x in json.loads(r.out)}
    assert listed["gh"]["transport"] == "ssh" and listed["gh"]["warning"] is None
    assert listed["backup"]["warning"]

    bad = run_cli("remote", "add", "x", "ftp://example.com/l.git", "--ledger", t.path)
    assert bad.code == 3 and "unsupported scheme 'ftp'" in bad.err
    dup = run_cli("remote", "add", "gh", "/tmp/other.git", "--ledger", t.path)
    assert dup.code == 3 and "already exists" in dup.err
    badname = run_cli("remote", "add", "-x", "/tmp/other.git", "--ledger", t.path)
    assert badname.code != 0
    unknown = run_cli("remote", "remove", "nope", "--ledger", t.path)
    assert unknown.code == 8 and "no remote named 'nope'" in unknown.err
    push_unknown = run_cli("push", "nope", "--ledger", t.path)
    assert push_unknown.code == 8 and "no remote named 'nope'" in push_unknown.err

    assert run_cli("remote", "remove", "gh", "--ledger", t.path).code == 0
    assert [x.name for x in replicate.list_remotes(t.path)] == ["backup"]
    # Nothing in the ledger itself changed.
    assert t.ledger.head() is not None and t.seq == 0


# --- pushing to path remotes -----------------------------------------------------------------


def test_push_to_several_path_remotes_then_up_to_date(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remotes = [plain_bare(tmp_path / f"r{i}.git") for i in range(3)]
    for i, r in enumerate(remotes):
        replicate.add_remote(t.path, f"r{i}", str(r))
    summary = replicate.push(t.path)
    assert [o.status for o in summary.outcomes] == [replicate.PushStatus.PUSHED] * 3
    assert all(o.records == 4 for o in summary.outcomes)  # genesis + 3
    assert all(remote_head(r) == t.head for r in remotes)
    assert len(summary.warnings) == 3  # every one is a direct-write path remote
    summary.check(None)

    again = replicate.push(t.path)
    assert [o.status for o in again.outcomes] == [replicate.PushStatus.UP_TO_DATE] * 3
    t.append(2)
    third = replicate.push(t.path, ["r1"])
    assert [(o.remote, o.records) for o in third.outcomes] == [("r1", 2)]
    assert remote_head(remotes[1]) == t.head and remote_head(remotes[0]) != t.head

    state = replicate.read_remote_state(t.path)
    assert state["r1"]["head"] == t.head and state["r1"]["seq"] == 5
    assert git("--git-dir", t.path, "rev-parse", "refs/remotes/r1/main").stdout.strip() == t.head


def test_push_cli_lines_and_require(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    plain_bare(tmp_path / "ok.git")
    replicate.add_remote(t.path, "ok", str(tmp_path / "ok.git"))
    replicate.add_remote(t.path, "gone", str(tmp_path / "missing" / "nothing.git"))
    r = run_cli("push", "--ledger", t.path)
    assert r.code == 8, r.output
    assert "ok    pushed 4 records (now at seq 3)" in r.out
    assert "gone  unreachable" in r.out
    assert "only 1 of 2 remote(s) hold our head" in r.err
    r = run_cli("push", "--require", "1", "--ledger", t.path)
    assert r.code == 0, r.output
    assert "ok    up to date (seq 3)" in r.out
    r = run_cli("push", "--require", "3", "--ledger", t.path)
    assert r.code == 8 and "cannot be met" in r.err
    r = run_cli("push", "--require", "many", "--ledger", t.path)
    assert r.code == 2
    r = run_cli("push", "--json", "--require", "1", "--ledger", t.path)
    data = json.loads(r.out)
    assert {o["remote"]: o["status"] for o in data["outcomes"]} == {
        "ok": "up to date",
        "gone": "unreachable",
    }
    # Nothing was lost locally.
    assert t.seq == 3


def test_push_reports_divergence_and_overwrites_nothing(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    # Someone rewrites the remote on its disk: another ledger's chain replaces main.
    other = make_ledger(tmp_path, "other", records=2)
    git("--git-dir", other.path, "push", "-q", "--force", remote, "main", cwd=tmp_path)
    rewritten = remote_head(remote)
    assert rewritten == other.head
    t.append()
    local_before = t.head

    r = run_cli("push", "--ledger", t.path)
    assert r.code == 8, r.output
    assert "DIVERGED" in r.out
    assert rewritten in r.out and local_before in r.out
    assert remote_head(remote) == rewritten  # not overwritten
    assert t.head == local_before  # our main untouched

    f = run_cli("fetch", "--ledger", t.path)
    assert f.code == 8
    assert "DIVERGED" in f.out and rewritten in f.out
    states = replicate.check_remotes(t.path)
    assert states[0].condition is replicate.RemoteCondition.DIVERGED
    assert states[0].rule == "diverged"
    # The evidence is kept in the tracking ref; our main is unchanged.
    tracking = git("--git-dir", t.path, "rev-parse", "refs/remotes/r/main").stdout.strip()
    assert tracking == rewritten
    assert t.head == local_before


def test_fetch_reports_rollback(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, records=4)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    assert [s.condition for s in replicate.check_remotes(t.path)] == [
        replicate.RemoteCondition.IN_SYNC
    ]
    older = t.ledger.commit_for_seq(2)
    git("--git-dir", remote, "update-ref", "refs/heads/main", older)  # on the server's disk

    r = run_cli("fetch", "--ledger", t.path)
    assert r.code == 8, r.output
    assert "ROLLBACK" in r.out and "went back" in r.out and older in r.out
    # It stays reported: the remembered head is not replaced by the rolled-back one.
    again = replicate.check_remotes(t.path)
    assert again[0].condition is replicate.RemoteCondition.ROLLBACK
    assert replicate.read_remote_state(t.path)["r"]["head"] == t.head
    # A push restores the records, and says loudly that the remote had gone back.
    summary = replicate.push(t.path)
    assert summary.outcomes[0].status is replicate.PushStatus.PUSHED
    assert summary.outcomes[0].rollback and "went back" in summary.outcomes[0].rollback
    with pytest.raises(RemoteError):
        summary.check(None)
    assert remote_head(remote) == t.head


def test_remote_ahead_is_verified_and_never_pulled_into_main(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    # A second copy (same key) appends and pushes: the remote is now ahead of us.
    copy = replicate.clone(str(remote), tmp_path / "copy", trust_genesis=t.ledger.genesis_id)
    other = Ledger.open(copy.path)
    other.append("event", {"message": "from the copy", "data": None}, key=t.key)
    replicate.push(copy.path, ["origin"]).check(None)
    ahead_head = remote_head(remote)

    states = replicate.check_remotes(t.path)
    assert states[0].condition is replicate.RemoteCondition.AHEAD
    assert states[0].ahead == 1 and "verify" in states[0].message
    summary = replicate.push(t.path)
    assert summary.outcomes[0].status is replicate.PushStatus.AHEAD
    assert summary.outcomes[0].holds_head
    assert remote_head(remote) == ahead_head
    assert t.head != ahead_head  # our main was not moved


def test_status_shows_lag_and_unfinished_runs(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.add_remote(t.path, "never", str(tmp_path / "never.git"))
    replicate.push(t.path, ["r"]).check(None)
    t.append(2)
    st = replicate.status(t.path)
    assert st.seq == 5
    lag = {r.name: (r.last_seq, r.behind) for r in st.remotes}
    assert lag == {"r": (3, 2), "never": (None, 6)}
    r = run_cli("status", "--ledger", t.path)
    assert r.code == 0, r.output
    assert f"head: {t.head} (seq 5)" in r.out
    assert "remote r: at seq 3" in r.out and "2 record(s) behind" in r.out
    assert "remote never: never pushed or fetched, 6 record(s) behind" in r.out
    assert "unfinished runs: none" in r.out
    data = json.loads(run_cli("status", "--json", "--ledger", t.path).out)
    assert data["seq"] == 5 and data["unfinished_runs"] == []


# --- background pusher ------------------------------------------------------------------------


def test_background_pusher_coalesces_and_survives_a_dead_remote(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, records=0)
    good = plain_bare(tmp_path / "good.git")
    replicate.add_remote(t.path, "good", str(good))
    replicate.add_remote(t.path, "dead", str(tmp_path / "no" / "such.git"))
    attempts: list[replicate.PushOutcome] = []
    pusher = replicate.BackgroundPusher(t.path, on_outcome=attempts.append).start()
    for _ in range(15):
        pusher.notify(t.append())
    summary = pusher.close(timeout=30)
    by = {o.remote: o for o in summary.outcomes}
    assert by["good"].status in (replicate.PushStatus.PUSHED, replicate.PushStatus.UP_TO_DATE)
    assert remote_head(good) == t.head
    assert by["dead"].status is replicate.PushStatus.UNREACHABLE
    good_attempts = [a for a in attempts if a.remote == "good"]
    assert 1 <= len(good_attempts) <= 15
    assert summary.head == t.head and summary.seq == 15
    # The pusher never raised; the local ledger has every record.
    assert t.seq == 15
    assert replicate.status(t.path).remotes[1].behind == 0  # "good" sorts after "dead"


def test_background_pusher_with_no_ledger_never_raises(tmp_path: Path) -> None:
    pusher = replicate.BackgroundPusher(tmp_path / "nothing").start()
    pusher.notify("0" * 40)
    summary = pusher.close(timeout=5)
    assert summary.outcomes == [] and summary.warnings  # the problem is reported, not raised


# --- clone ------------------------------------------------------------------------------------


def test_clone_verifies_and_pins_genesis(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)

    r = run_cli("clone", remote, tmp_path / "audit", "--trust-genesis", t.ledger.genesis_id)
    assert r.code == 0, r.output
    assert f"genesis: {t.ledger.genesis_id}" in r.out
    copy = Ledger.open(tmp_path / "audit")
    assert copy.head() == t.ledger.head() and copy.genesis_id == t.ledger.genesis_id
    assert git("--git-dir", tmp_path / "audit", "fsck", "--strict").returncode == 0

    wrong = "f" * 40
    r = run_cli("clone", remote, tmp_path / "audit2", "--trust-genesis", wrong)
    assert r.code == 7 and "not at the trusted genesis" in r.err
    assert not (tmp_path / "audit2").exists()

    r = run_cli("clone", remote, tmp_path / "audit3")  # this machine pinned it ('init')
    assert r.code == 0 and "matches the pin (this machine)" in r.out, r.output
    elsewhere = {"LEDGER_STATE_DIR": str(tmp_path / "elsewhere")}
    r = run_cli("clone", remote, tmp_path / "audit4", env=elsewhere)
    assert r.code == 0 and "NOT PINNED" in r.err and "trusted on first use" in r.err

    with pytest.raises(LedgerExists):
        replicate.clone(str(remote), tmp_path / "audit")


def test_a_clone_has_the_seq_index_appends_would_have_written(tmp_path: Path) -> None:
    """The verified chain's seq -> commit index is written on arrival, so the clone's next
    'ledger verify' plans its workers from it instead of walking the chain back first."""
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    replicate.clone(str(remote), tmp_path / "audit", trust_genesis=t.ledger.genesis_id)
    chain = git("--git-dir", tmp_path / "audit", "rev-list", "--first-parent", "--reverse", "main")
    ids = chain.stdout.split()
    assert len(ids) > 3
    index = (tmp_path / "audit" / "ledger-state" / "seq-index").read_bytes()
    assert index == b"".join(bytes.fromhex(oid) for oid in ids)
    assert warmup.planned_chain(tmp_path / "audit", ids[-1], len(ids)) == ids


def test_a_clone_is_protected_like_a_new_ledger(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    replicate.clone(str(remote), tmp_path / "audit", trust_genesis=t.ledger.genesis_id)
    cfg = git("--git-dir", tmp_path / "audit", "config", "--list").stdout.splitlines()
    for key in (
        "receive.denynonfastforwards=true",
        "receive.denydeletes=true",
        "receive.fsckobjects=true",
        "transfer.fsckobjects=true",
        "core.logallrefupdates=always",
        "gc.auto=0",
    ):
        assert key in cfg
    remote_cfg = replicate.init_remote(tmp_path / "prot.git")
    cfg = git("--git-dir", remote_cfg, "config", "--list").stdout.splitlines()
    assert "transfer.fsckobjects=true" in cfg
    assert not any(line.startswith("gc.auto=") for line in cfg)  # pushes leave loose objects


def test_clone_refuses_a_tampered_remote(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    replicate.push(t.path).check(None)
    work = tmp_path / "work"
    git("clone", "-q", remote, work)
    forged = unsigned_commit_on(work)
    git("push", "-q", "origin", "main", cwd=work)  # an unprotected remote takes it
    with pytest.raises(VerificationFailed) as info:
        replicate.clone(str(remote), tmp_path / "audit", trust_genesis=t.ledger.genesis_id)
    assert forged in info.value.message and "unsigned" in info.value.message
    assert not (tmp_path / "audit").exists()
    r = run_cli("clone", remote, tmp_path / "audit")
    assert r.code == 7 and forged in r.err


# --- protected remotes and the pre-receive check (hooks run by stock git) --------------------


def test_remote_init_is_protected(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    r = run_cli("remote", "init", tmp_path / "prot.git", "--ledger", t.path)
    assert r.code == 0, r.output
    cfg = git("--git-dir", tmp_path / "prot.git", "config", "--list").stdout
    for key in (
        "receive.denynonfastforwards=true",
        "receive.denydeletes=true",
        "receive.fsckobjects=true",
        f"ledger.genesis={t.ledger.genesis_id}",
    ):
        assert key in cfg
    hook = tmp_path / "prot.git" / "hooks" / "pre-receive"
    assert os.access(hook, os.X_OK)
    assert "-m ledger.hook pre-receive" in hook.read_text()
    again = run_cli("remote", "init", tmp_path / "prot.git", "--ledger", t.path)
    assert again.code == 5
    bad = run_cli("remote", "init", tmp_path / "p2.git", "--trust-genesis", "abc")
    assert bad.code == 3


def test_hook_script_puts_the_package_first_on_pythonpath_unless_site_has_it(
    tmp_path: Path,
) -> None:
    home = tmp_path / "it's here"
    home.mkdir()
    script = protect.hook_script("/opt/py 3/python", home)
    assert "exec '/opt/py 3/python' -m ledger.hook pre-receive" in script
    quoted = "'" + str(home.resolve()).replace("'", "'\"'\"'") + "'"
    assert f"PYTHONPATH={quoted}${{PYTHONPATH:+:$PYTHONPATH}}\nexport PYTHONPATH\n" in script
    ran = subprocess.run(
        ["sh", "-c", script.replace("exec '/opt/py 3/python' -m", 'printf %s "$PYTHONPATH" #')],
        env={"PYTHONPATH": "/elsewhere"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout == f"{home.resolve()}:/elsewhere"
    site_dir = Path(site.getsitepackages()[0])
    assert "PYTHONPATH" not in protect.hook_script("/usr/bin/python3", site_dir)


def test_pre_receive_accepts_the_ledger_and_rejects_forgeries(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    prot = replicate.init_remote(tmp_path / "prot.git", genesis=t.ledger.genesis_id)
    # Stock git pushing to a local path runs receive-pack, so the hook and rules apply.
    ok = git("--git-dir", t.path, "push", prot, "main", check=False)
    assert ok.returncode == 0, ok.stderr
    assert "accepted refs/heads/main" in ok.stderr
    assert remote_head(prot) == t.head

    work = tmp_path / "work"
    git("clone", "-q", prot, work)
    forged = unsigned_commit_on(work)
    r = git("push", "origin", "main", cwd=work, check=False)
    assert r.returncode != 0
    assert "pre-receive hook declined" in r.stderr
    assert forged in r.stderr and "[rule: unsigned]" in r.stderr
    assert remote_head(prot) == t.head

    other = git("push", "origin", f"{t.head}:refs/heads/other", cwd=work, check=False)
    assert other.returncode != 0 and "only refs/heads/main" in other.stderr

    # A different ledger is refused: as a rewrite here, by its genesis on a fresh remote.
    stranger = make_ledger(tmp_path, "stranger", records=1)
    r = git("--git-dir", stranger.path, "push", "--force", prot, "main", check=False)
    assert r.returncode != 0 and "[rule: fast-forward]" in r.stderr
    assert remote_head(prot) == t.head
    fresh = replicate.init_remote(tmp_path / "fresh.git", genesis=t.ledger.genesis_id)
    r = git("--git-dir", stranger.path, "push", fresh, "main", check=False)
    assert r.returncode != 0 and "[rule: genesis-mismatch]" in r.stderr
    assert stranger.ledger.genesis_id in r.stderr and remote_head(fresh) is None

    # The next genuine records are accepted (verified incrementally from the saved state).
    t.append(2)
    ok = git("--git-dir", t.path, "push", prot, "main", check=False)
    assert ok.returncode == 0, ok.stderr
    assert remote_head(prot) == t.head


def test_pre_receive_pins_genesis_on_first_push(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, records=1)
    prot = replicate.init_remote(tmp_path / "prot.git")
    ok = git("--git-dir", t.path, "push", prot, "main", check=False)
    assert ok.returncode == 0, ok.stderr
    assert f"pinned genesis {t.ledger.genesis_id}" in ok.stderr
    pinned = git("--git-dir", prot, "config", "ledger.genesis").stdout.strip()
    assert pinned == t.ledger.genesis_id


def test_pre_receive_rejects_a_commit_signed_by_an_unlisted_key(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    prot = replicate.init_remote(tmp_path / "prot.git", genesis=t.ledger.genesis_id)
    git("--git-dir", t.path, "push", "-q", prot, "main")
    stranger_key = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger_key)], check=True
    )
    work = tmp_path / "work"
    git("clone", "-q", prot, work)
    forged = ssh_signed_commit_on(work, stranger_key)
    r = git("push", "origin", "main", cwd=work, check=False)
    assert r.returncode != 0
    assert forged in r.stderr
    assert "untrusted-key" in r.stderr or "bad-signature" in r.stderr
    assert remote_head(prot) == t.head


def test_hook_fails_closed_outside_a_repository(tmp_path: Path) -> None:
    r = run_cli(
        "hook", "pre-receive", cwd=tmp_path, input=f"{'0' * 40} {'1' * 40} refs/heads/main\n"
    )
    assert r.code != 0


def test_timeouts_are_read_from_the_environment_only_by_credentials_from_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creds = replicate.Credentials.from_env(
        environ={"LEDGER_REMOTE_CONNECT_TIMEOUT": "3", "LEDGER_REMOTE_TIMEOUT": "7.5"}
    )
    assert (creds.connect_timeout, creds.io_timeout) == (3.0, 7.5)
    monkeypatch.setenv("LEDGER_REMOTE_TIMEOUT", "99")  # the library itself does not look
    try:
        transport.configure(creds)
        settings = pygit2.settings
        assert (settings.server_connect_timeout, settings.server_timeout) == (3000, 7500)
    finally:
        transport.configure(replicate.Credentials())
    assert (pygit2.settings.server_connect_timeout, pygit2.settings.server_timeout) == (
        10_000,
        120_000,
    )
    with pytest.raises(InputError, match="LEDGER_REMOTE_TIMEOUT='soon' is not a number"):
        replicate.Credentials.from_env(environ={"LEDGER_REMOTE_TIMEOUT": "soon"})


def test_pygit2_remote_api_is_used_for_config(tmp_path: Path) -> None:
    t = make_ledger(tmp_path, records=0)
    replicate.add_remote(t.path, "a", "https://example.com/x.git")
    repo = pygit2.Repository(str(t.path))
    assert repo.remotes["a"].url == "https://example.com/x.git"
    assert repo.remotes["a"].fetch_refspecs == ["+refs/heads/main:refs/remotes/a/main"]


def test_fetch_never_moves_main_even_with_a_hand_made_push_refspec(tmp_path: Path) -> None:
    # libgit2 applies a configured push refspec in reverse on fetch; ledger must not care.
    t = make_ledger(tmp_path)
    remote = plain_bare(tmp_path / "r.git")
    replicate.add_remote(t.path, "r", str(remote))
    git("--git-dir", t.path, "config", "--add", "remote.r.push", "refs/heads/main:refs/heads/main")
    other = make_ledger(tmp_path, "other", records=1)
    git("--git-dir", other.path, "push", "-q", remote, "main")
    mine = t.head
    states = replicate.check_remotes(t.path)
    assert states[0].condition is replicate.RemoteCondition.DIVERGED
    assert t.head == mine
    replicate.remove_remote(t.path, "r")
    assert t.head == mine  # removing a remote never touches our main either


# --- passwords in remote URLs are masked everywhere they are shown -----------

SECRET = "hunter2-s3cr3t-pw"


def _all_files_text(root: Path, *, skip: tuple[str, ...] = ()) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name not in skip}


def test_a_password_in_a_remote_url_is_never_shown_nor_written(tmp_path: Path) -> None:
    from gitservers import free_port

    t = make_ledger(tmp_path)
    port = free_port()
    url = f"https://alice:{SECRET}@127.0.0.1:{port}/private/led.git"
    shown = f"https://alice:***@127.0.0.1:{port}/private/led.git"
    outputs = []

    def cli(*args: str | Path) -> str:
        r = run_cli(*args, "--ledger", t.path, env={"LEDGER_REMOTE_CONNECT_TIMEOUT": "2"})
        outputs.append((args, r.output))
        return r.output

    assert shown in cli("remote", "add", "web", url)
    assert shown in cli("remote", "list")
    listed = json.loads(run_cli("remote", "list", "--json", "--ledger", t.path).out)
    assert listed[0]["url"] == shown
    assert "already exists" in cli("remote", "add", "web", url)  # the error quotes the URL
    cli("remote", "add", "bad", f"https://alice:{SECRET}@/no-host")  # a malformed one
    cli("remote", "add", "bad2", f"https://alice:{SECRET}@host.example/a b")
    cli("push")  # unreachable: nothing listens there
    cli("push", "--json")
    cli("fetch")
    cli("fetch", "--json")
    cli("verify", "--remotes")
    assert shown in cli("verify", "--remotes", "--json")
    cli("status")
    cli("status", "--json")
    report = tmp_path / "report.md"
    run = t.ledger.append("event", {"message": "x", "data": None}, key=t.key)
    cli("report", "--since", "2000-01-01T00:00:00Z", "-o", report)
    assert run.commit_id
    for args, out in outputs:
        assert SECRET not in out, (args, out)
    text = report.read_text()
    assert r"https://alice:\*\*\*@127.0.0.1" in text and SECRET not in text
    # Written in clear only in the git config where the user put it.
    for path, data in _all_files_text(t.path, skip=("config",)).items():
        assert SECRET.encode() not in data, path
    assert SECRET in (t.path / "config").read_text()


def test_mask_url() -> None:
    from ledger.redact import mask_url

    assert mask_url("https://u:pw@h/r") == "https://u:***@h/r"
    assert mask_url("at http://u:p@ss@h:8/x and git://h/x") == "at http://u:***@h:8/x and git://h/x"
    assert mask_url("ssh://git@h/x") == "ssh://git@h/x"
    assert mask_url("git@h:x") == "git@h:x"
    assert mask_url("https://:tok@h/x") == "https://:***@h/x"


# --- no remotes: push and fetch say so, also in JSON -----------------------


def test_push_and_fetch_without_remotes_say_so(tmp_path: Path) -> None:
    t = make_ledger(tmp_path)
    for command in ("push", "fetch"):
        r = run_cli(command, "--ledger", t.path)
        assert r.code == 8 and f"no remotes to {command}" in r.err, r.output
        j = run_cli(command, "--json", "--ledger", t.path)
        assert j.code == 8, j.output
        doc = json.loads(j.out)
        assert f"no remotes to {command}" in doc["error"]
        assert doc.get("outcomes", doc.get("remotes")) == []
    v = run_cli("verify", "--remotes", "--ledger", t.path)
    assert v.code == 8 and "no remotes to check" in v.err, v.output
