"""`ledger fleet`: the fleet's commands (stub: the FLEETCOPY helper's module replaces it)."""

from __future__ import annotations

import typer

from ledger.cli import common

fleet_app: typer.Typer = typer.Typer(
    help="A fleet of ledgers in shared git servers (docs/FLEET.md).", no_args_is_help=True
)
common.app.add_typer(fleet_app, name="fleet")

# Each fleet command module registers on fleet_app (one import line per module).
from ledger.cli import fleet_witness  # noqa: E402, F401
