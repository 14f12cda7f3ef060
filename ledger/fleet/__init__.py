"""The auditor's side of a fleet (docs/FLEET.md): a fleet copy of every ledger of
one or more shared remotes, the auditor's memory of it, and its status.

Modules (each imports only the ones listed before it):

- ``state``: the auditor's memory of a copy, in the user's state directory
  (``<state dir>/fleets/<sha256 of the copy's path>/``: ``fleet.json``, ``ledgers/<id>.json``).
- ``added``: which remotes count: those the auditor added, never the copy's config.
- ``copy``: the copy itself (``init_copy``, ``add_remote``, ``fetch``, ``clone``,
  ``open_copy``, ``heads``): a bare repository with ``refs/fleet/<remote>/<id>/main``.
- ``status``: per ledger, name, host, head seq, last record, first sighting of each head,
  labelled verified or unverified.
- ``outcome``, ``claims``, ``schedule``, ``audit``: the fleet's verification
  (:func:`verify_fleet`): every ledger at every remote's head, in parallel, incrementally
  from the auditor's state; fork, rollback, vanished, new, unpinned, witness claims.
- ``report_reads``, ``report_model``, ``report``: ``ledger fleet report``: every run of an
  incident (or a time range) across the fleet on one timeline, read at each ledger's
  verified head (:func:`fleet_report`).
- ``witness``: runner-side witnessing: the other ledgers' heads a shared remote holds,
  fetched into the runner's witness cache and appended as a signed ``witness`` record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import lazy

if TYPE_CHECKING:
    from ledger.fleet.audit import (
        FleetFinding,
        FleetResult,
        LedgerOutcome,
        dismiss_claims,
        verify_fleet,
    )
    from ledger.fleet.copy import (
        Change,
        FetchResult,
        RemoteFetch,
        add_remote,
        clone,
        fetch,
        heads,
        init_copy,
        open_copy,
    )
    from ledger.fleet.outcome import FLEET_RULES
    from ledger.fleet.report import fleet_report, make_fleet_report
    from ledger.fleet.report_model import FleetReport, LedgerEvidence
    from ledger.fleet.state import (
        FleetState,
        LedgerSeen,
        LedgerState,
        Outcome,
        RemoteHead,
        load_fleet,
        load_ledger,
        save_fleet,
        save_ledger,
        state_dir,
    )
    from ledger.fleet.status import FleetStatus, LedgerLine, RemoteView, fleet_status
    from ledger.fleet.witness import Witnessed, WitnessHead, append_heads, append_witness

__getattr__, __dir__ = lazy.attach(
    __name__,
    {
        "ledger.fleet.audit": (
            "FleetFinding",
            "FleetResult",
            "LedgerOutcome",
            "dismiss_claims",
            "verify_fleet",
        ),
        "ledger.fleet.outcome": ("FLEET_RULES",),
        "ledger.fleet.report": ("fleet_report", "make_fleet_report"),
        "ledger.fleet.report_model": ("FleetReport", "LedgerEvidence"),
        "ledger.fleet.copy": (
            "Change",
            "FetchResult",
            "RemoteFetch",
            "add_remote",
            "clone",
            "fetch",
            "heads",
            "init_copy",
            "open_copy",
        ),
        "ledger.fleet.state": (
            "FleetState",
            "LedgerSeen",
            "LedgerState",
            "Outcome",
            "RemoteHead",
            "load_fleet",
            "load_ledger",
            "save_fleet",
            "save_ledger",
            "state_dir",
        ),
        "ledger.fleet.status": ("FleetStatus", "LedgerLine", "RemoteView", "fleet_status"),
        "ledger.fleet.witness": ("WitnessHead", "Witnessed", "append_heads", "append_witness"),
    },
)

__all__ = [
    "FLEET_RULES",
    "Change",
    "FetchResult",
    "FleetFinding",
    "FleetReport",
    "FleetResult",
    "FleetState",
    "FleetStatus",
    "LedgerEvidence",
    "LedgerLine",
    "LedgerOutcome",
    "LedgerSeen",
    "LedgerState",
    "Outcome",
    "RemoteFetch",
    "RemoteHead",
    "RemoteView",
    "WitnessHead",
    "Witnessed",
    "add_remote",
    "append_heads",
    "append_witness",
    "clone",
    "dismiss_claims",
    "fetch",
    "fleet_report",
    "fleet_status",
    "heads",
    "init_copy",
    "load_fleet",
    "load_ledger",
    "make_fleet_report",
    "open_copy",
    "save_fleet",
    "save_ledger",
    "state_dir",
    "verify_fleet",
]
