"""`ledger report` over a real ledger: real signed commits, stock git as the judge of commit
ids, the real verifier, protected local remotes, and the CLI as a subprocess."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli
from support.gitcmd import git
from support.markdown import MD

from ledger import replicate
from ledger.format import records
from ledger.keys import SigningKey
from ledger.store import Ledger
from ledger.verify import local


def stream_meta(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": records.sha256_hex(data), "truncated": False, "omitted": 0}


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.alice = SigningKey.generate(comment="alice@example.com")
        self.bob = SigningKey.generate(comment="bob@example.com")
        self.path = tmp_path / "ledger.git"
        self.led = Ledger.init(self.path, name="ops", key=self.alice, principal="alice@example.com")
        local.pin_after_init(self.path, self.led.genesis_id)  # as 'ledger init' does
        pk = self.bob.public_key
        self.led.append(
            "key.added",
            {
                "principal": "bob@example.com",
                "key": pk.openssh(),
                "fingerprint": pk.fingerprint,
                "comment": "approver",
            },
            key=self.alice,
        )

    def run(
        self,
        incident: str | None,
        *,
        command: str = "./check.sh api",
        stdout: bytes = b"ok\n",
        stderr: bytes = b"boom\n",
        fail: bool = True,
    ) -> str:
        """Append the records of one run the way the engine writes them (FORMAT.md §5.1)."""
        led, a = self.led, self.alice
        rid = records.new_run_id()
        book = b"name: restart-api\n"
        led.append(
            "run.started",
            {
                "runbook": {
                    "name": "restart-api",
                    "path": "runbooks/restart-api.yaml",
                    "sha256": records.sha256_hex(book),
                    "description": None,
                },
                "params": {"service": "api", "token": "[REDACTED:token]"},
                "param_sources": {"service": "default", "token": "env:TOKEN"},
                "trigger": {
                    "source": "manual",
                    "incident": incident,
                    "text": None,
                    "ci": None,
                    "ci_run": None,
                    "ci_url": None,
                },
                "operator": {"principal": "alice@example.com", "user": "alice"},
                "tool_version": "runbook-ledger 0.1.0",
                "env": {},
                "lock": None,
                "resumes": None,
                "steps": ["check", "approve"],
                "on_failure": [],
            },
            key=a,
            run=rid,
            incident=incident,
            attachments={"runbook": book},
        )
        step = {"step": "check", "index": 0, "phase": "main", "handler": False}
        statuses = ["failed", "ok"] if fail else ["ok"]
        for attempt, status in enumerate(statuses, start=1):
            led.append(
                "step.started",
                {
                    **step,
                    "attempt": attempt,
                    "type": "command",
                    "command": command,
                    "shell": "bash",
                    "cwd": None,
                    "timeout_ms": None,
                    "max_attempts": 2,
                    "env": [],
                },
                key=a,
                run=rid,
            )
            led.append(
                "step.finished",
                {
                    **step,
                    "attempt": attempt,
                    "status": status,
                    "exit_code": 0 if status == "ok" else 7,
                    "duration_ms": 42,
                    "error": None if status == "ok" else "exited with status 7",
                    "outputs": {"version": "1.2.3"} if status == "ok" else {},
                    "signal": None,
                    "stdout": stream_meta(stdout),
                    "stderr": stream_meta(stderr),
                    "lingering": False,
                    "will_retry": status != "ok",
                },
                key=a,
                run=rid,
                attachments={k: v for k, v in (("stdout", stdout), ("stderr", stderr)) if v},
            )
        approve = {"step": "approve", "index": 1, "phase": "main", "handler": False}
        request = led.append(
            "step.started",
            {
                **approve,
                "attempt": 1,
                "type": "approval",
                "approval": {
                    "approvers": ["bob@example.com"],
                    "min_approvals": 1,
                    "message": "Restart api?",
                    "timeout_ms": None,
                },
            },
            key=a,
            run=rid,
        )
        led.append(
            "approval",
            {
                "step": "approve",
                "index": 1,
                "decision": "approved",
                "comment": "ok",
                "principal": "bob@example.com",
                "fingerprint": self.bob.public_key.fingerprint,
                "request_seq": request.seq,
                "request_commit": request.commit_id,
                "via": "command",
            },
            key=self.bob,
            run=rid,
        )
        led.append(
            "step.finished",
            {
                **approve,
                "attempt": 1,
                "status": "ok",
                "exit_code": None,
                "duration_ms": 10,
                "error": None,
                "outputs": {},
            },
            key=a,
            run=rid,
        )
        led.append(
            "run.finished",
            {
                "status": "succeeded",
                "failed_step": None,
                "error": None,
                "duration_ms": 1234,
                "continued_after_failure": [],
                "handlers_run": [],
                "handlers_failed": [],
                "signal": None,
                "resumes": None,
            },
            key=a,
            run=rid,
        )
        return rid


@pytest.fixture()
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def cells_of(markdown: str, first_header: str) -> list[list[str]]:
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
    return next(t for t in out if t[0][0] == first_header)


def report(world: World, *args: Any) -> str:
    res = run_cli("report", "-L", world.path, *args)
    assert res.code == 0, res.err
    return res.out


def test_run_report_facts_are_in_the_ledger(world: World) -> None:
    rid = world.run("INC-42", command="./check.sh api --token [REDACTED:token]")
    md = report(world, "--run", rid)
    # Every commit id the report cites is on the ledger's main branch, says stock git.
    chain = set(git("--git-dir", world.path, "rev-list", "main").stdout.split())
    rows = cells_of(md, "Seq")[1:]
    cited = [r[3] for r in rows]
    assert len(cited) == 9 and set(cited) <= chain
    for seq, commit in ((int(r[0]), r[3]) for r in rows):
        msg = git("--git-dir", world.path, "log", "-1", "--format=%B", commit).stdout
        assert f"Ledger-Seq: {seq}" in msg
    timeline = cells_of(md, "Time")[1:]
    assert [(r[2], r[3], r[4], r[5], r[6]) for r in timeline] == [
        ("check", "1", "failed", "42 ms", "7"),
        ("check", "2", "ok", "42 ms", "0"),
        ("approve", "1", "ok", "10 ms", "—"),
    ]
    assert "--token [REDACTED:token]" in md
    html = MD.render(md)
    assert "Result: <strong>verified</strong>" in html
    assert "9 of the 9 records this report uses are on the verified chain" in html
    signers = {r[0]: r for r in cells_of(md, "Principal")[1:]}
    assert signers["bob@example.com"][1] == world.bob.public_key.fingerprint
    assert signers["bob@example.com"][2:] == ["1", "yes"]
    approvals = [t for t in [cells_of(md, "Time")] if t]  # timeline first; approvals below
    assert approvals
    ledger_rows = {r[0]: r[1] for r in cells_of(md, "Field")[1:]}
    assert ledger_rows["Incident"] == "INC-42"
    assert world.led.genesis_id in md and world.led.ledger_id in md


def test_same_ledger_same_bytes(world: World, tmp_path: Path) -> None:
    rid = world.run("INC-7")
    first = report(world, "--run", rid)
    second = report(world, "--run", rid)
    out = tmp_path / "r.md"
    res = run_cli("report", "-L", world.path, "--run", rid, "-o", out)
    assert res.code == 0 and str(out) in res.err
    assert first == second == out.read_text(encoding="utf-8")


def test_incident_spans_runs_in_time_order(world: World) -> None:
    r1 = world.run("INC-9")
    world.run("INC-10")
    r2 = world.run("INC-9", fail=False)
    md = report(world, "--incident", "INC-9")
    tokens = MD.parse(md)
    heads = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert heads[0] == "Incident INC-9"
    assert [h for h in heads if h.startswith("Run ")] == [
        f"Run {r1}: restart-api",
        f"Run {r2}: restart-api",
    ]
    assert len(cells_of(md, "Time")) == 1 + 5


def test_time_range(world: World) -> None:
    r1 = world.run(None)
    r2 = world.run("INC-1")
    day = r1[:4] + "-" + r1[4:6] + "-" + r1[6:8]
    md = report(world, "--since", day, "--until", day)
    assert r1 in md and r2 in md
    res = run_cli("report", "-L", world.path, "--since", "2000-01-01", "--until", "2000-01-02")
    assert res.code == 0 and "No runs matched." in res.out


def test_a_year_below_1000(world: World) -> None:
    """Times are written with four digits of year, as records hold them: a bound in year 999
    selects the runs after it (it was compared as '999-…', after every record time)."""
    first = datetime(1, 1, 1, tzinfo=UTC)
    assert records.format_time(first) == "0001-01-01T00:00:00.000000Z"
    assert records.parse_time(records.format_time(first)) == first
    assert records.new_run_id(datetime(999, 2, 3, 4, 5, 6, tzinfo=UTC)).startswith(
        "09990203T040506Z-"
    )
    rid = world.run("INC-1")
    md = report(world, "--since", "0999-01-01")
    assert rid in md and "`0999-01-01T00:00:00.000000Z..`" in md
    assert "No runs matched." in report(world, "--since", "0001-01-01", "--until", "0999-12-31")


def test_remotes_that_hold_the_head(world: World, tmp_path: Path) -> None:
    rid = world.run("INC-3")
    for name in ("alpha", "beta"):
        replicate.init_remote(tmp_path / f"{name}.git")
        replicate.add_remote(world.path, name, str(tmp_path / f"{name}.git"))
    summary = replicate.push(world.path, ["alpha"])
    assert summary.outcomes and summary.outcomes[0].remote == "alpha"
    md = report(world, "--run", rid)
    remotes = {r[0]: r for r in cells_of(md, "Remote")[1:]}
    head = world.led.head()
    assert head is not None
    assert remotes["alpha"][2:6] == [str(head.seq), head.commit_id, "yes", "yes"]
    assert remotes["beta"][4:6] == ["no", "no"]


def test_hostile_output_through_the_real_ledger(world: World) -> None:
    benign = world.run("INC-5", command="echo hi", stdout=b"fine\n", stderr=b"fine\n")
    hostile_bytes = (
        b"```\n~~~\n# h\n| a | b |\n|---|---|\n<script>x</script>\n\xff\xfe\x00\x1b"
        + b"A" * 100_000
        + b"\r\n---\n"
    )
    evil = world.run(
        "INC-5",
        command="echo '```' | tr '|' '#' <!-- \n# x",
        stdout=hostile_bytes,
        stderr=hostile_bytes,
    )

    def shape(md: str) -> list[str]:
        return [t.type for t in MD.parse(md)]

    assert shape(report(world, "--run", evil)) == shape(report(world, "--run", benign))


def test_errors(world: World, tmp_path: Path) -> None:
    rid = world.run("INC-1")
    res = run_cli("report", "-L", world.path, "--run", rid, "--incident", "INC-1")
    assert res.code == 2 and "exactly one" in res.err
    res = run_cli("report", "-L", world.path, "--run", "20990101T000000Z-00000000")
    assert res.code == 3 and "no run" in res.err
    res = run_cli("report", "-L", world.path, "--incident", "NOPE")
    assert res.code == 3 and "NOPE" in res.err
    res = run_cli("report", "-L", world.path, "--since", "yesterday")
    assert res.code == 2 and "not a time" in res.err
    res = run_cli("report", "-L", world.path, "--incident", "")
    assert res.code == 3 and "the incident id is empty" in res.err, res.err
    res = run_cli("report", "-L", world.path, "--run", "")
    assert res.code == 3 and "the run id is empty" in res.err, res.err
    res = run_cli("report", "-L", world.path, "--since", "2026-01-01", "--until", "")
    assert res.code == 2 and "'' is not a time" in res.err, res.err
    huge = "9" * 100_000  # quoted in part, its length said: the message stays one paragraph
    for option, code in (("--incident", 3), ("--run", 3), ("--since", 2)):
        res = run_cli("report", "-L", world.path, option, huge + "-")
        assert res.code == code and "(100001 characters)" in res.err, res.err
        assert len(res.err) < 600, res.err
    bad = tmp_path / "bad.md.j2"
    bad.write_text("# {{ report.title }}\n\n{{ report.runs[0].nonexistent }}\n")
    res = run_cli("report", "-L", world.path, "--run", rid, "--template", bad)
    assert res.code == 3
    assert f"{bad}:3:" in res.err and "nonexistent" in res.err
    syntax = tmp_path / "syntax.md.j2"
    syntax.write_text("ok\n{% if %}\n")
    res = run_cli("report", "-L", world.path, "--run", rid, "--template", syntax)
    assert res.code == 3 and f"{syntax}:2:" in res.err


def test_custom_template_via_cli(world: World) -> None:
    rid = world.run("INC-2")
    tmpl = Path(__file__).resolve().parent.parent / "templates" / "compliance.md.j2"
    md = report(world, "--run", rid, "--template", tmpl)
    rows = cells_of(md, "Run")
    assert len(rows) == 1 + 3 and all(len(r) == 10 for r in rows)


def test_templates_ship_with_the_package() -> None:
    from ledger import report as rp

    assert (rp.TEMPLATES_DIR / "incident.md.j2").is_file()
    assert (rp.TEMPLATES_DIR / "compliance.md.j2").is_file()


RUNBOOK = """\
name: deploy-demo
description: Deploy with a failing step and a rollback
parameters:
  service: {type: string, default: api}
  token: {type: string, secret: true, from_env: DEMO_TOKEN}
