"""The runs of a ledger, one line each: what `ledger runs` lists.

Read from the verified head's tree (each run's directory and the incident index), never by
walking the history: a run's ``run.started`` and ``run.finished`` records are found by their
file names. The chain up to ``main`` is verified first (:meth:`Ledger.verified_head`): one
that does not verify is refused unless the ledger object allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ledger import store
from ledger.format import records

#: The status of a run that has a run.started record and no run.finished record.
UNFINISHED = "unfinished"
#: What `--status` may name: the statuses a run.finished record carries (FORMAT.md §5.1;
#: tests/test_runs.py pins them to the engine's), and unfinished.
STATUSES = ("succeeded", "failed", "aborted", "rejected", "abandoned", UNFINISHED)


@dataclass(frozen=True)
class RunSummary:
    """One run: when and what it ran, for which incident, by whom, and how it ended."""

    run_id: str
    runbook: str
    incident: str | None
    started: str
    principal: str
    status: str
    failed_step: str | None
    records: int

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "runbook": self.runbook,
            "incident": self.incident,
            "started": self.started,
            "principal": self.principal,
            "status": self.status,
            "failed_step": self.failed_step,
            "records": self.records,
        }


def list_runs(
    ledger: store.Ledger, *, incident: str | None = None, status: str | None = None
) -> list[RunSummary]:
    """The ledger's runs, newest first, optionally only those of ``incident`` or ``status``."""
    at = ledger.verified_head()
    if at is None:
        return []
    run_ids = ledger.runs_for_incident(incident, at=at) if incident else ledger.run_ids(at=at)
    found: list[tuple[int, RunSummary]] = []
    for run_id in run_ids:
        summary = _summary(ledger, run_id, at)
        if summary is not None and (status is None or summary[1].status == status):
            found.append(summary)
    # Newest first by the seq of each run's run.started record: a run id names its start
    # to the second only, and two runs started within one second are told apart by it.
    found.sort(key=lambda item: item[0], reverse=True)
    return [summary for _seq, summary in found]


def _summary(ledger: store.Ledger, run_id: str, at: str) -> tuple[int, RunSummary] | None:
    """The run's summary, after the seq of its run.started record (None without one)."""
    names = ledger.run_file_names(run_id, at=at)
    started = _first(ledger, names, f"-{records.KIND_RUN_STARTED}.json", at)
    if started is None:
        return None
    finished = _first(ledger, names, f"-{records.KIND_RUN_FINISHED}.json", at)
    start = started.data
    book = start.get("runbook")
    trigger = start.get("trigger")
    actor = started.record.get("actor")
    end = finished.data if finished is not None else {}
    failed = end.get("failed_step")
    return started.seq, RunSummary(
        run_id=run_id,
        runbook=str(book.get("name", "")) if isinstance(book, dict) else "",
        incident=_text(trigger.get("incident")) if isinstance(trigger, dict) else None,
        started=started.time,
        principal=str(actor.get("principal", "")) if isinstance(actor, dict) else "",
        status=str(end.get("status", "")) if finished is not None else UNFINISHED,
        failed_step=failed if isinstance(failed, str) else None,
        records=len(names),
    )


def _first(ledger: store.Ledger, names: list[str], suffix: str, at: str) -> Any:
    for name in names:
        if name.endswith(suffix):
            return ledger.record(int(name.split("-", 1)[0]), at=at)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["STATUSES", "UNFINISHED", "RunSummary", "list_runs"]
