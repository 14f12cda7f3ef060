"""Temporary re-export for the package split; removed when importers move.

Approvals live in :mod:`ledger.run.approvals` now.
"""

from ledger.run.approvals import (
    APPROVED,
    REJECTED,
    ApprovalRequest,
    Decision,
    Interactive,
    pending_requests,
    record_approval,
)

__all__ = [
    "APPROVED",
    "REJECTED",
    "ApprovalRequest",
    "Decision",
    "Interactive",
    "pending_requests",
    "record_approval",
]
