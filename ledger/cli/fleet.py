"""STUB of FLEETCOPY's ``ledger fleet`` sub-app (FLEET-CONTRACT §4), only so that ``ledger
fleet report`` runs before the real one lands; the merger drops it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ledger.cli import common

fleet_app: typer.Typer = typer.Typer(
    help="An auditor's copy of a fleet of ledgers (docs/FLEET.md)."
)
common.app.add_typer(fleet_app, name="fleet")

ENV_FLEET = "LEDGER_FLEET"

FleetOpt = Annotated[
    Path | None,
    typer.Option(
        "--fleet",
        help=f"The fleet copy. Default: ${ENV_FLEET}, else the current directory.",
        show_default=False,
    ),
]


def fleet_path(explicit: Path | None) -> Path:
    """Where the fleet copy is: ``--fleet``, ``$LEDGER_FLEET``, else the current directory."""
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_FLEET)
    return Path(env) if env else Path.cwd()


from ledger.cli import fleet_report  # noqa: E402,F401  (registers 'fleet report')
