"""`ledger runs`: the runs of the ledger, newest first."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ledger.cli.common import JsonOpt, LedgerOpt, ShowUnverifiedOpt, app, console
from ledger.cli.core import open_verified
from ledger.errors import UsageError
from ledger.format import records
from ledger.report import runs as run_list


@app.command("runs")
def runs_cmd(
    incident: Annotated[
        str | None, typer.Option("--incident", help="Only the runs of this incident.")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only runs that ended so (succeeded, failed, aborted, rejected) or unfinished.",
        ),
    ] = None,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
    allow_unverified: ShowUnverifiedOpt = False,
) -> None:
    """The ledger's runs (on the verified chain), newest first: runbook, incident, who
    started it, how it ended."""
    if status is not None and status not in run_list.STATUSES:
        raise UsageError(f"unknown --status {status!r}; use one of {', '.join(run_list.STATUSES)}.")
    led = open_verified(ledger, allow_unverified, "its runs are not listed")
    found = run_list.list_runs(
        led,
        incident=records.check_incident(incident) if incident else None,
        status=status,
    )
    if json_out:
        console.out(json.dumps([r.to_json() for r in found], ensure_ascii=False, indent=1))
        return
    if not found:
        console.print("No runs.")
        return
    for r in found:
        failed = f" at {r.failed_step}" if r.failed_step else ""
        incident_text = f"  {r.incident}" if r.incident else ""
        console.print(
            f"{r.run_id}  {r.status}{failed}  {r.runbook}{incident_text}  {r.principal}  "
            f"{r.records} records",
            markup=False,
        )
