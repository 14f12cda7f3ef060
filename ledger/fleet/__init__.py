"""The auditor's side of a fleet: a copy of every ledger of one or more shared remotes
(``copy``), what the auditor saw and verified (``state``), and the fleet's verification
(``audit``).

(Stub face of the FLEETCOPY helper's package; the merger keeps theirs and adds the
``audit`` names below.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.fleet.audit import FleetFinding, FleetResult, LedgerOutcome, verify_fleet
    from ledger.fleet.outcome import FLEET_RULES

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.fleet.audit": ("FleetFinding", "FleetResult", "LedgerOutcome", "verify_fleet"),
        "ledger.fleet.outcome": ("FLEET_RULES",),
    },
)

__all__ = ["FLEET_RULES", "FleetFinding", "FleetResult", "LedgerOutcome", "verify_fleet"]
