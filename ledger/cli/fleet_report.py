"""`ledger fleet report`: one Markdown report of an incident (or a time range) across every
ledger of an auditor's fleet copy, read at each ledger's verified head."""

from __future__ import annotations

from typing import Annotated

import typer

from ledger import errors
from ledger import report as report_mod
from ledger.cli import common, fleet
from ledger.cli import report as cli_report

JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        callback=common.check_jobs,
        help="Ledgers verified in parallel (default: one per CPU; at most 256).",
        show_default=False,
    ),
]


@fleet.fleet_app.command("report")
def fleet_report_cmd(
    incident: cli_report.IncidentOpt = None,
    since: cli_report.SinceOpt = None,
    until: cli_report.UntilOpt = None,
    fleet_dir: fleet.FleetOpt = None,
    template: cli_report.TemplateOpt = None,
    output: cli_report.OutputOpt = None,
    excerpt_lines: cli_report.ExcerptOpt = report_mod.EXCERPT_LINES,
    pins: common.PinsOpt = None,
    jobs: JobsOpt = None,
) -> None:
    """Render one Markdown report of an incident's runs across the fleet (verified first).

    The fleet copy is verified first (incrementally, without fetching: run 'ledger fleet
    fetch' before); each ledger's runs are read at the head its verification verified. A
    ledger that fails verification is still reported, marked as failing, and the command
    then exits 7 after writing the report.
    """
    from ledger.fleet import report as fleet_report  # here: keeps pygit2 out of 'ledger --help'

    path = fleet.fleet_path(fleet_dir)
    done = fleet_report.make_fleet_report(
        path,
        incident=incident,
        since=since,
        until=until,
        template=template,
        pins=pins,
        jobs=jobs,
        excerpt_lines=excerpt_lines,
    )
    cli_report.emit(done.text, output)
    for warning in done.warnings:
        fleet.warn(warning)
    fleet.warn_unsaved(done.unsaved)
    failing = done.failing
    if failing:
        names = ", ".join(f"{x.label} ({x.ledger_id})" for x in failing)
        raise errors.VerificationFailed(
            f"{len(failing)} ledger(s) of the fleet failed verification: {names}; the report "
            "marks them and lists their findings.",
            hint="Run 'ledger fleet verify' for every finding (docs/FORMAT.md §9).",
        )
