"""The command-line tool: a thin Typer shell over the library.

This package parses arguments, calls the library, prints, and maps every
:class:`ledger.errors.LedgerError` to its documented exit code in one place (:func:`main`).
Each area registers its commands on :data:`app` from its own module. :func:`run` is the
process's entry point (``ledger``, ``python -m ledger``).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from rich.markup import escape

from ledger import quick_exit
from ledger.cli import help as cli_help
from ledger.cli.common import app, console_err, quiet_broken_pipe
from ledger.errors import LedgerError, RunInterrupted
from ledger.redact import mask_url

# Each area registers its commands on `app` when its module is imported. A command needs
# only its own area's module, so start-up imports just that one (not even the core
# commands: they bring pygit2 and the store, which 'ledger validate' never needs); help,
# completion and anything unknown import them all.
AREAS: dict[str, tuple[str, ...]] = {
    "core": ("init", "keys", "record", "log", "show"),
    "verify": ("verify",),
    "runs": ("runs",),
    "runbook": ("validate", "schema"),
    "run": ("run", "resume", "abandon"),
    "approve": ("approve", "approvals"),
    "remote": ("remote", "push", "fetch", "clone", "status", "hook"),
    "report": ("report",),
    "demo": ("demo",),
    "fleet": ("fleet",),
}


def register(argv: list[str]) -> None:
    """Import the command modules the arguments need (all of them when unsure)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    wanted = [area for area, names in AREAS.items() if command in names]
    if not wanted or any(a in ("-h", "--help") for a in argv[:1]):
        wanted = list(AREAS)
    for area in wanted:
        __import__(f"ledger.cli.{area}")
    cli_help.attach(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `ledger` command; the one error boundary.

    Typer reports usage errors itself (exit 2); every library error arrives here and
    becomes its message and exit code.
    """
    args = sys.argv[1:] if argv is None else argv
    register(args)
    stdout_before = _stdout_identity()
    try:
        app(args=args, prog_name="ledger")
    except SystemExit as exc:
        # Click (and rich, in Typer's help) answer a closed standard output (`ledger log |
        # head`) with exit 1 after muting it; a reader that stopped reading is no failure.
        muted = _stdout_identity() != stdout_before
        if exc.code == 1 and (muted or type(sys.stdout).__name__ == "PacifyFlushWrapper"):
            quiet_broken_pipe()
        raise
    except RunInterrupted as exc:
        _fail(exc, exc.code)
    except LedgerError as exc:
        _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        console_err.print("ledger: interrupted.", highlight=False)
        sys.exit(130)
    except BrokenPipeError:
        quiet_broken_pipe()
    except OSError as exc:
        where = f" ({escape(str(exc.filename))})" if exc.filename else ""
        console_err.print(
            f"[bold red]ledger: storage error:[/] {escape(exc.strerror or str(exc))}{where}. "
            "Check the path, its permissions and free disk space, then run the command again.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(6)
    except (RecursionError, MemoryError) as exc:
        _unexpected(exc, "the input is too large or too deeply nested to handle")
    except Exception as exc:  # noqa: BLE001 (the last resort: a bug, never a traceback)
        _unexpected(exc, "this is a bug in ledger")


def run() -> NoReturn:
    """The process's entry point: :func:`main`, then the end of the process without the
    interpreter's teardown (:mod:`ledger.quick_exit`)."""
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = quick_exit.exit_code(exc.code)
    quick_exit.end(code)


def _stdout_identity() -> tuple[int, int] | None:
    try:
        st = os.fstat(1)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _unexpected(exc: BaseException, what: str) -> None:
    """One paragraph for an error no part of the library expected (exit 1); the traceback
    only when LEDGER_DEBUG is set."""
    if os.environ.get("LEDGER_DEBUG"):
        raise exc
    console_err.print(
        f"[bold red]ledger: unexpected failure:[/] {escape(type(exc).__name__)}: "
        f"{escape(str(exc)[:500])} ({what}). Nothing was acknowledged that is not on disk. "
        "Run the command again with LEDGER_DEBUG=1 for details, and report it.",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(1)


def _fail(exc: LedgerError, code: int) -> None:
    message = escape(mask_url(exc.diagnostics()))
    console_err.print(
        f"[bold red]ledger: {exc.label}:[/] {message}", highlight=False, soft_wrap=True
    )
    sys.exit(code)


__all__ = ["app", "main", "run"]
