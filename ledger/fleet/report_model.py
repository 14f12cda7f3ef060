"""The fleet report's data model: what ``templates/fleet.md.j2`` sees (``report`` in its
context).

Each ledger of the report is a :class:`FleetLedger`: the :class:`LedgerEvidence` the fleet's
verification gave for it and the :class:`ledger.report.model.Report` that ``ledger report``'s
builder makes of its runs (so a run, its steps, attempts, approvals, signers and records look
the same as in a one-ledger report). :class:`FleetReport` merges every ledger's runs on one
timeline: by time, ties by ledger id, then seq.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.report import model
from ledger.verify import findings as verify_findings

#: Statuses of a ledger's fleet verification that pass (``new``: seen for the first time).
PASSING = frozenset({"ok", "new"})
#: Fleet findings that are information, not a failure (contract: a witnessed ledger that is
#: not in the copy).
INFO_RULES = frozenset({"witness-unknown"})


@dataclass(frozen=True)
class LedgerEvidence:
    """What the fleet's verification established about one ledger (the report's input).

    ``head``/``seq`` are the head that verification verified (``None``: nothing verified);
    runs are read from it only. ``heads`` are what the copy holds per shared remote (as
    fetched, not verified), ``findings`` every finding of the ledger's verification.
    """

    ledger_id: str
    name: str
    host: str
    genesis: str | None
    head: str | None
    seq: int | None
    status: str  # ok | new | findings | vanished
    findings: tuple[verify_findings.Finding, ...] = ()
    heads: tuple[tuple[str, str], ...] = ()  # (remote name, commit the copy holds)
    records_checked: int = 0

    @property
    def failing(self) -> bool:
        """Whether the ledger failed verification (an info finding alone does not fail it)."""
        return self.status not in PASSING or any(f.rule not in INFO_RULES for f in self.findings)

    @property
    def pinned(self) -> bool:
        return not any(f.rule == "unpinned" for f in self.findings)


@dataclass(frozen=True)
class FleetLedger:
    """One ledger in the report: its evidence and its runs as ``ledger report`` builds them
    (``report`` is None when it shows no run; ``problem`` says why when its verification
    verified no head)."""

    evidence: LedgerEvidence
    report: model.Report | None
    problem: str = ""
    head_time: str | None = None

    @property
    def ledger_id(self) -> str:
        return self.evidence.ledger_id

    @property
    def label(self) -> str:
        """How tables name the ledger: its name (from its genesis), else its id's start."""
        return self.evidence.name or self.evidence.ledger_id[:12]

    @property
    def failing(self) -> bool:
        return self.evidence.failing or bool(self.problem)

    @property
    def runs(self) -> list[model.RunView]:
        return self.report.runs if self.report is not None else []

    @property
    def records(self) -> list[model.RecordRef]:
        return self.report.evidence.records if self.report is not None else []

    @property
    def signers(self) -> list[model.SignerView]:
        return self.report.evidence.signers if self.report is not None else []

    @property
    def verification(self) -> model.Verification:
        ev = self.evidence
        used = len(self.records)
        problems = list(ev.findings)
        if self.problem:
            problems.append(verify_findings.Finding("unreadable", None, ev.head, self.problem))
        return model.Verification(
            "failed" if self.failing else "verified",
            used,
            used if self.report is not None else 0,
            head_seq=ev.seq,
            genesis_pinned=ev.pinned,
            findings=problems,
            method="ledger fleet verify (signatures with the keys trusted at each seq, record, "
            "file and previous-commit digests, sequence and append-only tree); the report's "
            "records were read from the verified head's tree",
        )


@dataclass(frozen=True)
class FleetRun:
    """A run and the ledger that holds it."""

    ledger: FleetLedger
    run: model.RunView


@dataclass(frozen=True)
class TimelineRow:
    """One attempt of one step, on the fleet's merged timeline."""

    ledger: FleetLedger
    run: model.RunView
    attempt: model.Attempt


@dataclass(frozen=True)
class FleetReport:
    """Everything ``templates/fleet.md.j2`` can show: ``report`` in its context."""

    title: str
    scope: str  # "incident" | "range"
    selector: str  # the incident id, or "SINCE..UNTIL"
    incident: str | None
    ledgers: list[FleetLedger]  # the ledgers with runs in the report, by ledger id
    unreported: list[FleetLedger]  # ledgers that failed verification and show no runs here
    checked: int  # how many ledgers the fleet's verification checked
    runs: list[FleetRun] = field(default_factory=list)
    timeline: list[TimelineRow] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    as_of: str | None = None  # the newest verified head's time among the ledgers shown

    @property
    def failing(self) -> list[FleetLedger]:
        """Every ledger of the report, or of the fleet, that failed verification."""
        return [x for x in (*self.ledgers, *self.unreported) if x.failing]

    @property
    def ok(self) -> bool:
        return not self.failing

    @property
    def outcome(self) -> str:
        outcomes = sorted({r.run.outcome for r in self.runs})
        return ", ".join(outcomes) if outcomes else "no runs"
