"""`ledger fleet verify`: every ledger of an auditor's fleet copy verified against the
auditor's own anchors, in parallel and incrementally, with the fleet's detections (vanished,
rolled back, forked, new, unpinned) and the witness checks. Over real servers: protected
shared remotes made by 'ledger remote init --shared', served by git daemon and http, ledgers
pushed by 'ledger push'; a compromised server is stock git in the server's directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import gitservers
import pytest
from gitservers import GitDaemon, GitHttpServer
from support.cli import CliResult, run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger

from ledger.fleet import add_remote, claims, verify_fleet
from ledger.fleet import state as fleet_state
from ledger.store import Ledger
from ledger.verify import local

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon
http_server = gitservers.http_server


# --- helpers ------------------------------------------------------------------------------------


def shared_on(server: gitservers.GitServer, name: str) -> tuple[str, Path]:
    path = server.base / f"{name}.git"
    r = run_cli("remote", "init", path, "--shared")
    assert r.code == 0, r.output
    return server.url(f"{name}.git"), path


def pushed(t: TestLedger, url: str, remote: str = "fleet") -> None:
    r = run_cli("remote", "add", remote, url, "--shared", "--ledger", t.path)
    assert r.code == 0, r.output
    push(t, remote)


def push(t: TestLedger, *remotes: str) -> None:
    r = run_cli("push", *remotes, "--ledger", t.path)
    assert r.code == 0, r.output


def fleet_copy(path: Path, **remotes: str) -> Path:
    """A fleet copy in the contract's layout (FLEET-CONTRACT §2), made with stock git, its
    remotes accepted by the auditor (only remotes added on this machine count)."""
    git("init", "-q", "--bare", path)
    git("--git-dir", path, "config", "ledger.fleet", "true")
    for name, url in remotes.items():
        git("--git-dir", path, "config", f"fleet.remote.{name}.url", url)
        add_remote(path, name, url)
    refetch(path)
    return path


def refetch(path: Path) -> None:
    """What the copy's fetch does: each remote's refs/ledgers/* as it is now (forced, pruned)."""
    out = git("--git-dir", path, "config", "--get-regexp", r"^fleet\.remote\..*\.url$").stdout
    for line in out.splitlines():
        key, url = line.split(" ", 1)
        name = key[len("fleet.remote.") : -len(".url")]
        git(
            "--git-dir", path, "fetch", "-q", "--prune", url, f"+refs/ledgers/*:refs/fleet/{name}/*"
        )


def fv(copy: Path, *args: str | Path) -> tuple[int, dict[str, Any], str]:
    """`ledger fleet verify --json` (without fetching): exit code, JSON, stderr."""
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch", "--json", *args)
    assert "Traceback" not in r.output, r.output
    return r.code, json.loads(r.out), r.err


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {led["ledger_id"]: led for led in doc["ledgers"]}


def rules(led: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in led["findings"]}


def lid(t: TestLedger) -> str:
    return t.ledger.ledger_id


def commit_at(t: TestLedger, seq: int) -> str:
    return git("--git-dir", t.path, "rev-parse", f"refs/heads/main~{t.seq - seq}").stdout.strip()


# --- a clean fleet, incremental, parallel -----------------------------------------------------


def test_a_clean_fleet_is_verified_in_parallel_then_only_new_records_are_read(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, _server = shared_on(git_daemon, f"clean-{tmp_path.name}")
    fleet = [make_ledger(tmp_path, n, records=k) for n, k in (("a", 3), ("b", 5), ("c", 1))]
    for t in fleet:
        pushed(t, url)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)

    code, doc, err = fv(copy, "--jobs", "2")
    assert code == 0, err
    got = by_id(doc)
    for t in fleet:
        led = got[lid(t)]
        assert led["status"] == "new" and led["findings"] == []
        assert led["seq"] == t.seq and led["head"] == t.head
        assert led["records_checked"] == t.seq + 1
        assert led["name"] == t.path.name and led["host"]
        assert led["heads"] == {"origin": t.head}
    assert doc["summary"]["ok"] is True and doc["summary"]["by_status"]["new"] == 3

    # Nothing moved: nothing is read again.
    code, doc, _ = fv(copy)
    assert code == 0
    assert {led["status"] for led in doc["ledgers"]} == {"ok"}
    assert doc["summary"]["records_checked"] == 0

    # Two new records on one ledger: exactly those are read.
    a = fleet[0]
    a.append(2)
    push(a)
    refetch(copy)
    code, doc, _ = fv(copy)
    assert code == 0
    assert {k: v["records_checked"] for k, v in by_id(doc).items()} == {
        lid(a): 2,
        lid(fleet[1]): 0,
        lid(fleet[2]): 0,
    }
    assert by_id(doc)[lid(a)]["seq"] == a.seq

    # The text output: one line per ledger and a summary.
    a.append()
    push(a)
    refetch(copy)
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch")
    assert r.code == 0, r.output
    lines = r.out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith("Fleet verified: 3 ledger(s)")
    assert any(
        line.startswith("OK") and lid(a) in line and f"seq {a.seq}" in line for line in lines
    )
    assert "1 record(s) checked with" in lines[-1]


def test_one_job_and_two_jobs_give_the_same_result(git_daemon: GitDaemon, tmp_path: Path) -> None:
    url, _server = shared_on(git_daemon, f"jobs-{tmp_path.name}")
    fleet = [make_ledger(tmp_path, f"l{i}", records=2 + i) for i in range(4)]
    for t in fleet:
        pushed(t, url)
    # (as child processes: a worker pool's start leaves its socket directory until exit)
    code1, one, _ = fv(fleet_copy(tmp_path / "one.git", origin=url), "--jobs", "1")
    code2, two, _ = fv(fleet_copy(tmp_path / "two.git", origin=url), "--jobs", "2")
    assert (code1, code2) == (0, 0)
    assert (one["summary"]["jobs"], two["summary"]["jobs"]) == (1, 2)
    assert one["ledgers"] == two["ledgers"] and one["findings"] == two["findings"] == []
    checked = {led["ledger_id"]: led["records_checked"] for led in one["ledgers"]}
    assert checked == {lid(t): t.seq + 1 for t in fleet}


def test_the_library_verifies_in_this_process_with_one_job(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, _server = shared_on(git_daemon, f"lib-{tmp_path.name}")
    t = make_ledger(tmp_path, "solo", records=2)
    pushed(t, url)
    calls: list[tuple[int, int]] = []
    result = verify_fleet(
        fleet_copy(tmp_path / "copy.git", origin=url),
        jobs=1,
        progress=lambda d, n: calls.append((d, n)),
    )
    assert result.ok and [led.status for led in result.ledgers] == ["new"]
    assert result.ledgers[0].records_checked == 3 and calls == [(0, 1), (1, 1)]


# --- detections -------------------------------------------------------------------------------


def test_rollback_vanished_new_and_unpinned_are_found_and_repeat_until_resolved(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, server = shared_on(git_daemon, f"det-{tmp_path.name}")
    a, b = make_ledger(tmp_path, "a", records=5), make_ledger(tmp_path, "b")
    for t in (a, b):
        pushed(t, url)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)
    assert fv(copy)[0] == 0

    # A compromised server: stock git in its directory, bypassing the hooks.
    old_head = a.head
    back = commit_at(a, a.seq - 2)
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", back)
    git("--git-dir", server, "update-ref", "-d", f"refs/ledgers/{lid(b)}/main")
    c = make_ledger(tmp_path, "c", records=2)
    pushed(c, url)
    refetch(copy)

    for status_c in ("new", "ok"):  # the verified state did not move: the same findings again
        code, doc, _err = fv(copy)
        assert code == 7
        got = by_id(doc)
        assert got[lid(a)]["status"] == "findings"
        assert "rollback" in rules(got[lid(a)])
        assert got[lid(a)]["head"] == old_head and got[lid(a)]["seq"] == a.seq  # still the old
        remote_rollback = [
            f for f in got[lid(a)]["findings"] if f["rule"] == "rollback" and f["remote"]
        ]
        assert remote_rollback and remote_rollback[0]["remote"] == "origin"
        assert got[lid(b)]["status"] == "vanished" and rules(got[lid(b)]) == {"vanished"}
        assert got[lid(c)]["status"] == status_c and got[lid(c)]["findings"] == []
        assert doc["summary"]["ok"] is False
        assert {f["ledger"] for f in doc["findings"]} == {lid(a), lid(b)}

    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch")
    assert r.code == 7, r.output
    assert f"FINDINGS  {lid(a)}" in r.out and f"VANISHED  {lid(b)}" in r.out
    assert "[rollback]" in r.out and "Fleet verification FAILED" in r.out
    assert "finding(s) in the fleet" in r.err

    # The server's ref is put back: resolved, and the verified head moves on from there.
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", old_head)
    refetch(copy)
    code, doc, _ = fv(copy)
    assert by_id(doc)[lid(a)]["status"] == "ok" and by_id(doc)[lid(a)]["findings"] == []

    # An auditor's pin file: a ledger not in it is unpinned (and not pinned now).
    pins = tmp_path / "pins"
    pins.write_text("".join(f"{lid(t)} {t.ledger.genesis_id}\n" for t in (a, b)), encoding="utf-8")
    code, doc, _ = fv(copy, "--pins", pins)
    assert code == 7
    got = by_id(doc)
    assert rules(got[lid(c)]) == {"unpinned"} and got[lid(c)]["status"] == "findings"
    assert got[lid(a)]["findings"] == [] and got[lid(a)]["pin_source"] == "pin file"
    # A wrong pin is the verifier's genesis-mismatch.
    pins.write_text(f"{lid(c)} {a.ledger.genesis_id}\n", encoding="utf-8")
    code, doc, _ = fv(copy, "--pins", pins)
    assert "genesis-mismatch" in rules(by_id(doc)[lid(c)])


def test_full_reads_every_record_again_and_still_judges_rollbacks(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """--full reads every chain again instead of resuming from the verified heads, which
    still judge rollbacks; so it finds what damaged the copy's older objects since, which
    an incremental verification does not read."""
    url, server = shared_on(git_daemon, f"full-{tmp_path.name}")
    a, b = make_ledger(tmp_path, "a", records=5), make_ledger(tmp_path, "b", records=3)
    for t in (a, b):
        pushed(t, url)
    copy = fleet_copy(tmp_path / f"full-{os.getpid()}-{time.time_ns()}.git", origin=url)
    assert fv(copy)[0] == 0
    code, doc, _ = fv(copy)
    assert code == 0 and doc["summary"]["records_checked"] == 0
    for jobs in ("1", "2"):
        code, doc, _ = fv(copy, "--full", "--jobs", jobs)
        assert code == 0 and {led["status"] for led in doc["ledgers"]} == {"ok"}
        checked = {k: v["records_checked"] for k, v in by_id(doc).items()}
        assert checked == {lid(a): a.seq + 1, lid(b): b.seq + 1}

    # A server rolled back: --full reads the whole chain and still names the rollback.
    old_head = a.head
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", commit_at(a, 2))
    refetch(copy)
    code, doc, _ = fv(copy, "--full")
    assert code == 7 and "rollback" in rules(by_id(doc)[lid(a)]), doc
    assert by_id(doc)[lid(a)]["head"] == old_head  # (the verified state did not move)
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", old_head)
    refetch(copy)
    assert fv(copy)[0] == 0

    # The copy's objects damaged on disk: not read by an incremental check, found by --full.
    objects = copy / "objects"
    for path in [*objects.glob("[0-9a-f][0-9a-f]/*"), *objects.glob("pack/*.pack")]:
        path.chmod(0o600)
        data = bytearray(path.read_bytes())
        for at in range(12, len(data) - 20, 31):
            data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    code, doc, _ = fv(copy)
    assert code == 0 and doc["summary"]["records_checked"] == 0
    code, doc, err = fv(copy, "--full")
    assert code == 7 and "Traceback" not in err, err
    for t in (a, b):
        assert rules(by_id(doc)[lid(t)]) & {"object-corrupt", "object-missing"}, doc


def test_a_ref_holding_another_ledgers_chain_is_found_and_never_pinned(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, server = shared_on(git_daemon, f"lid-{tmp_path.name}")
    a = make_ledger(tmp_path, "a")
    pushed(a, url)
    other = "f" * 32  # a server writes a's chain under another ledger's id
    git("--git-dir", server, "update-ref", f"refs/ledgers/{other}/main", a.head)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)
    for _ in range(2):
        code, doc, _err = fv(copy)
        assert code == 7
        got = by_id(doc)
        assert rules(got[other]) == {"ledger-id"} and got[other]["status"] == "findings"
        assert got[other]["head"] is None  # nothing verified under that id
        assert got[lid(a)]["findings"] == []
    pins = Path.home() / ".local" / "state" / "runbook-ledger" / "pins"
    assert other not in pins.read_text()


def test_refs_under_a_remote_the_auditor_never_added_are_named_and_never_believed(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """Someone who can write the copy (not the state directory) fetches their own ledger
    under a remote name the auditor never added: it is not verified, pinned, listed or
    remembered, its witness records accuse no one, and taking it away leaves nothing."""
    url, _server = shared_on(git_daemon, f"stray-{tmp_path.name}")
    a = make_ledger(tmp_path, "a", records=3)
    pushed(a, url)
    e = make_ledger(tmp_path, "e", records=1)  # the attacker's own ledger and key
    lie = {"ledger": lid(a), "seq": a.seq + 5, "commit": "1" * 40, "sha256": "2" * 64}
    e.ledger.append("witness", {"heads": [lie]}, key=e.key)
    pins = Path.home() / ".local" / "state" / "runbook-ledger" / "pins"
    mine = [line for line in pins.read_text().splitlines(True) if lid(e) not in line]
    pins.write_text("".join(mine))  # (made on the attacker's machine: not pinned here)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)
    evil = f"refs/fleet/evil/{lid(e)}/main"
    git("--git-dir", copy, "fetch", "-q", e.path, f"refs/heads/main:{evil}")

    for _ in range(2):
        code, doc, err = fv(copy)
        assert code == 0, err
        assert set(by_id(doc)) == {lid(a)} and by_id(doc)[lid(a)]["findings"] == []
        assert err.count("ledger: warning:") == 1 and evil in err and "never added" in err
        assert "ledger fleet remote add" in err and len(doc["warnings"]) == 1
    assert lid(e) not in local.own_pins()
    assert fleet_state.load_ledger(copy, lid(e)) is None
    assert lid(e) not in fleet_state.load_fleet(copy).ledgers
    r = run_cli("fleet", "status", "--json", "--fleet", copy)
    assert r.code == 0 and evil in r.err, r.output
    status = json.loads(r.out)
    assert [line["ledger_id"] for line in status["ledgers"]] == [lid(a)]
    assert status["warnings"] and evil in status["warnings"][0]
    r = run_cli("fleet", "status", "--fleet", copy)
    assert r.code == 0 and lid(e) not in r.out and "evil" not in r.out, r.output

    # Taken away again: no trace, no 'vanished'.
    git("--git-dir", copy, "update-ref", "-d", evil)
    code, doc, err = fv(copy)
    assert code == 0 and set(by_id(doc)) == {lid(a)} and not doc["warnings"], err
    assert "warning" not in err


def test_two_remotes_lagging_is_reported_and_diverged_is_a_fork(
    git_daemon: GitDaemon, http_server: GitHttpServer, tmp_path: Path
) -> None:
    url1, _s1 = shared_on(git_daemon, f"fork1-{tmp_path.name}")
    url2, server2 = shared_on(http_server, f"fork2-{tmp_path.name}")
    a = make_ledger(tmp_path, "a", records=3)
    pushed(a, url1, "r1")
    pushed(a, url2, "r2")
    # A second copy of the runner's ledger, with its key: it will append other records.
    shutil.copytree(a.path, tmp_path / "a2")
    a.append(2)
    push(a, "r1")  # r2 lags two records behind
    copy = fleet_copy(tmp_path / "copy.git", one=url1, two=url2)
    code, doc, err = fv(copy)
    assert code == 0, err
    led = by_id(doc)[lid(a)]
    assert led["lag"] == {"two": 2} and led["seq"] == a.seq and led["findings"] == []

    # Gone from one remote (deleted in the server's directory): vanished there, still verified.
    ref = f"refs/ledgers/{lid(a)}/main"
    held2 = git("--git-dir", server2, "rev-parse", ref).stdout.strip()
    git("--git-dir", server2, "update-ref", "-d", ref)
    refetch(copy)
    code, doc, _ = fv(copy)
    led = by_id(doc)[lid(a)]
    assert code == 7 and led["status"] == "findings" and led["seq"] == a.seq
    assert [(f["rule"], f["remote"]) for f in led["findings"]] == [("vanished", "two")]
    git("--git-dir", server2, "update-ref", ref, held2)
    refetch(copy)
    code, doc, _ = fv(copy)
    assert code == 0, [(f["rule"], f["message"]) for f in doc["findings"]]

    a2 = TestLedger(tmp_path / "a2", a.key, a.key_path, Ledger.open(tmp_path / "a2"))
    a2.append(3)
    push(a2, "r2")  # accepted: it extends what r2 held
    refetch(copy)
    code, doc, _ = fv(copy)
    assert code == 7
    led = by_id(doc)[lid(a)]
    forks = [f for f in led["findings"] if f["rule"] == "fork"]
    assert len(forks) == 1 and a2.head in forks[0]["message"] and a.head in forks[0]["message"]
    assert led["status"] == "findings" and led["seq"] == a.seq  # the verified head did not move


def test_a_lagging_remote_catching_up_step_by_step_is_never_a_finding(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url1, _s1 = shared_on(git_daemon, f"lag1-{tmp_path.name}")
    url2, _s2 = shared_on(git_daemon, f"lag2-{tmp_path.name}")
    a = make_ledger(tmp_path, "a", records=2)
    pushed(a, url1, "r1")
    pushed(a, url2, "r2")
    a.append(4)
    push(a, "r1")
    copy = fleet_copy(tmp_path / "copy.git", one=url1, two=url2)
    ref = f"refs/ledgers/{lid(a)}/main"
    for seq in (3, 4, a.seq):  # r2 catches up one push at a time (its own hook checks each)
        code, doc, _ = fv(copy)
        led = by_id(doc)[lid(a)]
        assert code == 0 and led["findings"] == [], led["findings"]
        assert led["seq"] == a.seq and led["records_checked"] <= a.seq + 1
        git("--git-dir", a.path, "push", "-q", url2, f"{commit_at(a, seq)}:{ref}")
        refetch(copy)
    code, doc, _ = fv(copy)
    led = by_id(doc)[lid(a)]
    assert code == 0 and led["lag"] == {} and led["records_checked"] == 0


# --- witness claims ---------------------------------------------------------------------------


def _digest(repo: Path, oid: str) -> str:
    raw = git("--git-dir", repo, "cat-file", "commit", oid).stdout.encode()
    return hashlib.sha256(b"commit %d\0" % len(raw) + raw).hexdigest()


def _witnessed_and_witness(
    server: GitDaemon, tmp_path: Path, records: int
) -> tuple[str, Path, TestLedger, TestLedger]:
    """A shared remote holding ledger a (``records`` records), and ledger w (to witness)."""
    url, path = shared_on(server, f"wit-{tmp_path.name}")
    a, w = make_ledger(tmp_path, "a", records=records), make_ledger(tmp_path, "w", records=1)
    pushed(a, url)
    return url, path, a, w


def test_witnessed_heads_are_checked_against_each_ledgers_verified_chain(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, server, a, w = _witnessed_and_witness(git_daemon, tmp_path, 5)
    seen = a.head
    absent = "0" * 31 + "1"
    heads = sorted(
        [
            {"ledger": lid(a), "seq": a.seq, "commit": seen, "sha256": _digest(a.path, seen)},
            {
                "ledger": lid(a),
                "seq": 2,
                "commit": commit_at(a, 2),
                "sha256": _digest(a.path, commit_at(a, 2)),
            },
            {"ledger": lid(a), "seq": 1, "commit": "1" * 40, "sha256": "2" * 64},
            {"ledger": absent, "seq": 7, "commit": "3" * 40, "sha256": "4" * 64},
        ],
        key=lambda h: (h["ledger"], h["commit"]),
    )
    done = w.ledger.append("witness", {"heads": heads}, key=w.key)
    pushed(w, url)
    # The server rolls a back before any auditor looked: only the witness saw seq 5.
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", commit_at(a, 3))
    copy = fleet_copy(tmp_path / "copy.git", origin=url)

    for _ in range(2):  # unresolved claims are kept and checked again
        code, doc, _err = fv(copy)
        assert code == 7
        got = by_id(doc)
        assert got[lid(a)]["seq"] == 3  # a's own chain is sound: it verifies to seq 3
        found = {(f["rule"], f["seq"]): f for f in got[lid(a)]["findings"]}
        assert set(found) == {("witness-rollback", 5), ("witness-mismatch", 1)}
        for f in found.values():
            assert f["by_ledger"] == lid(w) and f["by_seq"] == done.seq
            assert lid(w) in f["message"] and lid(a) in f["message"]
        info = got[lid(w)]["findings"]
        assert [(f["rule"], f["info"]) for f in info] == [("witness-unknown", True)]
        assert got[lid(w)]["status"] in ("new", "ok")  # information, not a failure
    # The rolled-back head comes back: the rollback claim is resolved, the forged one stays.
    git("--git-dir", server, "update-ref", f"refs/ledgers/{lid(a)}/main", seen)
    refetch(copy)
    code, doc, _ = fv(copy)
    assert {f["rule"] for f in by_id(doc)[lid(a)]["findings"]} == {"witness-mismatch"}


def test_claims_about_a_ledger_not_in_the_copy_are_kept_latest_first_and_said_once(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    """A runner witnesses at every run: its claims about a ledger the auditor lacks must not
    pile up in the auditor's state, nor one INFO line each."""
    url, _server = shared_on(git_daemon, f"unk-{tmp_path.name}")
    w = make_ledger(tmp_path, "w", records=1)
    absent = "0" * 31 + "1"
    total = claims.UNKNOWN_KEPT + 4
    for seq in range(total):
        head = {"ledger": absent, "seq": seq, "commit": f"{seq:040x}", "sha256": "4" * 64}
        w.ledger.append("witness", {"heads": [head]}, key=w.key)
    pushed(w, url)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)
    for earlier, dropped in ((total - 1, 4), (claims.UNKNOWN_KEPT - 1, 0)):
        code, doc, _err = fv(copy)
        assert code == 0
        (info,) = by_id(doc)[lid(w)]["findings"]
        assert info["rule"] == "witness-unknown" and info["info"] is True
        assert info["seq"] == total - 1 and f"{total - 1:040x}" in info["message"]
        assert f"and {earlier} earlier claim(s) about it" in info["message"]
        assert ("oldest are no longer kept" in info["message"]) is (dropped > 0)
        saved = fleet_state.load_ledger(copy, lid(w))
        assert saved is not None
        assert sorted(c["seq"] for c in saved.claims) == list(range(4, total))


def test_the_auditor_dismisses_a_witness_records_false_claims(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    url, _server, a, w = _witnessed_and_witness(git_daemon, tmp_path, 3)
    false = {"ledger": lid(a), "seq": 1, "commit": "1" * 40, "sha256": "2" * 64}
    done = w.ledger.append("witness", {"heads": [false]}, key=w.key)
    pushed(w, url)
    copy = fleet_copy(tmp_path / "copy.git", origin=url)
    code, doc, _ = fv(copy)
    assert code == 7 and rules(by_id(doc)[lid(a)]) == {"witness-mismatch"}

    def dismiss(*args: str | int) -> CliResult:
        return run_cli("fleet", "dismiss", *[str(x) for x in args], "--fleet", copy)

    for args, words in (
        ((lid(w), done.seq + 1, "--reason", "x"), "keeps no claim"),
        ((lid(w), done.seq, "--reason", " "), "needs a reason"),
        ((lid(w), done.seq, "--reason", "two\nlines"), "needs a reason"),
        (("W" * 32, done.seq, "--reason", "x"), "is not a ledger id"),
    ):
        r = dismiss(*args)
        assert r.code == 3 and words in r.err and "Traceback" not in r.output, (args, r.output)
    r = dismiss(lid(w), done.seq, "--reason", "w's key was misused; see INC-7")
    assert r.code == 0 and "Dismissed 1 claim(s)" in r.out, r.output

    code, doc, _ = fv(copy)
    assert code == 0, doc
    assert by_id(doc)[lid(a)]["findings"] == []
    (said,) = by_id(doc)[lid(w)]["findings"]
    assert said["rule"] == "witness-dismissed" and said["info"] is True
    assert said["by_seq"] == done.seq and "see INC-7" in said["message"]
    code, doc, _ = fv(copy)  # said once; the claims are gone from the auditor's state
    assert code == 0 and by_id(doc)[lid(w)]["findings"] == []
    saved = fleet_state.load_ledger(copy, lid(w))
    assert saved is not None and saved.claims == []
    assert (lid(w), done.seq) in fleet_state.load_fleet(copy).dismissed
    # A dismissal is the auditor's own state: a malformed one is named, never believed.
    state_file = fleet_state.state_dir(copy) / "fleet.json"
    doc = json.loads(state_file.read_text())
    doc["dismissed"] = {lid(w): {"twelve": {"reason": "x", "at": "t"}}}
    state_file.write_text(json.dumps(doc))
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch")
    assert r.code == 6 and str(state_file) in r.err and "not a record seq" in r.err, r.output


def test_bad_input_is_one_paragraph_and_a_documented_exit_code(tmp_path: Path) -> None:
    r = run_cli("fleet", "verify", "--fleet", tmp_path, "--no-fetch")
    assert r.code == 5 and "is not a fleet copy" in r.err and "Traceback" not in r.output
    copy = tmp_path / "copy.git"
    git("init", "-q", "--bare", copy)
    git("--git-dir", copy, "config", "ledger.fleet", "true")
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch", "--pins", tmp_path / "nope")
    assert r.code == 3 and "does not exist" in r.err, r.output
    bad = tmp_path / "bad-pins"
    bad.write_text("not a pin\n")
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch", "--pins", bad)
    assert r.code == 3 and "line 1" in r.err, r.output
    r = run_cli("fleet", "verify", "--fleet", copy, "--no-fetch")
    assert r.code == 0 and "0 ledger(s)" in r.out, r.output


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_history_substitution_in_the_copy_is_found_for_every_ledger(
    git_daemon: GitDaemon, tmp_path: Path, jobs: str
) -> None:
    """The copy-wide check (replace refs, grafts) runs once, not once per ledger, but what it
    finds is still the finding of every ledger read, however the ledgers are scheduled."""
    url, _server = shared_on(git_daemon, f"subst-{jobs}-{tmp_path.name}")
    fleet = [make_ledger(tmp_path, f"s{i}", records=2) for i in range(2)]
    for t in fleet:
        pushed(t, url)
    # (a name of its own: the auditor's state is keyed by the copy's path, and pytest may
    # give this test the directory a passed test had)
    copy = fleet_copy(tmp_path / f"subst-{jobs}-{os.getpid()}-{time.time_ns()}.git", origin=url)
    code, clean, _ = fv(copy, "--jobs", jobs)
    assert code == 0, clean
    a, b = fleet
    git("--git-dir", copy, "update-ref", f"refs/replace/{commit_at(a, 1)}", commit_at(b, 1))
    for t in fleet:
        t.append(1)
        push(t)
    refetch(copy)
    code, doc, _ = fv(copy, "--jobs", jobs)
    assert code == 7, doc
    assert all("replace-refs" in rules(led) for led in doc["ledgers"]), doc
