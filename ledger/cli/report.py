"""`ledger report`: a Markdown incident report rendered from the ledger."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ledger import report as report_mod
from ledger import store
from ledger.cli import common

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
        help="A Jinja2 template file to render instead of the default "
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


def emit(text: str, output: Path | None) -> None:
    """The report to stdout, or written to ``output`` (said on stderr)."""
    if output is None:
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
        return
    written = report_mod.write_report(text, output)
    common.console_err.print(
        f"Report written to {written}", highlight=False, markup=False, soft_wrap=True
    )


@common.app.command("report")
def report_cmd(
    run: Annotated[
        str | None, typer.Option("--run", help="Report on this run (a run id).", show_default=False)
    ] = None,
    incident: IncidentOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    template: TemplateOpt = None,
    output: OutputOpt = None,
    excerpt_lines: ExcerptOpt = report_mod.EXCERPT_LINES,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Do not verify the ledger (the report says so)."),
    ] = False,
    ledger: common.LedgerOpt = None,
) -> None:
    """Render a Markdown report of a run, an incident, or a time range (reproducible)."""
    led = store.Ledger.open(common.find_ledger_path(ledger))
    text = report_mod.report_for(
        led,
        run=run,
        incident=incident,
        since=since,
        until=until,
        template=template,
        verifier=report_mod.skip_verifier if no_verify else report_mod.default_verifier,
        excerpt_lines=excerpt_lines,
    )
    emit(text, output)
