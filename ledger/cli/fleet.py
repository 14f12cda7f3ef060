"""STUB of FLEETCOPY's ``ledger fleet`` sub-app (FLEET-CONTRACT §4), only so that ``ledger
fleet report`` runs before the real one lands; the merger drops it."""

from __future__ import annotations

import typer

from ledger.cli import common

fleet_app = typer.Typer(help="An auditor's copy of a fleet of ledgers (docs/FLEET.md).")
common.app.add_typer(fleet_app, name="fleet")

from ledger.cli import fleet_report  # noqa: E402,F401  (registers 'fleet report')
