"""`ledger runs`: the runs of the ledger, newest first."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ledger import errors
from ledger.cli import common, core
from ledger.format import records


@common.app.command("runs")
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
    ledger: common.LedgerOpt = None,
    json_out: common.JsonOpt = False,
    allow_unverified: common.ShowUnverifiedOpt = False,
) -> None:
    """The ledger's runs (on the verified chain), newest first: runbook, incident, who
    started it, how it ended."""
    from ledger.report import runs as run_list  # here: 'ledger --help' starts without pygit2

    if status is not None and status not in run_list.STATUSES:
        raise errors.UsageError(
            f"unknown --status {errors.quoted(status)}; use one of {', '.join(run_list.STATUSES)}."
        )
    led = core.open_verified(ledger, allow_unverified, "its runs are not listed")
    found = run_list.list_runs(
        led,
        incident=records.check_incident(incident) if incident else None,
        status=status,
    )
    if json_out:
        common.console.out(json.dumps([r.to_json() for r in found], ensure_ascii=False, indent=1))
        return
    if not found:
        common.console.print("No runs.")
        return
    for r in found:
        failed = f" at {r.failed_step}" if r.failed_step else ""
        incident_text = f"  {r.incident}" if r.incident else ""
        common.console.print(
            f"{r.run_id}  {r.status}{failed}  {r.runbook}{incident_text}  {r.principal}  "
            f"{r.records} records",
            markup=False,
        )
