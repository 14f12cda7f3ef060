"""``ledger fleet report``: one Markdown report of every run of every ledger in an auditor's
fleet copy for an incident (or a time range), merged on one timeline, with each ledger's
evidence and verification outcome.

Two layers, so that the report is tested without the rest of the fleet:

- :func:`build_fleet_report` is the core: given the copy's repository and, per ledger, the
  :class:`~ledger.fleet.report_model.LedgerEvidence` of its verification, it reads each
  ledger's runs from its verified head only (:class:`~ledger.fleet.report_reads.CopyReads`:
  one tree lookup of ``incidents/<id>`` per ledger, or the date shards for a time range; no
  history walk), builds each ledger's part with ``ledger report``'s builder
  (:func:`ledger.report.build.build_report`) and merges them;
- :func:`fleet_report` (and :func:`make_fleet_report`, which the CLI uses) first verifies
  the fleet (:func:`ledger.fleet.audit.verify_fleet`: incremental, no fetch), maps its
  outcomes to evidence, and renders the model with the same sandboxed template machinery and
  Markdown escaping as ``ledger report`` (:mod:`ledger.report.rendering`), by default
  ``templates/fleet.md.j2``.

Nothing is read from a ledger that its verification did not verify; a ledger with findings
is still reported (from its verified head), marked as failing, and the result says so
(:attr:`FleetReportOutput.failing`), so the CLI exits with the findings code after writing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger import errors
from ledger.fleet import report_model, report_reads
from ledger.format import records
from ledger.report import build, fields, from_ledger, model, rendering
from ledger.verify import findings as verify_findings

if TYPE_CHECKING:
    import pygit2

    from ledger.store import types

FLEET_TEMPLATE = "fleet.md.j2"


@dataclass(frozen=True)
class Selection:
    """What the report is about: an incident, or the runs started in [since, until]."""

    scope: str  # "incident" | "range"
    selector: str
    incident: str | None = None
    lo: str | None = None  # record-time strings, inclusive
    hi: str | None = None
    since: datetime | None = None  # the same bounds as times (for the date shards)
    until: datetime | None = None


def select(incident: str | None, since: str | None, until: str | None) -> Selection:
    """Check the arguments before anything is verified or read (exit 2 or 3 on bad ones)."""
    if (incident is None) == (since is None) or (until is not None and since is None):
        raise errors.UsageError(
            "choose exactly one of --incident ID or --since T [--until T].",
            hint="For example: ledger fleet report --incident INC-42.",
        )
    if incident is not None:
        return Selection("incident", records.check_incident(incident), incident=incident)
    lo = from_ledger.parse_bound(since or "", end=False)
    hi = from_ledger.parse_bound(until, end=True) if until is not None else None
    if hi is not None and hi < lo:
        raise errors.UsageError(f"--until {until} is before --since {since}.")
    lo_s, hi_s = from_ledger.iso(lo), from_ledger.iso(hi) if hi else None
    selector = f"{lo_s}..{hi_s}" if hi_s else f"{lo_s}.."
    return Selection("range", selector, lo=lo_s, hi=hi_s, since=lo, until=hi)


# --- one ledger ---------------------------------------------------------------------------


def _runs_of(
    reader: report_reads.CopyReads, at: str, sel: Selection
) -> dict[str, list[types.StoredRecord]]:
    """The selected runs of one ledger at its verified head ``at``, through the tree."""
    if sel.incident is not None:
        ids = reader.runs_for_incident(sel.incident, at=at)
        return {rid: reader.run_records(rid, at=at) for rid in ids}
    out: dict[str, list[types.StoredRecord]] = {}
    for rid in reader.run_ids(sel.since, sel.until, at=at):
        recs = reader.run_records(rid, at=at)
        start = next((r.time for r in recs if r.kind == records.KIND_RUN_STARTED), None)
        start = start or (recs[0].time if recs else None)
        if not start or start < (sel.lo or "") or (sel.hi is not None and start > sel.hi):
            continue
        out[rid] = recs
    return out


def _ledger_part(
    path: Path,
    repo: pygit2.Repository,
    ev: report_model.LedgerEvidence,
    sel: Selection,
    excerpt_lines: int,
) -> report_model.FleetLedger | None:
    """One ledger's part of the report, or None when it has no selected runs and passed."""
    if ev.head is None or ev.seq is None:
        if not ev.failing:
            return None
        why = "" if ev.findings else "its verification verified no head"
        return report_model.FleetLedger(ev, None, problem=why)
    reader = report_reads.CopyReads(path, repo, ev.ledger_id)
    head, head_time = ev.head, None
    try:
        runs = _runs_of(reader, head, sel)
        if not runs:
            return report_model.FleetLedger(ev, None) if ev.failing else None
        head_time = fields.as_str(reader.record(ev.seq, at=head).record.get("time")) or None
        part = build.build_report(
            runs,
            read_blob=lambda p: reader.read_blob(p, commit_id=head),
            ledger=_ledger_info(ev, head_time),
            scope=sel.scope,
            selector=sel.selector,
            verification=None,
            remotes=None,
            trusted=None,
            excerpt_lines=excerpt_lines,
        )
    except errors.LedgerError as exc:
        # The head was verified, so what is read from it is there and well formed: a read
        # that fails is this machine's problem with the copy, not a finding of the ledger.
        raise errors.StorageError(
            f"the runs of ledger {ev.ledger_id} could not be read at the head its "
            f"verification verified ({head}) in the fleet copy at {path}: {exc.message} "
            "This is a problem reading the copy, not a verification finding.",
            hint="Check the copy's disk and permissions, and that nothing changed it during "
            "the report; 'ledger fleet verify' says whether the ledger verifies.",
        ) from None
    finally:
        reader.close()
    return report_model.FleetLedger(ev, part, head_time=head_time)


