"""`ledger fleet`: the auditor's side of a fleet of ledgers.

(Stub of the FLEETCOPY helper's module: only the sub-app. The merger keeps theirs.)
"""

from __future__ import annotations

import typer

from ledger.cli import common

fleet_app: typer.Typer = typer.Typer(
    help="An auditor's copy of every ledger of shared remotes: verify them all.",
    no_args_is_help=True,
)
common.app.add_typer(fleet_app, name="fleet")

# --- commands of other modules (one import line each) ------------------------------------
from ledger.cli import fleet_verify  # noqa: E402,F401  (registers 'fleet verify')
