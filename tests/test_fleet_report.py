"""`ledger fleet report` over real ledgers: runs made by `ledger run --incident`, an auditor's
fleet copy made with stock git in the contract's layout (FLEET-CONTRACT §2), evidence from the
real verifier, reports parsed by an independent CommonMark parser, stock git as the judge of
commit ids."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest
from support.cli import run_cli
from support.gitcmd import explode_packs, git
from support.markdown import MD

from ledger import errors
from ledger.fleet import add_remote, report_model
from ledger.fleet import report as fleet_report
from ledger.verify import chain
from ledger.verify import findings as verify_findings

INCIDENT = "INC-7"
SECRET = "s3cr3t-Qm4Zt9"

BOOK = """\
name: restart-api
parameters:
  token:
    type: string
    secret: true
    from_env: DEMO_TOKEN
steps:
  - name: check
    run: echo "checking with $PARAM_TOKEN"
  - name: restart
    run: echo restarted
"""

HOSTILE_BOOK = """\
name: hostile
steps:
  - name: evil
    run: |
      printf '```\\n~~~\\n# h\\n| a | b |\\n|---|---|\\n<script>x</script>\\n\\033[31m\\n---\\n'
      echo '</td><!-- [x](http://e) **b**'
"""


@dataclass
class Runner:
    name: str
    key: Path
    path: Path
    ledger_id: str
    genesis: str


class Fleet:
    """Three runners' ledgers and an auditor's fleet copy (stock git, contract §2)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.book = tmp / "restart-api.yaml"
        self.book.write_text(BOOK)
        self.runners = [self._runner(n) for n in ("alpha", "bravo", "charlie")]
        self.copy = tmp / "fleet.git"
        git("init", "--bare", "-q", self.copy)
        git("--git-dir", self.copy, "config", "ledger.fleet", "true")
        origin = str(tmp / "origin.git")  # (the auditor's remote: only added ones count)
        git("--git-dir", self.copy, "config", "fleet.remote.origin.url", origin)
        add_remote(self.copy, "origin", origin)

    def _runner(self, name: str) -> Runner:
        key, path = self.tmp / f"{name}_key", self.tmp / f"{name}.ledger"
        assert run_cli("keys", "generate", key, "-C", f"{name}@example.com").code == 0
        res = run_cli("init", path, "--key", key, "--name", name)
        assert res.code == 0, res.err
        cfg = git("--git-dir", path, "config", "--get-regexp", "^ledger\\.").stdout
        values = dict(line.split(" ", 1) for line in cfg.splitlines())
        return Runner(name, key, path, values["ledger.id"], values["ledger.genesis"])

    def run(self, who: Runner, book: Path | None = None, incident: str = INCIDENT) -> None:
        res = run_cli(
            "run", book or self.book, "-L", who.path, "--key", who.key,
            "--incident", incident, "--no-push",
            env={"DEMO_TOKEN": SECRET},
        )  # fmt: skip
        assert res.code == 0, res.output

    def fetch(self, who: Runner) -> None:
        ref = f"+refs/heads/main:refs/fleet/origin/{who.ledger_id}/main"
        git("--git-dir", self.copy, "fetch", "-q", who.path, ref)

    def ref(self, who: Runner) -> str:
        return f"refs/fleet/origin/{who.ledger_id}/main"

    def head(self, who: Runner) -> str:
        return git("--git-dir", self.copy, "rev-parse", self.ref(who)).stdout.strip()

    def evidence(self, who: Runner, head: str | None = None) -> report_model.LedgerEvidence:
        """What verifying this ledger in the copy establishes (the real verifier)."""
        repo = pygit2.Repository(str(self.copy))
        result = chain.verify_chain(repo, head or self.head(who), trust_genesis=who.genesis)
        verified = result.state
        return report_model.LedgerEvidence(
            ledger_id=who.ledger_id,
            name=who.name,
            host="host-" + who.name,
            genesis=who.genesis,
            head=verified.head if verified is not None else None,
            seq=verified.seq if verified is not None else None,
            status="ok" if result.ok else "findings",
            findings=tuple(result.findings),
            heads=(("origin", self.head(who)),),
            records_checked=result.records_checked,
        )

    def report(self, evidence: list[report_model.LedgerEvidence], **sel: str) -> str:
        selection = fleet_report.select(sel.get("incident"), sel.get("since"), sel.get("until"))
        repo = pygit2.Repository(str(self.copy))
        return fleet_report.render_fleet_report(self.copy, repo, evidence, selection).text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Two runs of INC-7 on each of three runners, interleaved in time (a, b, c, a, b, c)."""
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    for _ in range(2):
        for who in f.runners:
            f.run(who)
    f.run(f.runners[1], incident="INC-8")  # another incident: not in INC-7's report
    for who in f.runners:
        f.fetch(who)
    return f


def all_tables(markdown: str) -> list[list[list[str]]]:
    """Every table of the document: rows of cells, each cell as rendered inline text."""
    rows: list[list[str]] = []
    out: list[list[list[str]]] = []
    in_cell = False
    for tok in MD.parse(markdown):
        if tok.type == "table_open":
            rows = []
            out.append(rows)
        elif tok.type == "tr_open":
            rows.append([])
        elif tok.type in ("th_open", "td_open"):
            in_cell = True
        elif tok.type in ("th_close", "td_close"):
            in_cell = False
        elif tok.type == "inline" and in_cell:
            rows[-1].append(re.sub(r"</?code>", "", MD.renderInline(tok.content)).strip())
    return out


def tables_of(markdown: str, first_header: str) -> list[list[list[str]]]:
    """Every table whose first header cell is ``first_header``."""
    return [t for t in all_tables(markdown) if t[0][0] == first_header]


def cells_of(markdown: str, first_header: str) -> list[list[str]]:
    """The rows of the first table whose first header cell is ``first_header``."""
    return tables_of(markdown, first_header)[0]


def evidence_of(markdown: str, name: str) -> dict[str, str]:
    """The evidence table (Field | Value) of ledger ``name``."""
    for table in tables_of(markdown, "Field"):
        rows = dict((r[0], r[1]) for r in table[1:] if len(r) == 2)
        if rows.get("Name") == name and "Verified head" in rows:
            return rows
    raise AssertionError(f"no evidence table for {name}")


def test_three_ledgers_one_timeline(fleet: Fleet) -> None:
    md = fleet.report([fleet.evidence(w) for w in fleet.runners], incident=INCIDENT)
    timeline = cells_of(md, "Time")[1:]
    times = [row[0] for row in timeline]
    assert times == sorted(times) and len(timeline) == 3 * 2 * 2  # 3 ledgers, 2 runs, 2 steps
    # Interleaved: the runners' runs alternate on the merged timeline.
    order = [row[1] for row in timeline]
    firsts = [order[i] for i in range(0, len(order), 2)]
    assert firsts == ["alpha", "bravo", "charlie", "alpha", "bravo", "charlie"]
    runs = cells_of(md, "Ledger")[1:]
    assert [r[0] for r in runs] == firsts and all(r[9] == "succeeded" for r in runs)
    # Each ledger's evidence: id, genesis and verified head, as stock git sees them.
    html = MD.render(md)
    for who in fleet.runners:
        assert f"<h3>Ledger {who.name}</h3>" in html
        chain_ids = set(git("--git-dir", who.path, "rev-list", "main").stdout.split())
        head = fleet.head(who)
        assert who.ledger_id in md and who.genesis in md and head in md
        assert head in chain_ids and who.genesis in chain_ids
    cited = {r[3] for table in tables_of(md, "Seq") for r in table[1:]}
    every = set()
    for who in fleet.runners:
        every |= set(git("--git-dir", who.path, "rev-list", "main").stdout.split())
    assert len(cited) == 3 * 2 * 6 and cited <= every  # each run: 6 records
    assert "Verification | verified" in md.replace("*", "")
    assert "INC-8" not in md
    # Secrets never appear; the records hold the redaction.
    assert SECRET not in md and "[REDACTED:token]" in html


def test_same_copy_same_bytes(fleet: Fleet) -> None:
    evidence = [fleet.evidence(w) for w in fleet.runners]
    assert fleet.report(evidence, incident=INCIDENT) == fleet.report(evidence, incident=INCIDENT)


def test_time_range_across_ledgers(fleet: Fleet) -> None:
    evidence = [fleet.evidence(w) for w in fleet.runners]
    md = fleet.report(evidence, since="2000-01-01")
    runs = cells_of(md, "Ledger")[1:]
    assert len(runs) == 7  # INC-8's run too
    assert [r[6] for r in runs] == sorted(r[6] for r in runs)
    empty = fleet.report(evidence, since="2000-01-01", until="2000-01-02")
    assert "No runs matched." in empty


def test_copy_head_ahead_of_the_verified_head(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    a, b = f.runners[0], f.runners[1]
    f.run(a)
    f.run(b)
    for who in f.runners:
        f.fetch(who)
    old = f.evidence(a)
    f.run(a)  # a newer run of the incident reaches the copy, not yet verified
    f.fetch(a)
    assert f.head(a) != old.head
    # What the fleet's verification gives when the copy's head did not verify (yet).
    old = dataclasses.replace(old, heads=(("origin", f.head(a)),))
    md = f.report([old, f.evidence(b), f.evidence(f.runners[2])], incident=INCIDENT)
    runs = [r for r in cells_of(md, "Ledger")[1:] if r[0] == "alpha"]
    assert len(runs) == 1
    newest = json.loads(
        git("--git-dir", a.path, "show", f"main:{_run_started_path(a.path)}").stdout
    )["run"]
    assert newest not in md
    rows = evidence_of(md, "alpha")
    assert rows["Verified head"].endswith(str(old.head))
    assert f"origin: {f.head(a)}" in rows["Heads in the copy"]


def _run_started_path(ledger: Path) -> str:
    """The path of the newest run.started record of a ledger, by history (stock git): two
    runs started in the same second have run ids that do not sort by time."""
    added = git(
        "--git-dir", ledger, "log", "--diff-filter=A", "--name-only", "--format=", "main",
        "--", "runs",
    ).stdout  # fmt: skip
    return next(n for n in added.split() if n.endswith("-run.started.json"))


def test_hostile_output_does_not_break_the_markdown(tmp_path: Path) -> None:
    f = Fleet(tmp_path)
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(HOSTILE_BOOK)
    benign = tmp_path / "benign.yaml"
    benign.write_text(HOSTILE_BOOK.replace("hostile", "benign").replace("evil", "good"))
    benign.write_text(
        "name: benign\nsteps:\n  - name: good\n    run: |\n      echo fine\n      echo fine\n"
    )
    a, b = f.runners[0], f.runners[1]
    f.run(a, hostile, incident="INC-H")
    f.run(b, benign, incident="INC-B")
    for who in (a, b):
        f.fetch(who)
    ev = [f.evidence(a), f.evidence(b)]
    evil = f.report(ev, incident="INC-H")
    good = f.report(ev, incident="INC-B")

    def shape(md: str) -> list[str]:
        return [t.type for t in MD.parse(md)]

    assert shape(evil) == shape(good)
    assert "<script>" not in MD.render(evil)


def test_cli_report_then_tampered_ledger_fails(fleet: Fleet, tmp_path: Path) -> None:
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", INCIDENT)
    assert res.code == 0, res.err
    assert len(cells_of(res.out, "Time")) == 13
    out = tmp_path / "r.md"
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", INCIDENT, "-o", out)
    assert res.code == 0 and out.read_text(encoding="utf-8").startswith("# Incident INC-7")
    # Stock git appends an unsigned commit claiming the next seq to bravo's chain in the copy.
    b = fleet.runners[1]
    ref = fleet.ref(b)
    before = fleet.head(b)
    seq_of = "--format=%(trailers:key=Ledger-Seq,valueonly)"
    seq = int(git("--git-dir", fleet.copy, "log", "-1", seq_of, ref).stdout)
    message = (
        f"forged\n\nLedger-Id: {b.ledger_id}\nLedger-Seq: {seq + 1}\nLedger-Kind: event\n"
        f"Ledger-Record: genesis.json\nLedger-Record-Sha256: {'0' * 64}\n"
        f"Ledger-Prev-Sha256: {'0' * 64}\n"
    )
    forged = git(
        "--git-dir", fleet.copy, "commit-tree", f"{ref}^{{tree}}", "-p", ref, "-m", message
    ).stdout.strip()
    git("--git-dir", fleet.copy, "update-ref", ref, forged)
    try:
        res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", INCIDENT)
    finally:
        git("--git-dir", fleet.copy, "update-ref", ref, before)
    assert res.code == 7, res.output
    assert "bravo" in res.err and "failed verification" in res.err
    md = res.out
    html = MD.render(md)
    assert "<strong>Verification failed</strong> for 1 ledger(s): bravo" in html
    runs = cells_of(md, "Ledger")[1:]
    marked = "bravo (<strong>failed verification</strong>)"
    assert [r[0] for r in runs].count(marked) == 2  # read at the verified head
    assert "unsigned" in {r[0] for table in tables_of(md, "Rule") for r in table[1:]}
    assert before in md and forged not in cells_of(md, "Ledger")[0]


def test_errors(fleet: Fleet, tmp_path: Path) -> None:
    res = run_cli("fleet", "report", "--fleet", tmp_path, "--incident", INCIDENT)
    assert res.code == 5 and "fleet copy" in res.err
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", "NOPE-1")
    assert res.code == 3 and "no ledger" in res.err and "NOPE-1" in res.err
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--since", "yesterday")
    assert res.code == 2 and "not a time" in res.err
    res = run_cli(
        "fleet", "report", "--fleet", fleet.copy, "--incident", "A", "--since", "2026-01-01"
    )
    assert res.code == 2 and "exactly one" in res.err
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", "<b>|x")
    assert res.code == 3 and "incident id" in res.err
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", "")
    assert res.code == 3 and "the incident id is empty" in res.err, res.err
    huge = "x" * 100_000  # quoted in part, its length said: the message stays one paragraph
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", huge)
    assert res.code == 3 and "(100000 characters)" in res.err and len(res.err) < 600, res.err
    missing = tmp_path / "none.j2"
    res = run_cli("fleet", "report", "--fleet", fleet.copy, "--incident", INCIDENT, "-t", missing)
    assert res.code == 3 and "template" in res.err
    assert "templates/fleet.md.j2" in res.err and "incident.md.j2" not in res.err


def test_a_year_below_1000_is_a_time_not_a_finding(fleet: Fleet) -> None:
    """Record times always have four digits of year: a bound in year 1 or 999 selects runs
    like any other, and no ledger is marked as failing for it."""
    for since in ("0001-01-01", "0999-12-31T23:59"):
        res = run_cli("fleet", "report", "--fleet", fleet.copy, "--since", since)
        assert res.code == 0, res.output
        assert "Verification | verified" in res.out.replace("*", "")
        assert "failed verification" not in res.out and "unreadable" not in res.out
        assert len(cells_of(res.out, "Ledger")[1:]) == 7
        assert f"`{since[:4]}-" in res.out
    until = run_cli(
        "fleet", "report", "--fleet", fleet.copy, "--since", "0001-01-01", "--until", "0999-01-01"
    )
    assert until.code == 0 and "No runs matched." in until.out, until.output


def test_a_read_problem_at_a_verified_head_is_no_finding(tmp_path: Path) -> None:
    """A record's blob vanishes from the copy after its ledger verified: the report says it
    could not read the copy (a storage error), never that the ledger failed verification."""
    f = Fleet(tmp_path)
    a = f.runners[0]
    f.run(a)
    f.fetch(a)
    ev = f.evidence(a)
    assert not ev.failing
    explode_packs(f.copy)
    blob = git("--git-dir", f.copy, "rev-parse", f"{ev.head}:{_run_started_path(a.path)}")
    oid = blob.stdout.strip()
    (f.copy / "objects" / oid[:2] / oid[2:]).unlink()
    with pytest.raises(errors.StorageError) as caught:
        f.report([ev], incident=INCIDENT)
    assert type(caught.value) is errors.StorageError  # exit 6, not a verification failure
    assert a.ledger_id in caught.value.message and "not a verification finding" in (
        caught.value.message
    )


def test_every_ledger_failing_still_writes_the_report(fleet: Fleet, tmp_path: Path) -> None:
    """A copy whose pack is cut short: no ledger verifies, so none shows a run of the
    incident; the report is still written, naming each ledger and its finding, and the
    command exits 7 (not 3, which says every ledger verified and none has the incident)."""
    dmg = tmp_path / "dmg.git"
    shutil.copytree(fleet.copy, dmg)
    add_remote(dmg, "origin", str(fleet.tmp / "origin.git"))  # (state is per copy path)
    git("--git-dir", dmg, "repack", "-a", "-d", "-q")
    for pack in (dmg / "objects" / "pack").glob("*.pack"):
        with pack.open("r+b") as fh:
            fh.truncate(100)
    out = tmp_path / "r.md"
    res = run_cli("fleet", "report", "--fleet", dmg, "--incident", INCIDENT, "-o", out)
    assert res.code == 7, res.output
    assert "failed verification" in res.err
    md = out.read_text(encoding="utf-8")
    assert "No runs matched." in md
    failed = tables_of(md, "Ledger")[-1]
    assert sorted(r[1].strip("`") for r in failed[1:]) == sorted(w.ledger_id for w in fleet.runners)
    assert all("object-missing" in r[5] for r in failed[1:])
    assert "ledger(s) verified" not in md


def test_a_failing_ledger_without_runs_is_listed(fleet: Fleet) -> None:
    evidence = [fleet.evidence(w) for w in fleet.runners]
    lost = report_model.LedgerEvidence(
        ledger_id="f" * 32,
        name="delta",
        host="host-delta",
        genesis=None,
        head=None,
        seq=None,
        status="findings",
        findings=(verify_findings.Finding("rollback", None, None, "main was cut back"),),
    )
    info = report_model.LedgerEvidence(
        ledger_id="e" * 32,
        name="echo",
        host="",
        genesis=None,
        head=None,
        seq=None,
        status="ok",
        findings=(verify_findings.Finding("witness-unknown", None, None, "not in the copy"),),
    )
    sel = fleet_report.select(INCIDENT, None, None)
    repo = pygit2.Repository(str(fleet.copy))
    out = fleet_report.render_fleet_report(fleet.copy, repo, [*evidence, lost, info], sel)
    assert [x.label for x in out.failing] == ["delta"]  # (an info finding fails nothing)
    rows = cells_of(out.text, "Ledger")
    assert rows[0][0] == "Ledger" and len(rows) == 7
    failed = tables_of(out.text, "Ledger")[-1]
    assert failed[0][:4] == ["Ledger", "Ledger id", "Host", "Status"]
    assert failed[1][0] == "delta" and failed[1][3] == "findings"
    assert "rollback: main was cut back" in failed[1][5]


def test_a_forged_index_entry_is_not_believed(fleet: Fleet) -> None:
    """Someone who can write the copy points the seq index at an unsigned twin of a record's
    commit (same tree, parent and message): the report still cites the chain's commit."""
    a = fleet.runners[0]
    ev = fleet.evidence(a)
    first = fleet.report([ev], incident=INCIDENT)  # builds the index
    real = git("--git-dir", fleet.copy, "rev-parse", f"{fleet.ref(a)}~1").stdout.strip()
    assert real in first
    body = git("--git-dir", fleet.copy, "log", "-1", "--format=%B", real).stdout
    twin = git(
        "--git-dir", fleet.copy, "commit-tree", f"{real}^{{tree}}", "-p", f"{real}~1", "-m", body
    ).stdout.strip()
    index = fleet.copy / "ledger-state" / f"fleet-seq-{a.ledger_id}"
    assert ev.seq is not None
    with index.open("r+b") as fh:
        fh.seek((ev.seq - 1) * 20)
        fh.write(bytes.fromhex(twin))
    again = fleet.report([ev], incident=INCIDENT)
    assert twin not in again and again == first


