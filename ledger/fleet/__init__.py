"""The auditor's side of a fleet: many ledgers in shared remotes, copied, verified and
reported together (docs/FLEET.md).

Modules (the fleet report's; the others are listed by their owners):

- ``report``: ``ledger fleet report``: every run of an incident (or a time range) across the
  fleet on one timeline, read at each ledger's verified head (:func:`fleet_report`).
- ``report_model``: what the fleet report's template sees.
- ``report_reads``: reading one ledger's runs in a fleet copy at a given verified head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.fleet.report import fleet_report, make_fleet_report
    from ledger.fleet.report_model import FleetReport, LedgerEvidence

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.fleet.report": ("fleet_report", "make_fleet_report"),
        "ledger.fleet.report_model": ("FleetReport", "LedgerEvidence"),
    },
)

__all__ = ["FleetReport", "LedgerEvidence", "fleet_report", "make_fleet_report"]
