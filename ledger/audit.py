"""Temporary re-export for the package split; removed when importers move.

Verifying this machine's copy of a ledger now lives in :mod:`ledger.verify.local`.
"""

from __future__ import annotations

from ledger.verify.local import verify_local

__all__ = ["verify_local"]