def test_evidence_from_a_fleet_outcome() -> None:
    """FLEET-CONTRACT §3's LedgerOutcome, with a chain finding and fleet findings."""
    from types import SimpleNamespace

    chain_finding = verify_findings.Finding("unsigned", 9, "c" * 40, "no signature")
    fork = SimpleNamespace(
        rule="fork", ledger="a" * 32, seq=None, commit="d" * 40, message="two heads", remote="m"
    )
    outcome = SimpleNamespace(
        ledger_id="a" * 32,
        name="alpha",
        host=None,
        heads={"origin": "1" * 40, "mirror": "2" * 40},
        seq=8,
        head="3" * 40,
        records_checked=4,
        status="findings",
        findings=[chain_finding, fork],
    )
    ev = fleet_report.evidence_from_outcome(outcome, genesis="4" * 40)
    assert (ev.ledger_id, ev.name, ev.host, ev.head, ev.seq) == ("a" * 32, "alpha", "", "3" * 40, 8)
    assert ev.genesis == "4" * 40 and ev.failing and ev.pinned and ev.records_checked == 4
    assert ev.heads == (("mirror", "2" * 40), ("origin", "1" * 40))
    assert ev.findings[0] is chain_finding
    assert ev.findings[1] == verify_findings.Finding("fork", None, "d" * 40, "two heads")
    outcome.genesis = "5" * 40  # an outcome that carries the verified genesis wins
    outcome.status, outcome.findings = (
        "ok",
        [SimpleNamespace(rule="witness-unknown", seq=None, commit=None, message="not here")],
    )
    ev = fleet_report.evidence_from_outcome(outcome, genesis="4" * 40)
    assert ev.genesis == "5" * 40 and not ev.failing
