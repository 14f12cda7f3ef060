"""A three-runner incident, end to end, over a real server: three runners (own keys, own
ledgers) run one incident's runbooks against a protected shared repository served by git
daemon, witnessing each other at the start of each run; an auditor clones the fleet, verifies
it and writes one fleet report. Then the same fleet with one ledger rolled back on the server
before any auditor looked: caught only because another runner witnessed the lost head."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gitservers
import pytest
from gitservers import GitDaemon
from support.cli import run_cli
from support.gitcmd import git
from support.replicas import TestLedger, make_ledger

pytestmark = pytest.mark.server

git_daemon = gitservers.git_daemon

INCIDENT = "INC-E2E-7"
BOOK = """\
name: triage
parameters:
  who:
    type: string
steps:
  - name: look
    run: echo "$PARAM_WHO looked at the incident"
  - name: fix
    run: echo "$PARAM_WHO applied the fix"
"""


def shared_fleet(server: GitDaemon, tmp_path: Path) -> tuple[Path, str]:
    path = server.base / f"e2e-{tmp_path.name}.git"
    r = run_cli("remote", "init", path, "--shared")
    assert r.code == 0, r.output
    return path, server.url(path.name)


def runner(tmp_path: Path, name: str, url: str) -> TestLedger:
    t = make_ledger(tmp_path, name, records=0)
    r = run_cli("remote", "add", "fleet", url, "--shared", "--ledger", t.path)
    assert r.code == 0, r.output
    return t


def run_incident(t: TestLedger, book: Path, who: str) -> str:
    """`ledger run` as an operator would (the witness happens at its start); the run id."""
    r = run_cli(
        "run",
        book,
        "--ledger",
        t.path,
        "--key",
        t.key_path,
        "--incident",
        INCIDENT,
        "--param",
        f"who={who}",
    )
    assert r.code == 0, r.output
    found = re.search(r"\d{8}T\d{6}Z-[0-9a-f]{8}", r.output)
    assert found, r.output
    push = run_cli("push", "--ledger", t.path)
    assert push.code == 0, push.output
    return found.group(0)


def kinds(t: TestLedger) -> list[str]:
    out = git("--git-dir", t.path, "log", "--reverse", "--format=%B%x00", "main").stdout
    return [
        line.split(": ", 1)[1]
        for msg in out.split("\0")
        for line in msg.splitlines()
        if line.startswith("Ledger-Kind: ")
    ]


def test_three_runners_one_incident_one_fleet_report(git_daemon: GitDaemon, tmp_path: Path) -> None:
    _, url = shared_fleet(git_daemon, tmp_path)
    book = tmp_path / "triage.yaml"
    book.write_text(BOOK)
    runners = [runner(tmp_path, n, url) for n in ("web1", "db1", "batch1")]
    run_ids = [run_incident(t, book, t.path.name) for t in runners]
    # Every run after the first began by witnessing the others' heads, before run.started.
    for t in runners[1:]:
        ks = kinds(t)
        assert ks.index("witness") == ks.index("run.started") - 1, ks
    # The auditor: clone over git://, verify every ledger and every witnessed head.
    copy = tmp_path / "audit.git"
    r = run_cli("fleet", "clone", url, copy)
    assert r.code == 0, r.output
    v = run_cli("fleet", "verify", "--fleet", copy, "--json")
    assert v.code == 0, v.output
    result = json.loads(v.out)
    ids = {t.ledger.ledger_id for t in runners}
    assert {x["ledger_id"] for x in result["ledgers"]} == ids
    assert all(x["findings"] == [] for x in result["ledgers"]), result
    # One report: the three runs, each ledger's evidence, one timeline in time order.
    out = tmp_path / "fleet.md"
    rep = run_cli("fleet", "report", "--fleet", copy, "--incident", INCIDENT, "--output", out)
    assert rep.code == 0, rep.output
    text = out.read_text()
    for t, run_id in zip(runners, run_ids, strict=True):
        assert t.ledger.ledger_id in text and run_id in text
        assert f"{t.path.name} applied the fix" in text
    positions = [text.index(f"{name} applied the fix") for name in ("web1", "db1", "batch1")]
    assert positions == sorted(positions), "the timeline is not in time order"


def test_a_rollback_before_any_audit_is_caught_by_a_witness(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    server, url = shared_fleet(git_daemon, tmp_path)
    book = tmp_path / "triage.yaml"
    book.write_text(BOOK)
    web1, db1 = runner(tmp_path, "web1", url), runner(tmp_path, "db1", url)
    run_incident(web1, book, "web1")
    lost = web1.ledger.head()
    assert lost is not None
    run_incident(db1, book, "db1")  # db1 witnesses web1's head at seq lost.seq
    # The server's disk is rewritten: web1's ref rewound to its genesis (no hook runs).
    ref = f"refs/ledgers/{web1.ledger.ledger_id}/main"
    genesis = web1.ledger.genesis_id
    git("--git-dir", server, "update-ref", ref, genesis)
    # An auditor who never saw web1's later head clones now: web1's own chain is sound...
    copy = tmp_path / "audit.git"
    assert run_cli("fleet", "clone", url, copy).code == 0
    v = run_cli("fleet", "verify", "--fleet", copy, "--json")
    assert v.code == 7, v.output
    result = json.loads(v.out)
    by_id = {x["ledger_id"]: x for x in result["ledgers"]}
    rules = [f["rule"] for f in by_id[web1.ledger.ledger_id]["findings"]] + [
        f["rule"] for f in by_id[db1.ledger.ledger_id]["findings"]
    ]
    # ...but db1's witness record saw a head web1's chain no longer reaches.
    assert "witness-rollback" in rules, result
    assert str(lost.seq) in v.out and lost.commit_id in v.out
