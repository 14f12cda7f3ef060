"""What a fleet verification reports: :class:`FleetFinding` (a finding about the fleet, not
about one chain's records), :class:`LedgerOutcome` (one ledger) and :class:`FleetResult`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ledger.verify import findings

#: The rules of fleet findings (docs/FORMAT.md §9, "Fleet findings").
FLEET_RULES = frozenset(
    {
        "vanished",
        "rollback",
        "fork",
        "unpinned",
        "ledger-id",
        "witness-rollback",
        "witness-mismatch",
        "witness-unknown",
        "witness-dismissed",
    }
)
#: Fleet findings that are information, not failures.
INFO_RULES = frozenset({"witness-unknown", "witness-dismissed"})
STATUSES = ("ok", "new", "findings", "vanished")


@dataclass(frozen=True)
class FleetFinding:
    """A finding about ``ledger`` in the fleet: which rule, where (``seq``, ``commit``, the
    ``remote`` when one remote's head is meant) and, for a witness finding, the witness
    record (``by_ledger`` at ``by_seq``)."""

    rule: str
    ledger: str
    seq: int | None
    commit: str | None
    message: str
    remote: str | None = None
    by_ledger: str | None = None
    by_seq: int | None = None

    @property
    def info(self) -> bool:
        """Information, not a failure (``witness-unknown``)."""
        return self.rule in INFO_RULES

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "ledger": self.ledger,
            "seq": self.seq,
            "commit": self.commit,
            "message": self.message,
            "remote": self.remote,
            "by_ledger": self.by_ledger,
            "by_seq": self.by_seq,
            "info": self.info,
        }


AnyFinding = findings.Finding | FleetFinding


def finding_json(f: AnyFinding, ledger_id: str) -> dict[str, Any]:
    """One finding as the JSON output and the auditor's state show it."""
    if isinstance(f, FleetFinding):
        return f.to_json()
    doc = f.to_json()
    doc.update(ledger=ledger_id, remote=None, by_ledger=None, by_seq=None, info=False)
    return doc


def is_failure(f: AnyFinding) -> bool:
    return not (isinstance(f, FleetFinding) and f.info)


@dataclass
class LedgerOutcome:
    """One ledger of the fleet as this verification found it.

    ``heads`` is each remote's head now; ``head``/``seq`` the verified head after this
    verification (the previous one when this one found something); ``records_checked`` how
    many records were read now; ``lag`` how many records each remote holding a shorter head
    of the same chain is behind (reported, not a finding); ``name`` (the genesis record's
    ``data.name``) and ``host`` (the verified head record's ``host``) are read from verified
    records only. ``status`` is ``ok``, ``new`` (first verified now), ``findings`` or
    ``vanished`` (on no remote now)."""

    ledger_id: str
    heads: dict[str, str]
    status: str = "ok"
    name: str | None = None
    host: str | None = None
    head: str | None = None
    seq: int | None = None
    genesis: str | None = None
    pin_source: str | None = None
    records_checked: int = 0
    lag: dict[str, int] = field(default_factory=dict)
    findings: list[AnyFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(is_failure(f) for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "ledger_id": self.ledger_id,
            "status": self.status,
            "name": self.name,
            "host": self.host,
            "head": self.head,
            "seq": self.seq,
            "genesis": self.genesis,
            "pin_source": self.pin_source,
            "heads": dict(sorted(self.heads.items())),
            "lag": dict(sorted(self.lag.items())),
            "records_checked": self.records_checked,
            "findings": [finding_json(f, self.ledger_id) for f in self.findings],
        }


@dataclass
class FleetResult:
    """Every ledger of the copy (and every one the auditor saw before), sorted by id."""

    ledgers: list[LedgerOutcome]
    jobs: int = 1
    unsaved: list[str] = field(default_factory=list)
    """What of the auditor's state could not be saved (one message each): the verdict
    stands; those ledgers are verified again from their previous state next time."""
    warnings: list[str] = field(default_factory=list)
    """What the auditor should know that is no finding (refs of remotes it did not add)."""

    @property
    def ok(self) -> bool:
        return all(led.ok for led in self.ledgers)

    def findings(self) -> list[tuple[str, AnyFinding]]:
        """Every finding, with the ledger it is about."""
        return [(led.ledger_id, f) for led in self.ledgers for f in led.findings]

    def summary(self) -> dict[str, Any]:
        statuses = Counter(led.status for led in self.ledgers)
        failing = [f for _, f in self.findings() if is_failure(f)]
        return {
            "ok": self.ok,
            "ledgers": len(self.ledgers),
            "by_status": {s: statuses.get(s, 0) for s in STATUSES},
            "findings": len(failing),
            "info": len(self.findings()) - len(failing),
            "records_checked": sum(led.records_checked for led in self.ledgers),
            "jobs": self.jobs,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ledgers": [led.to_json() for led in self.ledgers],
            "findings": [finding_json(f, lid) for lid, f in self.findings()],
            "summary": self.summary(),
            "state_saved": not self.unsaved,
            "state_errors": list(self.unsaved),
            "warnings": list(self.warnings),
        }