def _ledger_info(ev: report_model.LedgerEvidence, head_time: str | None) -> model.LedgerInfo:
    return model.LedgerInfo(
        ledger_id=ev.ledger_id,
        name=ev.name,
        genesis=ev.genesis or "",
        head_commit=ev.head,
        head_seq=ev.seq,
        head_time=head_time,
    )


# --- the fleet ----------------------------------------------------------------------------


def build_fleet_report(
    path: Path,
    repo: pygit2.Repository,
    evidence: Iterable[report_model.LedgerEvidence],
    sel: Selection,
    *,
    excerpt_lines: int = build.EXCERPT_LINES,
) -> report_model.FleetReport:
    """The merged model of every selected run of every ledger (pure but for reading the
    copy at each ledger's verified head). Ledgers with runs are listed by id; a ledger that
    failed verification and shows no run is listed apart (runs of it may be missing)."""
    shown: list[report_model.FleetLedger] = []
    unreported: list[report_model.FleetLedger] = []
    checked = 0
    for ev in sorted(evidence, key=lambda e: e.ledger_id):
        checked += 1
        part = _ledger_part(path, repo, ev, sel, excerpt_lines)
        if part is None:
            continue
        (shown if part.runs else unreported).append(part)
    runs = [report_model.FleetRun(x, r) for x in shown for r in x.runs]
    runs.sort(key=lambda fr: (fr.run.started or "", fr.ledger.ledger_id, _first_seq(fr.run)))
    timeline = [
        report_model.TimelineRow(fr.ledger, fr.run, a) for fr in runs for a in fr.run.timeline
    ]
    timeline.sort(key=lambda t: (t.attempt.time or "", t.ledger.ledger_id, _attempt_seq(t)))
    starts = [fr.run.started for fr in runs if fr.run.started]
    ends = [fr.run.finished for fr in runs if fr.run.finished]
    times = [x.head_time for x in shown if x.head_time]
    if sel.scope == "incident":
        title = f"Incident {sel.selector} across the fleet"
    else:
        title = f"Fleet runs {sel.selector}"
    return report_model.FleetReport(
        title=title,
        scope=sel.scope,
        selector=sel.selector,
        incident=sel.incident,
        ledgers=shown,
        unreported=unreported,
        checked=checked,
        runs=runs,
        timeline=timeline,
        started=min(starts) if starts else None,
        finished=max(ends) if ends else None,
        as_of=max(times) if times else None,
    )


def _first_seq(run: model.RunView) -> int:
    return run.records[0].seq if run.records else -1


def _attempt_seq(row: report_model.TimelineRow) -> int:
    return row.attempt.records[0].seq if row.attempt.records else -1


# --- from the fleet's verification --------------------------------------------------------


def _finding(f: Any) -> verify_findings.Finding:
    """A chain finding as it is, or a fleet finding seen as one (rule, seq, commit, message)."""
    if isinstance(f, verify_findings.Finding):
        return f
    seq = getattr(f, "seq", None)
    commit = getattr(f, "commit", None)
    return verify_findings.Finding(
        str(getattr(f, "rule", "fleet")),
        seq if isinstance(seq, int) else None,
        commit if isinstance(commit, str) else None,
        str(getattr(f, "message", f)),
    )