steps:
  - name: check
    run: echo "checking {{ params.service }}"; echo "token is $token" >&2; echo version 1.4.2
    outputs: {version: {regex: 'version ([0-9.]+)'}}
  - name: flaky
    run: echo 'out | pipe'; echo '```' >&2; exit 3
    retries: 1
    retry_delay: 0s
  - name: never
    run: echo never
on_failure:
  - name: rollback
    run: echo rolled back
"""


def test_report_of_a_real_engine_run(tmp_path: Path) -> None:
    """`ledger run` of a runbook that fails and rolls back, then `ledger report`."""
    key = tmp_path / "key"
    ledger = tmp_path / "ledger.git"
    book = tmp_path / "deploy.yaml"
    book.write_text(RUNBOOK)
    secret = "s3cr3t-Vb7Qx"
    assert run_cli("keys", "generate", key, "-C", "ops@example.com").code == 0
    res = run_cli("init", ledger, "--key", key, "--name", "demo")
    assert res.code == 0, res.err
    env = {"DEMO_TOKEN": secret}
    res = run_cli(
        "run", book, "-L", ledger, "--key", key, "--incident", "INC-77", "--no-push", env=env
    )
    assert res.code != 0, res.output  # the run fails at 'flaky'
    md = run_cli("report", "-L", ledger, "--incident", "INC-77").out
    assert secret not in md
    assert "[REDACTED:token]" in MD.render(md)
    timeline = cells_of(md, "Time")[1:]
    steps = [(r[2], r[3], r[4], r[6]) for r in timeline]
    assert steps == [
        ("check", "1", "ok", "0"),
        ("flaky", "1", "failed", "3"),
        ("flaky", "2", "failed", "3"),
        ("rollback (on failure)", "1", "ok", "0"),
    ]
    assert dict(r for r in cells_of(md, "Output")[1:]) == {"version": "1.4.2"}
    fences = [t for t in MD.parse(md) if t.type == "fence"]
    assert any(t.content == "```\n" for t in fences)  # flaky's stderr tail, verbatim
    summary = {r[0]: r[1] for r in cells_of(md, "Field")[1:]}
    assert summary["Outcome"] == "failed" and summary["Incident"] == "INC-77"
    html = MD.render(md)
    assert "Result: <strong>verified</strong>" in html
    chain = set(git("--git-dir", ledger, "rev-list", "main").stdout.split())
    cited = [r[3] for r in cells_of(md, "Seq")[1:]]
    assert cited and set(cited) <= chain
    # Durations in the timeline agree with the step.finished records.
    assert all(re.fullmatch(r"\d+ ms|\d+\.\d{3} s", r[5]) for r in timeline)


def test_tampered_ledger_reports_failed_verification(world: World) -> None:
    rid = world.run("INC-8")
    head = world.led.head()
    assert head is not None
    top = world.led.record(head.seq)
    # Stock git appends an unsigned commit that claims the next seq.
    message = (
        "forged\n\n"
        f"Ledger-Id: {world.led.ledger_id}\nLedger-Seq: {head.seq + 1}\nLedger-Kind: event\n"
        f"Ledger-Record: {top.path}\nLedger-Record-Sha256: {'0' * 64}\n"
        f"Ledger-Prev-Sha256: {'0' * 64}\n"
    )
    forged = git(
        "--git-dir", world.path, "commit-tree", "main^{tree}", "-p", "main", "-m", message
    ).stdout.strip()
    git("--git-dir", world.path, "update-ref", "refs/heads/main", forged)
    md = report(world, "--run", rid)
    html = MD.render(md)
    assert "Result: <strong>failed</strong>" in html
    rules = {r[0] for r in cells_of(md, "Rule")[1:]}
    assert "unsigned" in rules
    assert "9 of the 9 records this report uses are on the verified chain" in html
    assert "Result: <strong>not verified</strong>" in MD.render(
        report(world, "--run", rid, "--no-verify")
    )


def test_old_run_after_the_verified_head_moved_on(world: World) -> None:
    """Records below the saved verified head are checked against the verified tree."""
    from ledger import report as rp
    from ledger import verify

    old = world.run("INC-11")
    assert "Result: **verified**" in rp.report_for(world.led, run=old)
    saved = verify.load_state(world.path)
    assert saved is not None
    world.run("INC-12")
    md = rp.report_for(world.led, run=old)
    assert all(r.seq <= saved.seq for r in world.led.run_records(old))
    assert "Result: **verified**" in md
    assert "9 of the 9 records this report uses are on the verified chain" in md
    newer = verify.load_state(world.path)
    assert newer is not None and newer.seq > saved.seq
