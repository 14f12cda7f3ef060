"""The command-line tool: a thin Typer shell over the library.

This package parses arguments, calls the library, prints, and maps every
:class:`ledger.errors.LedgerError` to its documented exit code in one place (:func:`main`).
Each area registers its commands on :data:`app` from its own module.
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Importing the command modules registers their commands on `app`.
from ledger.cli import core as _core  # noqa: F401  (registration)
from ledger.cli.common import app, console_err
from ledger.errors import LedgerError, RunInterrupted

for _optional in ("runbook", "run", "approve", "remote", "report", "demo"):
    try:
        __import__(f"ledger.cli.{_optional}")
    except ModuleNotFoundError as exc:  # area not built yet
        if exc.name != f"ledger.cli.{_optional}":
            raise


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ledger` command; the one error boundary.

    Typer reports usage errors itself (exit 2); every library error arrives here and
    becomes its message and exit code.
    """
    try:
        app(args=argv, prog_name="ledger")
    except RunInterrupted as exc:
        _fail(exc, exc.code)
    except LedgerError as exc:
        _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        console_err.print("ledger: interrupted.", highlight=False)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as exc:
        console_err.print(
            f"[bold red]ledger: storage error:[/] {exc.strerror or exc} "
            f"({exc.filename or 'no file name'}). Check the path, its permissions and free "
            "disk space, then run the command again.",
            highlight=False,
        )
        sys.exit(6)


def _fail(exc: LedgerError, code: int) -> None:
    message = escape(exc.diagnostics())
    console_err.print(
        f"[bold red]ledger: {exc.label}:[/] {message}", highlight=False, soft_wrap=True
    )
    sys.exit(code)


__all__ = ["app", "main"]