def evidence_from_outcome(outcome: Any, genesis: str | None = None) -> report_model.LedgerEvidence:
    """The evidence of one ``audit.LedgerOutcome`` (FLEET-CONTRACT §3). ``genesis``: the
    verified genesis when the outcome does not carry one (the auditor's pin)."""
    heads = getattr(outcome, "heads", None) or {}
    given = getattr(outcome, "genesis", None)
    return report_model.LedgerEvidence(
        ledger_id=str(outcome.ledger_id),
        name=str(outcome.name or ""),
        host=str(outcome.host or ""),
        genesis=given if isinstance(given, str) and given else genesis,
        head=outcome.head,
        seq=outcome.seq,
        status=str(outcome.status),
        findings=tuple(_finding(f) for f in outcome.findings),
        heads=tuple(sorted((str(k), str(v)) for k, v in dict(heads).items())),
        records_checked=int(getattr(outcome, "records_checked", 0) or 0),
    )


@dataclass(frozen=True)
class FleetReportOutput:
    """The rendered report and the model it was rendered from."""

    text: str
    report: report_model.FleetReport
    unsaved: tuple[str, ...] = ()  # what of the auditor's state the verification could not save
    warnings: tuple[str, ...] = ()  # the verification's (refs of remotes not added here)

    @property
    def failing(self) -> list[report_model.FleetLedger]:
        return self.report.failing


def make_fleet_report(
    path: Path,
    *,
    incident: str | None = None,
    since: str | None = None,
    until: str | None = None,
    template: Path | None = None,
    pins: Path | None = None,
    jobs: int | None = None,
    excerpt_lines: int = build.EXCERPT_LINES,
) -> FleetReportOutput:
    """Verify the fleet copy at ``path`` (incrementally, no fetch), then report."""
    from ledger.fleet import audit, copy  # (the verifier's machinery: only when reporting)
    from ledger.verify import local

    sel = select(incident, since, until)
    repo = copy.open_copy(path)
    result = audit.verify_fleet(path, pins=pins, jobs=jobs)
    evidence = [
        evidence_from_outcome(
            o, None if getattr(o, "genesis", None) else local.own_pin(o.ledger_id)
        )
        for o in result.ledgers
    ]
    done = render_fleet_report(
        path, repo, evidence, sel, template=template, excerpt_lines=excerpt_lines
    )
    return dataclasses.replace(done, unsaved=tuple(result.unsaved), warnings=tuple(result.warnings))


def render_fleet_report(
    path: Path,
    repo: pygit2.Repository,
    evidence: Sequence[report_model.LedgerEvidence],
    sel: Selection,
    *,
    template: Path | None = None,
    excerpt_lines: int = build.EXCERPT_LINES,
) -> FleetReportOutput:
    """Build and render; :class:`InputError` when every ledger verified and none has a run
    of the incident. A ledger that failed verification may hide runs: then the report is
    made even without runs, naming the failing ledgers and their findings."""
    fleet = build_fleet_report(path, repo, evidence, sel, excerpt_lines=excerpt_lines)
    if sel.scope == "incident" and not fleet.runs and not fleet.failing:
        raise errors.InputError(
            f"no ledger in the fleet copy at {path} has runs for incident {sel.selector} at "
            f"its verified head ({fleet.checked} ledger(s) checked, all verified).",
            hint="Fetch the shared remotes first ('ledger fleet fetch'); runs are tied to an "
            "incident with 'ledger run --incident ID'.",
        )
    return FleetReportOutput(rendering.render(fleet, template, default=FLEET_TEMPLATE), fleet)


def fleet_report(
    path: Path,
    *,
    incident: str | None = None,
    since: str | None = None,
    until: str | None = None,
    template: Path | None = None,
    pins: Path | None = None,
    jobs: int | None = None,
    excerpt_lines: int = build.EXCERPT_LINES,
) -> str:
    """The Markdown fleet report (FLEET-CONTRACT §6); see :func:`make_fleet_report`."""
    return make_fleet_report(
        path,
        incident=incident,
        since=since,
        until=until,
        template=template,
        pins=pins,
        jobs=jobs,
        excerpt_lines=excerpt_lines,
    ).text
