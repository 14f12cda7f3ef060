"""`ledger validate` and `ledger schema`: check runbooks and print their JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ledger import errors
from ledger import runbook as ledger_runbook
from ledger.cli import common


@common.app.command("validate")
def validate(
    files: Annotated[
        list[Path],
        typer.Argument(help="Runbook files to check.", show_default=False),
    ],
    json_output: common.JsonOpt = False,
) -> None:
    """Check runbooks against the format: every problem as FILE:LINE:COLUMN: FIELD: MESSAGE.

    Exit status 0 when every file is valid, 3 otherwise.
    """
    results: list[dict[str, object]] = []
    invalid = 0
    for path in files:
        problems: list[ledger_runbook.Problem] = []
        steps = 0
        try:
            runbook = ledger_runbook.load_runbook(path)
            steps = len(runbook.steps)
        except ledger_runbook.RunbookInvalid as exc:
            problems = exc.problems
        except errors.RunbookError as exc:
            problems = [ledger_runbook.Problem(str(path), 0, 0, "", exc.message)]
        if problems:
            invalid += 1
        if json_output:
            results.append(
                {
                    "file": str(path),
                    "ok": not problems,
                    "steps": steps if not problems else None,
                    "problems": [p.as_dict() for p in problems],
                }
            )
            continue
        if not problems:
            typer.echo(f"{path}: ok ({steps} step{'s' if steps != 1 else ''})")
        for problem in problems:
            text = str(problem) if problem.line else f"{path}: {problem.message}"
            typer.echo(text)
    if json_output:
        typer.echo(json.dumps(results, indent=2))
    if invalid:
        raise errors.RunbookError(
            f"{invalid} of {len(files)} runbook{'s' if len(files) != 1 else ''} "
            f"{'is' if invalid == 1 else 'are'} invalid.",
            hint="Fix the problems listed above (docs/RUNBOOKS.md describes the format).",
        )


@common.app.command("schema")
def schema() -> None:
    """Print the runbook format's JSON Schema (draft 2020-12), for editors and other tools."""
    typer.echo(ledger_runbook.schema_text(), nl=False)
