"""Report model and templates, from synthetic run records (no ledger needed).

The records are plain dicts shaped like docs/FORMAT.md §5.1; a CommonMark parser
(markdown-it-py) judges the rendered Markdown.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.markdown import MD, structure

from ledger import report as rp
from ledger import verify
from ledger.errors import TemplateError

FP_ALICE = "SHA256:" + "A" * 43
FP_BOB = "SHA256:" + "B" * 43
LEDGER_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class Rec:
    """A record as the store hands it out: commit id, seq, parsed record."""

    commit_id: str
    seq: int
    record: dict[str, Any]


@dataclass
class RunMaker:
    """Builds the records of runs, with attachments, like the engine would write them."""

    seq: int = 10
    blobs: dict[str, bytes] = field(default_factory=dict)

    def rec(
        self,
        run: str,
        kind: str,
        time: str,
        data: dict[str, Any],
        files: dict[str, bytes] | None = None,
        *,
        principal: str = "alice@example.com",
        fp: str = FP_ALICE,
        host: str = "ops-1",
    ) -> Rec:
        self.seq += 1
        path = f"runs/{run[0:4]}/{run[4:6]}/{run[6:8]}/{run}/{self.seq:010d}-{kind}.json"
        fmeta = {}
        for name, content in (files or {}).items():
            apath = path[:-5] + "." + name
            self.blobs[apath] = content
            fmeta[name] = {
                "path": apath,
                "sha256": hashlib.sha256(content).hexdigest(),
                "size": len(content),
            }
        commit = hashlib.sha256(f"{run}{self.seq}".encode()).hexdigest()[:40]
        return Rec(
            commit,
            self.seq,
            {
                "schema": 1,
                "ledger": LEDGER_ID,
                "seq": self.seq,
                "kind": kind,
                "time": time,
                "run": run,
                "actor": {"principal": principal, "key": fp},
                "host": host,
                "data": data,
                "files": fmeta,
            },
        )

    def read(self, path: str) -> bytes:
        return self.blobs[path]


def t(sec: int, ms: int = 0) -> str:
    return f"2026-11-22T10:{sec // 60:02d}:{sec % 60:02d}.{ms:03d}000Z"


def example_run(
    mk: RunMaker,
    run: str,
    *,
    text: dict[str, Any] | None = None,
    base: int = 0,
    incident: str = "INC-42",
) -> list[Rec]:
    """A run of restart-api: check (fails, retried, ok), approval, restart fails,
    rollback handler runs. ``text`` overrides every free-text value (for hostile tests)."""
    x = text or {}

    def v(key: str, default: Any) -> Any:
        return x.get(key, x.get("*", default))

    recs = [
        mk.rec(
            run,
            "run.started",
            t(base),
            {
                "runbook": {
                    "name": v("runbook", "restart-api"),
                    "path": v("path", "runbooks/r.yaml"),
                    "sha256": "f" * 64,
                    "file": "runbook",
                },
                "params": {"service": v("param", "api"), "token": "[REDACTED:token]"},
                "trigger": {"incident": incident, "source": v("source", "cli")},
                "operator": v("operator", "alice@example.com"),
                "tool_version": "0.1.0",
                "env": {"DEPLOY_ENV": v("env", "prod")},
                "resumes": None,
            },
        ),
    ]
    for attempt, (status, code) in enumerate([("failed", 1), ("ok", 0)], start=1):
        s = base + attempt * 2
        recs.append(
            mk.rec(
                run,
                "step.started",
                t(s),
                {
                    "step": v("step", "check"),
                    "index": 0,
                    "attempt": attempt,
                    "command": v("command", "./check.sh api --token [REDACTED:token]"),
                    "shell": "bash",
                    "cwd": v("cwd", "/srv/app"),
                    "handler": False,
                },
            )
        )
        recs.append(
            mk.rec(
                run,
                "step.finished",
                t(s + 1, 250),
                {
                    "step": v("step", "check"),
                    "index": 0,
                    "attempt": attempt,
                    "status": status,
                    "exit_code": code,
                    "duration_ms": 1250,
                    "stdout": {"size": 10, "sha256": "0" * 64, "truncated": False},
                    "stderr": {"size": 10, "sha256": "1" * 64, "truncated": False},
                    "outputs": {"version": v("output", "1.2.3")} if status == "ok" else {},
                    "error": None,
                },
                {
                    "stdout": v("stdout", b"checking\nversion 1.2.3\n"),
                    "stderr": v("stderr", b"warn: slow\nerror: not ready\n"),
                },
            )
        )
    recs.append(
        mk.rec(
            run,
            "approval",
            t(base + 8),
            {
                "step": "approve-restart",
                "decision": "approved",
                "principal": v("approver", "bob@example.com"),
                "comment": v("comment", "go ahead"),
            },
            principal="bob@example.com",
            fp=FP_BOB,
        )
    )
    recs.append(
        mk.rec(
            run,
            "step.started",
            t(base + 9),
            {
                "step": "restart",
                "index": 2,
                "attempt": 1,
                "command": v("command", "systemctl restart api"),
                "shell": "bash",
                "cwd": None,
                "handler": False,
            },
        )
    )
    recs.append(
        mk.rec(
            run,
            "step.finished",
            t(base + 12, 5),
            {
                "step": "restart",
                "index": 2,
                "attempt": 1,
                "status": "failed",
                "exit_code": 3,
                "duration_ms": 3005,
                "stdout": {"size": 0, "sha256": "2" * 64, "truncated": False},
                "stderr": {"size": 4000, "sha256": "3" * 64, "truncated": True},
                "outputs": {},
                "error": v("error", "exit code 3"),
            },
            {
                "stdout": b"",
                "stderr": v("stderr2", "".join(f"line {i}\n" for i in range(40)).encode()),
            },
        )
    )
    recs.append(
        mk.rec(
            run,
            "step.started",
            t(base + 13),
            {
                "step": v("handler", "rollback"),
                "index": 0,
                "attempt": 1,
                "command": v("command", "./rollback.sh"),
                "shell": "bash",
                "cwd": None,
                "handler": True,
            },
        )
    )
    recs.append(
        mk.rec(
            run,
            "step.finished",
            t(base + 14),
            {
                "step": v("handler", "rollback"),
                "index": 0,
                "attempt": 1,
                "status": "ok",
                "exit_code": 0,
                "duration_ms": 700,
                "stdout": {"size": 3, "sha256": "4" * 64},
                "stderr": {"size": 0, "sha256": "5" * 64},
                "outputs": {},
                "handler": True,
            },
            {"stdout": v("stdout3", b"rolled back\n"), "stderr": b""},
        )
    )
    recs.append(
        mk.rec(
            run,
            "run.finished",
            t(base + 15),
            {
                "status": "failed",
                "failed_step": v("step", "restart") if "step" in x else "restart",
                "duration_ms": 15000,
            },
        )
    )
    return recs


RUN1 = "20261122T100000Z-0a1b2c3d"
RUN2 = "20261122T100100Z-9f8e7d6c"


def info() -> rp.LedgerInfo:
    return rp.LedgerInfo(LEDGER_ID, "ops", "e" * 40, "d" * 40, 99, t(59))


def model(
    runs: dict[str, list[Rec]], mk: RunMaker, scope: str = "run", selector: str = RUN1, **kw: Any
) -> rp.Report:
    return rp.build_report(
        runs, read_blob=mk.read, ledger=info(), scope=scope, selector=selector, **kw
    )


def headings(markdown: str) -> list[str]:
    toks = MD.parse(markdown)
    return [toks[i + 1].content for i, tok in enumerate(toks) if tok.type == "heading_open"]


def tables(markdown: str) -> list[list[list[str]]]:
    """Each table as a list of rows of cell texts (header first)."""
    out: list[list[list[str]]] = []
    in_cell = False
    for tok in MD.parse(markdown):
        if tok.type == "table_open":
            out.append([])
        elif tok.type == "tr_open":
            out[-1].append([])
        elif tok.type in ("th_open", "td_open"):
            in_cell = True
        elif tok.type in ("th_close", "td_close"):
            in_cell = False
        elif tok.type == "inline" and in_cell:
            out[-1][-1].append(MD.renderInline(tok.content).strip())
    return out


def table_with_header(markdown: str, first: str) -> list[list[str]]:
    found = [tb for tb in tables(markdown) if tb[0][0] == first]
    assert found, f"no table starting with {first!r}"
    return found[0]


# --- the default report -------------------------------------------------------------------


def test_run_report_has_sections_and_facts() -> None:
    mk = RunMaker()
    recs = example_run(mk, RUN1)
    md = rp.render(model({RUN1: recs}, mk))
    hs = headings(md)
    assert hs[0] == f"Run {RUN1}: restart-api"
    for h in (
        "Summary",
        "Timeline",
        "Steps",
        "Approvals",
        "Failure handling",
        "Evidence",
        "Verification",
        "Ledger",
        "Signers",
        "Records",
        "Remotes",
    ):
        assert h in hs, h
    assert "check, attempt 1: failed" in hs
    assert "check, attempt 2: ok" in hs
    assert "restart, attempt 1: failed" in hs
    assert "rollback (on failure), attempt 1: ok" in hs

    timeline = table_with_header(md, "Time")
    assert timeline[0] == ["Time", "Run", "Step", "Attempt", "Status", "Duration", "Exit code"]
    rows = timeline[1:]
    assert [r[2] for r in rows] == ["check", "check", "restart", "rollback (on failure)"]
    assert [r[3] for r in rows] == ["1", "2", "1", "1"]
    assert [r[4] for r in rows] == ["failed", "ok", "failed", "ok"]
    assert [r[5] for r in rows] == ["1.250 s", "1.250 s", "3.005 s", "700 ms"]
    assert [r[6] for r in rows] == ["1", "0", "3", "0"]
    assert rows[0][0] == "2026-11-22 10:00:02.000Z"

    summary = dict(r[:2] for r in table_with_header(md, "Field")[1:])
    assert summary["Incident"] == "INC-42"
    assert summary["Outcome"] == "failed"
    runs = table_with_header(md, "Run")
    assert runs[1][1:] == [
        "restart-api",
        "incident=INC-42, source=cli",
        "alice@example.com",
        "ops-1",
        "2026-11-22 10:00:00.000Z",
        "2026-11-22 10:00:15.000Z",
        "15.000 s",
        "failed",
    ]
    params = dict(r for r in table_with_header(md, "Parameter")[1:])
    assert params == {"service": "api", "token": "[REDACTED:token]"}
    # The command is shown redacted as recorded; failures show stderr's tail, success stdout.
    fences = [tok for tok in MD.parse(md) if tok.type == "fence"]
    assert fences[0].info == "bash"
    assert fences[0].content == "./check.sh api --token [REDACTED:token]\n"
    assert fences[1].content == "warn: slow\nerror: not ready\n"
    assert fences[3].content == "checking\nversion 1.2.3\n"
    restart_out = fences[5].content.splitlines()
    assert restart_out == [f"line {i}" for i in range(20, 40)]
    assert "(20 earlier lines not shown)" in md
    assert "the ledger keeps the head and tail of 4000 bytes" in md
    assert dict(r for r in table_with_header(md, "Output")[1:]) == {"version": "1.2.3"}

    approvals = next(tb for tb in tables(md) if tb[0][:3] == ["Time", "Step", "Decision"])
    assert approvals[1][1:5] == [
        "approve-restart",
        "approved",
        "bob@example.com",
        f"<code>{FP_BOB}</code>",
    ]
    records = table_with_header(md, "Seq")
    assert [int(r[0]) for r in records[1:]] == [r.seq for r in recs]
    assert [r[3] for r in records[1:]] == [f"<code>{r.commit_id}</code>" for r in recs]
    signers = table_with_header(md, "Principal")
    assert [row[:3] for row in signers[1:]] == [
        ["alice@example.com", f"<code>{FP_ALICE}</code>", str(len(recs) - 1)],
        ["bob@example.com", f"<code>{FP_BOB}</code>", "1"],
    ]
    ledger_rows = dict(r for r in table_with_header(md, "Field")[1:] if r)
    assert "Ledger id" not in ledger_rows  # the first Field table is the summary
    ledger_tbl = next(tb for tb in tables(md) if tb[1][0] == "Name")
    assert dict(ledger_tbl[1:])["Genesis commit"] == f"<code>{'e' * 40}</code>"
    assert "Result: <strong>not verified</strong>" in MD.render(md)
    assert f"0 of the {len(recs)} records this report uses" in md
    assert "No replication state is known" in md


def test_report_is_deterministic() -> None:
    mk = RunMaker()
    recs = example_run(mk, RUN1)
    first = rp.render(model({RUN1: recs}, mk))
    shuffled = list(recs)
    random.Random(7).shuffle(shuffled)
    assert rp.render(model({RUN1: shuffled}, mk)) == first
    assert rp.render(model({RUN1: recs}, mk)) == first


def test_incident_report_spans_runs_in_time_order() -> None:
    mk = RunMaker()
    second = example_run(mk, RUN2, base=60)
    first = example_run(mk, RUN1, base=0)
    md = rp.render(model({RUN2: second, RUN1: first}, mk, scope="incident", selector="INC-42"))
    hs = headings(md)
    assert hs[0] == "Incident INC-42"
    run_heads = [h for h in hs if h.startswith("Run ")]
    assert run_heads == [f"Run {RUN1}: restart-api", f"Run {RUN2}: restart-api"]
    timeline = table_with_header(md, "Time")[1:]
    times = [r[0] for r in timeline]
    assert times == sorted(times) and len(timeline) == 8
    assert [r[1] for r in timeline] == [f"<code>{RUN1[-8:]}</code>"] * 4 + [
        f"<code>{RUN2[-8:]}</code>"
    ] * 4
    summary = dict(r[:2] for r in table_with_header(md, "Field")[1:])
    assert summary["Runs"] == "2"
    assert summary["Start"] == "2026-11-22 10:00:00.000Z"
    assert summary["End"] == "2026-11-22 10:01:15.000Z"
    records = table_with_header(md, "Seq")[1:]
    assert [int(r[0]) for r in records] == sorted(r.seq for r in first + second)


def test_unfinished_run_and_evidence_with_findings_and_remotes() -> None:
    mk = RunMaker()
    recs = example_run(mk, RUN1)[:4]  # killed during the second attempt of check
    verification = rp.Verification(
        "failed",
        4,
        3,
        head_seq=99,
        genesis_pinned=True,
        findings=[verify.Finding("bad-signature", 12, "c" * 40, "signature | does not verify")],
    )
    remotes = [
        rp.RemoteView("origin", "/srv/a.git", "d" * 40, 99, True, True, "last seen x"),
        rp.RemoteView("backup", "ssh://h/b.git", "9" * 40, 11, False, False, "", "diverged"),
    ]
    md = rp.render(
        model(
            {RUN1: recs},
            mk,
            verification=verification,
            remotes=remotes,
            trusted=lambda fp: fp == FP_ALICE,
        )
    )
    timeline = table_with_header(md, "Time")[1:]
    assert timeline[-1][4] == "unfinished"
    summary = dict(r[:2] for r in table_with_header(md, "Field")[1:])
    assert summary["Outcome"] == "unfinished"
    assert summary["Verification"] == "failed"
    findings = table_with_header(md, "Rule")
    assert findings[1] == [
        "bad-signature",
        "12",
        "<code>cccccccccccc</code>",
        "signature | does not verify",
    ]
    rem = table_with_header(md, "Remote")
    assert [r[0] for r in rem[1:]] == ["backup", "origin"]
    assert rem[1][4:] == ["no", "no", "—; <strong>problem</strong>: diverged"]
    assert rem[2][4:] == ["yes", "yes", "last seen x"]
    html = MD.render(md)
    assert "Result: <strong>failed</strong>" in html
    assert "3 of the 4 records this report uses are on the verified chain" in html
    assert "to its head at seq 99" in html
    signers = table_with_header(md, "Principal")
    assert signers[1][3] == "yes"


# --- hostile content ----------------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    "```\n# not a heading\n```",
    "~~~\n| a | b |\n|---|---|\n~~~",
    "a | b | c\n|---|---|",
    "# heading\n## another",
    "<script>alert(1)</script>",
    "<!-- never closed",
    "[click](javascript:alert(1))",
    "x" * 100_000,
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "lone\rcarriage\u2028sep\u2029para",
    "title\n---\n",
    "> quoted\n1. listed\n    indented code\n- item",
    "`` ` ``` ```` backticks",
    "\\|\\`trailing backslash\\",
]
HOSTILE_BYTES: list[bytes] = [
    b"```\n~~~\n" + bytes(range(256)) + b"\n# h\n",
    b"\xff\xfe\xfd invalid utf-8 \xc3\x28 ```` \r\n<script>\n",
    b"| a |\n|---|\n" * 100 + b"\x00" * 10,
]


def hostile_text(value: Any, raw: bytes) -> dict[str, Any]:
    return {"*": value, "stdout": raw, "stderr": raw, "stderr2": raw, "stdout3": raw}


BENIGN_TEXT = hostile_text("benign", b"benign output\n")


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=[repr(v)[:30] for v in HOSTILE_VALUES])
@pytest.mark.parametrize("raw", HOSTILE_BYTES, ids=["bytes-all", "bytes-invalid", "bytes-tbl"])
def test_hostile_content_cannot_change_the_structure(value: Any, raw: bytes) -> None:
    mk = RunMaker()
    benign = rp.render(model({RUN1: example_run(mk, RUN1, text=BENIGN_TEXT)}, mk))
    mk2 = RunMaker()
    hostile = rp.render(model({RUN1: example_run(mk2, RUN1, text=hostile_text(value, raw))}, mk2))
    assert structure(hostile) == structure(benign)
    hs = headings(hostile)
    assert len(hs) == len(headings(benign))
    assert "<script>" not in MD.render(hostile)
    assert "<!--" not in MD.render(hostile).replace("&lt;!--", "")
    hostile.encode("utf-8")  # no lone surrogates


def test_hostile_long_output_is_cut_in_tables_and_blocks() -> None:
    mk = RunMaker()
    long = "y" * 100_000
    md = rp.render(model({RUN1: example_run(mk, RUN1, text=hostile_text(long, long.encode()))}, mk))
    assert max(len(line) for line in md.splitlines()) < 3000


# --- templates ----------------------------------------------------------------------------


def test_compliance_example_template(tmp_path: Path) -> None:
    mk = RunMaker()
    rep = model({RUN1: example_run(mk, RUN1)}, mk)
    md = rp.render(rep, rp.TEMPLATES_DIR / "compliance.md.j2")
    tbs = tables(md)
    assert len(tbs) == 1
    assert len(tbs[0]) == 1 + 4  # header + one row per attempt
    assert all(len(row) == len(tbs[0][0]) for row in tbs[0])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def render_error(path: Path) -> str:
    mk = RunMaker()
    rep = model({RUN1: example_run(mk, RUN1)}, mk)
    with pytest.raises(TemplateError) as info:
        rp.render(rep, path)
    return info.value.diagnostics()


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.md.j2", "# ok\n\n{% for r in report.runs %}\nno end\n")
    msg = render_error(path)
    assert f"{path}:4" in msg or f"{path}:5" in msg
    assert "syntax error" in msg


def test_template_undefined_name_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "undef.md.j2", "# {{ report.title }}\n\nline 3\n{{ report.nope }}\n")
    msg = render_error(path)
    assert f"{path}:4:" in msg
    assert "nope" in msg


def test_template_undefined_top_level_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "top.md.j2", "one\ntwo\n{{ runs }}\n")
    msg = render_error(path)
    assert f"{path}:3:" in msg and "runs" in msg


def test_user_templates_run_in_the_sandbox(tmp_path: Path) -> None:
    path = write(
        tmp_path, "escape.md.j2", "x\n{{ report.__class__.__init__.__globals__['sys'].modules }}\n"
    )
    msg = render_error(path)
    assert f"{path}:2" in msg
    path2 = write(tmp_path, "mutate.md.j2", "{{ report.runs.append(1) }}\n")
    msg2 = render_error(path2)
    assert f"{path2}:1" in msg2


def test_missing_template_file(tmp_path: Path) -> None:
    msg = render_error(tmp_path / "nope.md.j2")
    assert "nope.md.j2" in msg and "does not exist" in msg


def test_template_runtime_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path, "div.md.j2", "a\nb\n{{ 1 // 0 }}\n")
    msg = render_error(path)
    assert f"{path}:3:" in msg


def test_unfiltered_values_are_escaped_in_user_templates(tmp_path: Path) -> None:
    mk = RunMaker()
    rep = model({RUN1: example_run(mk, RUN1, text={"runbook": "# evil\n<b>x</b>"})}, mk)
    path = write(tmp_path, "plain.md.j2", "# Report\n\n{{ report.runs[0].runbook }}\n")
    md = rp.render(rep, path)
    assert headings(md) == ["Report"]
    assert "<b>" not in MD.render(md)


def test_filters_documented() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "REPORTS.md").read_text()
    for name, _doc in rp.iter_filters():
        assert f"`{name}" in docs, name
