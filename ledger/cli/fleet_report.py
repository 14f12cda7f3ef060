"""`ledger fleet report`: one Markdown report of an incident (or a time range) across every
ledger of an auditor's fleet copy, read at each ledger's verified head."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ledger import errors
from ledger import report as report_mod
from ledger.cli import common, fleet

IncidentOpt = Annotated[
    str | None,
    typer.Option("--incident", help="Report on every run of this incident.", show_default=False),
]
SinceOpt = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Report on the runs started at or after this UTC time "
        "(YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]).",
        show_default=False,
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="With --since: only runs started at or before this UTC time "
        "(a date means the end of that day).",
        show_default=False,
    ),
]
TemplateOpt = Annotated[
    Path | None,
    typer.Option(
        "--template",
        "-t",
        help="A Jinja2 template file to render instead of the default fleet report "
        "(runs in a sandbox; see docs/REPORTS.md).",
        show_default=False,
    ),
]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the report to this file instead of stdout."),
]
ExcerptOpt = Annotated[
    int, typer.Option("--excerpt-lines", min=1, max=10_000, help="Lines of output shown per step.")
]
JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        min=1,
        help="Ledgers verified in parallel (default: one per CPU).",
        show_default=False,
    ),
]


@fleet.fleet_app.command("report")
def fleet_report_cmd(
    incident: IncidentOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    fleet_dir: fleet.FleetOpt = None,
    template: TemplateOpt = None,
    output: OutputOpt = None,
    excerpt_lines: ExcerptOpt = report_mod.EXCERPT_LINES,
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
    from ledger.report import from_ledger

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
    if output is None:
        sys.stdout.buffer.write(done.text.encode("utf-8"))
        sys.stdout.buffer.flush()
    else:
        written = from_ledger.write_report(done.text, output)
        common.console_err.print(f"Report written to {written}", highlight=False, markup=False)
    failing = done.failing
    if failing:
        names = ", ".join(f"{x.label} ({x.ledger_id})" for x in failing)
        raise errors.VerificationFailed(
            f"{len(failing)} ledger(s) of the fleet failed verification: {names}; the report "
            "marks them and lists their findings.",
            hint="Run 'ledger fleet verify' for every finding (docs/FORMAT.md §9).",
        )
